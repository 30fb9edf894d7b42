"""Check a bench report against its targets: ``python scripts/check_bench.py [build/bench.json]``.

``build/bench_search.json`` (``make bench-search``) is checked against the search targets (by its name).

Exits 1 naming every figure that is missing or misses its target. The figures are ratios measured within
one run (scripts/bench.py), so they hold on any machine that runs both sides of each.
"""

from __future__ import annotations

import json
import operator
import sys
from pathlib import Path

#: figure → (comparison, target) for build/bench.json (issue: fast embedding).
TARGETS = {
    "runtime": (operator.contains, ("onnxruntime", "openvino")),
    "optimized_vs_eager_torchserve": (operator.ge, 4.0),
    "optimized_min_cosine": (operator.ge, 0.999),
    "index_build_vs_torchserve": (operator.ge, 0.9),
    "index_build_vs_model": (operator.ge, 0.75),  # issue 26: the build near the model's own speed
    "query_p50_vs_model_p50": (operator.le, 1.3),
}

#: figure → (comparison, target) for build/bench_search.json (issue: catalog scale).
SEARCH_TARGETS = {
    "n": (operator.ge, 1_000_000),
    "p50_ms": (operator.le, 5.0),
    "recall_at_10": (operator.ge, 0.95),
    "gateway_rss_ratio": (operator.le, 1.5),
    "exact_p50_ms": (operator.ge, 0.0),  # reported beside the ANN figure
    "ann_build_s": (operator.ge, 0.0),
    "milvus_lite_p50_ms": (operator.ge, 0.0),
    # issue 26: the whole build's peak RSS at 1M products ÷ the bytes of its stored search vectors
    "build_n": (operator.ge, 1_000_000),
    "build_peak_rss_ratio": (operator.le, 1.5),
}


def problems(report: dict, targets: dict = TARGETS) -> list[str]:
    found = []
    for key, (compare, target) in targets.items():
        if key not in report:
            found.append(f"{key}: missing")
        elif compare is operator.contains:
            if report[key] not in target:
                found.append(f"{key}: {report[key]!r} is not one of {target}")
        elif not compare(report[key], target):
            sign = {operator.ge: ">=", operator.le: "<="}[compare]
            found.append(f"{key}: {report[key]} misses the target {sign} {target}")
    return found


def main(argv: list[str] | None = None) -> int:
    path = Path((argv or sys.argv[1:] or ["build/bench.json"])[0])
    try:
        report = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        print(f"error: cannot read {path}: {exc}", file=sys.stderr)
        return 1
    found = problems(report, SEARCH_TARGETS if "search" in path.name else TARGETS)
    for line in found:
        print(f"FAIL {line}")
    if not found:
        print(f"{path}: every figure present and on target")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
