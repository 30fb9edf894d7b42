"""Mutation score per module from mutmut's results (``make mutate``).

    python scripts/mutation_report.py --out build/mutation

Reads ``mutmut results --all true`` and writes ``<out>.json`` and ``<out>.md``: killed, survived, timed
out and the score (killed + timed out, over all tested) per module, and the surviving mutants (``mutmut
show NAME`` prints one's diff).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path

#: mutmut statuses that count as caught.
CAUGHT = {"killed", "timeout"}
#: Statuses that were not tested (no test covers the code, or not run yet): reported, not scored.
UNTESTED = {"no tests", "not checked", "skipped"}


def parse(lines: list[str]) -> dict[str, Counter]:
    """``module.x_function__mutmut_N: status`` lines → status counts per module."""
    counts: dict[str, Counter] = defaultdict(Counter)
    for line in lines:
        name, sep, status = line.strip().rpartition(": ")
        if not sep or "__mutmut_" not in name:
            continue
        module = name.split(".x", 1)[0] if ".x" in name else name.rsplit(".", 1)[0]
        counts[module][status.strip()] += 1
    return counts


def score(counts: Counter) -> float | None:
    """Caught ÷ tested; None when nothing was tested."""
    tested = sum(n for status, n in counts.items() if status not in UNTESTED)
    return sum(counts[s] for s in CAUGHT) / tested if tested else None


def markdown(counts: dict[str, Counter], survivors: list[str]) -> str:
    lines = ["| module | killed | timed out | survived | not tested | score |", "| --- | --- | --- | --- | --- | --- |"]
    for module in sorted(counts):
        c = counts[module]
        s = score(c)
        lines.append(f"| {module} | {c['killed']} | {c['timeout']} | {c['survived']} | "
                     f"{sum(c[x] for x in UNTESTED)} | {'—' if s is None else f'{s:.1%}'} |")
    total = sum(counts.values(), Counter())
    s = score(total)
    lines += [f"| **all** | {total['killed']} | {total['timeout']} | {total['survived']} | "
              f"{sum(total[x] for x in UNTESTED)} | {'—' if s is None else f'**{s:.1%}**'} |", "",
              f"Surviving mutants ({len(survivors)}; `mutmut show NAME` prints one):", ""]
    lines += [f"- `{name}`" for name in survivors]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/mutation"))
    args = parser.parse_args(argv)
    mutmut = Path(sys.executable).with_name("mutmut")
    found = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=False)
    lines = found.stdout.splitlines()
    counts = parse(lines)
    if not counts:
        print("error: no mutmut results: run `mutmut run` first (make mutate)", file=sys.stderr)
        return 2
    survivors = sorted(line.strip().rpartition(": ")[0] for line in lines if line.strip().endswith(": survived"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {m: {**c, "score": score(c)} for m, c in counts.items()}
    args.out.with_suffix(".json").write_text(json.dumps({"modules": report, "survivors": survivors}, indent=2))
    text = markdown(counts, survivors)
    args.out.with_suffix(".md").write_text(text)
    print(text.split("\n\nSurviving")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
