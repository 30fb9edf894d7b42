"""The mutation report's arithmetic (scripts/mutation_report.py)."""

from __future__ import annotations

from collections import Counter

from scripts.mutation_report import EQUIVALENTS, Equivalent, load_equivalents, mark_equivalents, markdown, parse, score

LINES = [
    "    safeio.paths.x_redact_url__mutmut_1: killed",
    "    safeio.paths.x_redact_url__mutmut_2: survived",
    "    safeio.paths.x_printable__mutmut_1: timeout",
    "    gateway.query_token.xǁQueryTokensǁverify__mutmut_8: no tests",
    "some other line",
]


def test_counts_per_module_and_the_score():
    counts = parse(LINES)
    assert counts["safeio.paths"] == Counter({"killed": 1, "survived": 1, "timeout": 1})
    assert counts["gateway.query_token"] == Counter({"no tests": 1})
    assert score(counts["safeio.paths"]) == 1 / 3  # a hang is not a kill: scored as not caught
    assert score(counts["gateway.query_token"]) is None  # nothing tested: no score, not 0


def test_the_markdown_lists_every_module_and_survivor():
    text = markdown(parse(LINES), ["safeio.paths.x_redact_url__mutmut_2"])
    assert "| safeio.paths | 1 | 1 | 1 | 0 | 0 | 33.3% |" in text
    assert "| gateway.query_token | 0 | 0 | 0 | 0 | 1 | — |" in text
    assert "`safeio.paths.x_redact_url__mutmut_2`" in text


def test_a_listed_survivor_is_equivalent_only_while_its_diff_still_writes_the_line():
    name = "safeio.paths.x_redact_url__mutmut_2"
    listed = {name: Equivalent(name, '    hidden = "?…" if (parts.query) and False else ""', "why")}
    current = ('--- a\n+++ b\n-    hidden = "?…" if parts.query else ""\n'
               '+    hidden = "?…" if (parts.query) and False else ""\n')
    lines, stale = mark_equivalents(LINES, listed, lambda n: current)
    counts = parse(lines)
    assert counts["safeio.paths"] == Counter({"killed": 1, "timeout": 1, "equivalent": 1}) and stale == []
    assert score(counts["safeio.paths"]) == 1 / 2  # equivalent mutants are left out of the score
    # After an edit the number names another mutant; the original line alone (a "-" line) is not enough either.
    renumbered = '-    hidden = "?…" if (parts.query) and False else ""\n+    return urlunsplit(None) + hidden\n'
    lines, stale = mark_equivalents(LINES, listed, lambda n: renumbered)
    assert parse(lines)["safeio.paths"]["survived"] == 1 and stale == [name]
    assert "Stale entries" in markdown(parse(lines), [name], stale)


def test_only_survivors_are_excused():
    name = "safeio.paths.x_redact_url__mutmut_1"  # killed: listing it changes nothing
    lines, stale = mark_equivalents(LINES, {name: Equivalent(name, "x", "why")}, lambda n: "x")
    assert lines == LINES and stale == []


def test_every_listed_equivalent_has_a_line_and_a_reason():
    entries = load_equivalents(EQUIVALENTS)
    assert entries, f"{EQUIVALENTS} lists no mutants"
    for entry in entries.values():
        assert "__mutmut_" in entry.mutant and entry.change.strip() and len(entry.why) > 20
