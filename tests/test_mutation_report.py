"""The mutation report's arithmetic (scripts/mutation_report.py)."""

from __future__ import annotations

from collections import Counter

from scripts.mutation_report import markdown, parse, score

LINES = [
    "    catalog.paths.x_redact_url__mutmut_1: killed",
    "    catalog.paths.x_redact_url__mutmut_2: survived",
    "    catalog.paths.x_printable__mutmut_1: timeout",
    "    gateway.query_token.xǁQueryTokensǁverify__mutmut_8: no tests",
    "some other line",
]


def test_counts_per_module_and_the_score():
    counts = parse(LINES)
    assert counts["catalog.paths"] == Counter({"killed": 1, "survived": 1, "timeout": 1})
    assert counts["gateway.query_token"] == Counter({"no tests": 1})
    assert score(counts["catalog.paths"]) == 2 / 3  # a timeout counts as caught
    assert score(counts["gateway.query_token"]) is None  # nothing tested: no score, not 0


def test_the_markdown_lists_every_module_and_survivor():
    text = markdown(parse(LINES), ["catalog.paths.x_redact_url__mutmut_2"])
    assert "| catalog.paths | 1 | 1 | 1 | 0 | 66.7% |" in text
    assert "| gateway.query_token | 0 | 0 | 0 | 1 | — |" in text and "`catalog.paths.x_redact_url__mutmut_2`" in text
