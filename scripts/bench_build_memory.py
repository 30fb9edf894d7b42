"""The build's peak memory at catalog scale: ``python scripts/bench_build_memory.py`` (part of ``make bench-search``).

Runs the real ``build_index`` (read the CSV, fetch each image file, shards in the store, merge, whitening,
calibration, no-match rule, appearance space, HNSW graph, write, publish) on a synthetic catalog of ``--n``
products (1,000,000 by default) in a child process, with a synthetic embedder so the figure is the pipeline's,
not a model's: each image file holds its row number, and the embedder turns it into a clustered 1,280-d unit
vector (the real backbone's width) and a colour histogram. The child reports its peak resident set (VmHWM:
every page it held at once, file pages included) and the figure is

    build_peak_rss_ratio = peak RSS / bytes of the stored search vectors (count × search dims × 4)

The catalog and its image files are made once under ``--work`` and reused; the index, the caches and the
shards are deleted after each run (they are tens of GB at 1M).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from devtools.process import REPO  # noqa: E402
from modelio.protocol import EmbedResult  # noqa: E402
from ranking.appearance import HIST_SIZE  # noqa: E402

#: The synthetic vectors' width (efficientnet_lite0's, the widest backbone the project ships).
DIM = 1280
#: Kinds of product (clusters); 20 clusters make one category, colours are independent of both.
CLUSTERS, PER_CATEGORY, COLOURS = 2000, 20, 12


class SyntheticEmbedder:
    """A clustered unit vector and a histogram for an image file that holds its row number (``b"row 17"``)."""

    backbone_id = f"synthetic-{DIM}"

    def __init__(self, seed: int = 0) -> None:
        rng = np.random.default_rng(seed)
        self.centres = rng.standard_normal((CLUSTERS, DIM), dtype=np.float32)

    def embed_bytes(self, blobs: list[bytes], colour: bool = False) -> list[EmbedResult]:
        out = []
        for blob in blobs:
            row = int(blob.split()[-1])
            noise = np.random.default_rng(row).standard_normal(DIM, dtype=np.float32)
            vector = self.centres[row % CLUSTERS] + 1.5 * noise
            hist = np.full(HIST_SIZE, 1.0 / HIST_SIZE, np.float32) if colour else None
            out.append(EmbedResult(vector=vector / np.linalg.norm(vector), colour=hist))
        return out


def make_catalog(folder: Path, n: int) -> Path:
    """``folder/products.csv`` with ``n`` rows and one small image file per row (made once, then reused)."""
    catalog, done = folder / "products.csv", folder / f"catalog-{n}.done"
    if done.exists():
        return catalog
    folder.mkdir(parents=True, exist_ok=True)
    with open(catalog, "w", newline="", encoding="utf-8") as fh:
        writer = csv.writer(fh)
        writer.writerow(["id", "name", "category", "price", "image_url", "base_colour"])
        for row in range(n):
            image = f"images/{row // 1000:04d}/{row}.img"
            if row % 1000 == 0:
                (folder / image).parent.mkdir(parents=True, exist_ok=True)
            (folder / image).write_bytes(f"row {row}".encode())
            writer.writerow([f"p{row:08d}", f"Synthetic product {row}", f"type-{(row % CLUSTERS) // PER_CATEGORY}",
                             f"{(row % 5000) / 10:.2f}", image, f"colour-{(row * 7919) % COLOURS}"])
    done.touch()
    return catalog


def _status(key: str) -> int:
    """A ``/proc/self/status`` figure (kB) in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _sample_rss(trace: list[tuple[float, int, int]], stop: threading.Event, start: float) -> None:
    """(seconds, RSS MiB, peak so far MiB) every 2 s: where in the build the peak came."""
    while not stop.wait(2.0):
        trace.append((round(time.monotonic() - start, 1), _status("VmRSS") // 2**20, _status("VmHWM") // 2**20))


def child(folder: Path) -> dict:
    """What the child process runs: one build of ``folder``'s catalog into ``folder/run``; its figures."""
    from catalog.build import build_index

    run = folder / "run"
    shutil.rmtree(run, ignore_errors=True)
    start, trace, stop = time.monotonic(), [], threading.Event()
    threading.Thread(target=_sample_rss, args=(trace, stop, start), daemon=True).start()
    report = build_index(folder / "products.csv", run / "index", SyntheticEmbedder(), run / "image-cache",
                         vector_cache=run / "vectors", progress=False)
    seconds = time.monotonic() - start
    stop.set()
    manifest = json.loads(next((run / "index" / "versions").glob("*/manifest.json")).read_text())
    dims = manifest["whitening"]["dims"] if manifest["whitening"] else manifest["dim"]
    search_bytes = manifest["count"] * dims * 4
    peak = _status("VmHWM")
    return {"build_n": report.indexed, "build_s": round(seconds, 1), "build_peak_rss_mb": round(peak / 2**20),
            "build_search_vectors_mb": round(search_bytes / 2**20),
            "build_peak_rss_ratio": round(peak / search_bytes, 3),
            "build_has_ann": manifest["ann"] is not None, "build_rss_trace_mb": trace[:: max(1, len(trace) // 60)]}


def measure(work: Path, n: int) -> dict:
    """Make the catalog (once), run the build in a fresh process, clean up; the figures."""
    folder = work / "build-memory"
    make_catalog(folder, n)
    try:
        done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(folder)],
                              cwd=REPO, capture_output=True, text=True, check=False)
    finally:
        shutil.rmtree(folder / "run", ignore_errors=True)
    if done.returncode != 0:
        raise RuntimeError(f"the build died (exit {done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--work", type=Path, default=REPO / "build" / "bench-search", help="catalog reused here")
    parser.add_argument("--report", type=Path, default=REPO / "build" / "bench_search.json",
                        help="the figures are added to this JSON report (made when missing)")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        logging.basicConfig(level=logging.WARNING)
        print(json.dumps(child(args.child)))
        return 0
    figures = measure(args.work, args.n)
    report = json.loads(args.report.read_text()) if args.report.exists() else {}
    report.update(figures)
    args.report.parent.mkdir(parents=True, exist_ok=True)
    args.report.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in figures.items() if k != "build_rss_trace_mb"}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
