"""Bounded load test against a running gateway on loopback: N clients for a fixed time, mixed requests.

    python scripts/loadtest.py --url http://127.0.0.1:5000 --clients 8 --seconds 20 \
        --images data/demo/images --image-url http://127.0.0.1:8000/a.jpg

Each client loops over uploads (catalog photos), image-URL queries and more-like-this until the time
is up (and never past ``--max-requests``). Prints per-kind counts, status codes and p50/p99 latency;
exits 1 if any answer was a 5xx other than 503 during a declared outage (none here) — any 5xx fails.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import threading
import time
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np
import requests


def run_load(base_url: str, clients: int, seconds: float, uploads: list[bytes], image_urls: list[str],
             product_ids: list[str], max_requests: int = 100_000, seed: int = 0) -> dict:
    """Run the load and return {"kinds": {kind: {count, statuses, p50_ms, p99_ms}}, "requests", "errors_5xx"}."""
    deadline = time.monotonic() + seconds
    latencies: dict[str, list[float]] = defaultdict(list)
    statuses: dict[str, Counter] = defaultdict(Counter)
    budget = itertools.count()
    lock = threading.Lock()

    def client(n: int) -> None:
        rng = random.Random(seed + n)
        session = requests.Session()
        kinds = ["upload"] * 3 + ["similar"] * 2 + (["url"] if image_urls else [])
        while time.monotonic() < deadline and next(budget) < max_requests:
            kind = rng.choice(kinds)
            started = time.perf_counter()
            try:
                if kind == "upload":
                    resp = session.post(f"{base_url}/api/search", files={"file": ("q.jpg", rng.choice(uploads))},
                                        data={"top_k": "10"}, timeout=60)
                elif kind == "url":
                    resp = session.post(f"{base_url}/api/search", json={"image_url": rng.choice(image_urls)},
                                        timeout=60)
                else:
                    resp = session.get(f"{base_url}/api/products/{rng.choice(product_ids)}/similar", timeout=60)
                status = resp.status_code
            except requests.RequestException as exc:
                status = f"error:{type(exc).__name__}"
            elapsed = (time.perf_counter() - started) * 1000
            with lock:
                latencies[kind].append(elapsed)
                statuses[kind][status] += 1

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    kinds = {}
    for kind, values in latencies.items():
        arr = np.asarray(values)
        kinds[kind] = {"count": len(values), "statuses": {str(k): v for k, v in statuses[kind].items()},
                       "p50_ms": round(float(np.percentile(arr, 50)), 1),
                       "p99_ms": round(float(np.percentile(arr, 99)), 1)}
    bad = sum(v for c in statuses.values() for k, v in c.items() if not isinstance(k, int) or k >= 500)
    return {"requests": sum(len(v) for v in latencies.values()), "errors_5xx": bad, "kinds": kinds,
            "clients": clients, "seconds": seconds}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default="http://127.0.0.1:5000")
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--max-requests", type=int, default=100_000)
    parser.add_argument("--images", type=Path, default=Path("data/demo/images"))
    parser.add_argument("--image-url", action="append", default=[], help="query URLs (loopback test server)")
    args = parser.parse_args(argv)
    if not args.url.startswith(("http://127.", "http://localhost", "http://[::1]")):
        print("error: load tests target loopback only", file=sys.stderr)
        return 2
    files = sorted(args.images.glob("*.jpg"))
    report = run_load(args.url, args.clients, args.seconds, [f.read_bytes() for f in files[:50]],
                      args.image_url, [f.stem for f in files], args.max_requests)
    print(json.dumps(report, indent=2))
    return 1 if report["errors_5xx"] else 0


if __name__ == "__main__":
    sys.exit(main())
