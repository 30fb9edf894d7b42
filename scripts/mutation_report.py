"""Mutation score per module from mutmut's results (``make mutate``).

    python scripts/mutation_report.py --out build/mutation

Reads ``mutmut results --all true`` and writes ``<out>.json`` and ``<out>.md``: killed, survived, timed
out, equivalent and the score (killed, over all tested that are not equivalent) per module,
and the surviving mutants (``mutmut show NAME`` prints one's diff).

Equivalent mutants (the code changes but no behaviour can: an unreachable branch, a header name that
requests reads case-blind, ...) are listed in ``scripts/mutation_equivalents.toml`` with the changed line
and the reason. A listed mutant counts as equivalent only while mutmut's diff still shows that line, so a
renumbered mutant after an edit is scored again instead of being excused by a stale entry.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tomllib
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

#: mutmut statuses that count as caught. A timeout is not one (issue 28): a mutant run that hangs may be a fork
#: that inherited a library's dead threads (FAISS's OpenMP pool, pymilvus's gRPC) rather than a test that noticed
#: the change, so it is reported in its own column and scored as not caught.
CAUGHT = {"killed"}
#: Statuses that were not tested (no test covers the code, or not run yet): reported, not scored.
UNTESTED = {"no tests", "not checked", "skipped"}
#: A survivor listed (and still matching) in the equivalents file: reported, not scored.
EQUIVALENT = "equivalent"
EQUIVALENTS = Path(__file__).with_name("mutation_equivalents.toml")


@dataclass(frozen=True)
class Equivalent:
    """A mutant that cannot change behaviour: its name, the line it writes, and why."""

    mutant: str
    change: str
    why: str


def load_equivalents(path: Path = EQUIVALENTS) -> dict[str, Equivalent]:
    """The equivalents file as name → entry (an absent file lists none)."""
    if not path.exists():
        return {}
    entries = tomllib.loads(path.read_text())["equivalent"]
    return {e["mutant"]: Equivalent(e["mutant"], e["change"], e["why"]) for e in entries}


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


def mark_equivalents(lines: list[str], equivalents: dict[str, Equivalent],
                     diff_of: Callable[[str], str]) -> tuple[list[str], list[str]]:
    """``lines`` with each listed survivor whose diff still writes its ``change`` marked equivalent, and the
    listed names that no longer match (stale: fix or drop them)."""
    out, stale = [], []
    for line in lines:
        name, sep, status = line.strip().rpartition(": ")
        entry = equivalents.get(name) if sep and status.strip() == "survived" else None
        if entry is not None and _writes(diff_of(name), entry.change):
            out.append(f"{name}: {EQUIVALENT}")
            continue
        if entry is not None:
            stale.append(name)
        out.append(line)
    return out, stale


def _writes(diff: str, change: str) -> bool:
    """Whether a mutant's diff adds exactly the line ``change`` (whitespace at the ends aside)."""
    added = (line[1:].strip() for line in diff.splitlines() if line.startswith("+") and not line.startswith("+++"))
    return change.strip() in set(added)


def score(counts: Counter) -> float | None:
    """Caught ÷ tested (equivalent mutants left out); None when nothing was tested."""
    tested = sum(n for status, n in counts.items() if status not in UNTESTED | {EQUIVALENT})
    return sum(counts[s] for s in CAUGHT) / tested if tested else None


def _row(name: str, c: Counter, bold: bool = False) -> str:
    s = score(c)
    shown = "—" if s is None else (f"**{s:.1%}**" if bold else f"{s:.1%}")
    return (f"| {name} | {c['killed']} | {c['timeout']} | {c['survived']} | {c[EQUIVALENT]} | "
            f"{sum(c[x] for x in UNTESTED)} | {shown} |")


def markdown(counts: dict[str, Counter], survivors: list[str], stale: list[str] = ()) -> str:
    lines = ["| module | killed | timed out | survived | equivalent | not tested | score |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    lines += [_row(module, counts[module]) for module in sorted(counts)]
    lines += [_row("**all**", sum(counts.values(), Counter()), bold=True), ""]
    if stale:
        lines += [f"Stale entries in {EQUIVALENTS.name} (their mutant no longer writes the listed line; scored as "
                  f"survivors): {', '.join(f'`{n}`' for n in stale)}", ""]
    lines += [f"Surviving mutants ({len(survivors)}; `mutmut show NAME` prints one):", ""]
    lines += [f"- `{name}`" for name in survivors]
    return "\n".join(lines) + "\n"


def _mutmut_show(mutmut: Path) -> Callable[[str], str]:
    def diff_of(name: str) -> str:
        return subprocess.run([str(mutmut), "show", name], capture_output=True, text=True, check=False).stdout

    return diff_of


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("build/mutation"))
    args = parser.parse_args(argv)
    mutmut = Path(sys.executable).with_name("mutmut")
    found = subprocess.run([str(mutmut), "results", "--all", "true"], capture_output=True, text=True, check=False)
    lines, stale = mark_equivalents(found.stdout.splitlines(), load_equivalents(), _mutmut_show(mutmut))
    counts = parse(lines)
    if not counts:
        print("error: no mutmut results: run `mutmut run` first (make mutate)", file=sys.stderr)
        return 2
    survivors = sorted(line.strip().rpartition(": ")[0] for line in lines if line.strip().endswith(": survived"))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    report = {m: {**c, "score": score(c)} for m, c in counts.items()}
    args.out.with_suffix(".json").write_text(json.dumps({"modules": report, "survivors": survivors,
                                                         "stale_equivalents": stale}, indent=2))
    text = markdown(counts, survivors, stale)
    args.out.with_suffix(".md").write_text(text)
    print(text.split("\n\nSurviving")[0])
    return 0


if __name__ == "__main__":
    sys.exit(main())
