"""Read ``products.csv`` into clean rows, reporting every unusable row instead of aborting."""

from __future__ import annotations

import csv
import math
import re
import warnings
from array import array
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from catalog.products import PRODUCT_URL
from safeio.paths import MAX_PRODUCT_URL, product_link

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "name", "category", "price", "image_url")
#: Cells a spreadsheet would run as a formula (CSV injection); "-20% off" and "+91..." are not flagged.
FORMULA = re.compile(r"^(=|@|[+-][^\d\s.,%]|\t|\r)")
#: Longest accepted cell; longer ones are almost always a broken quote swallowing the file.
MAX_FIELD = 10_000


class CatalogError(ValueError):
    """The catalog as a whole cannot be used (missing columns, unreadable file)."""


@dataclass(frozen=True)
class RowError:
    """One catalog row that was left out of the index, and why."""

    line: int
    id: str
    image_url: str
    stage: str
    error: str

    def as_dict(self) -> dict:
        return asdict(self)


def parse_price(text: str) -> float | None:
    """Empty → None (price unknown); otherwise a finite, non-negative number or ``ValueError``."""
    text = text.strip()
    if not text:
        return None
    try:
        value = float(text.replace(",", ""))
    except ValueError:
        raise ValueError(f"price must be a number, got {text!r}") from None
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"price must be a non-negative number, got {text!r}")
    return value


def _record_lines(path: Path, n_columns: int) -> tuple[np.ndarray, list[RowError]]:
    """Physical start line of each record pandas keeps, and errors for the rows it skips (too many fields)."""
    starts = array("q")
    malformed: list[RowError] = []
    with open(path, encoding="utf-8-sig", errors="replace", newline="") as fh:
        reader = csv.reader(fh)
        next(reader, None)
        previous = reader.line_num
        for record in reader:
            start, previous = previous + 1, reader.line_num
            if not record:
                continue
            if len(record) > n_columns:
                malformed.append(RowError(start, record[0].strip()[:100], "", "catalog",
                                          f"malformed row: {len(record)} fields, the header has {n_columns}"))
                continue
            starts.append(start)
    return np.frombuffer(starts, dtype=np.int64) if starts else np.zeros(0, np.int64), malformed


def _unlinked(row: dict) -> list[RowError]:
    """Leaves out a ``product_url`` a card may not follow (the product stays, unlinked): the warning, if any."""
    if not row.get(PRODUCT_URL) or product_link(row[PRODUCT_URL]) is not None:
        return []
    row[PRODUCT_URL] = ""
    return [RowError(row["line"], row["id"], row["image_url"], "warning", f"{PRODUCT_URL} is not an http(s) link "
                     f"a card may follow (absolute, a host, no credentials or spaces, at most {MAX_PRODUCT_URL} "
                     "characters): left out")]


#: Records parsed per pandas chunk while streaming a catalog.
CHUNK_ROWS = 50_000


def read_catalog(path: Path) -> tuple[list[dict], list[RowError]]:
    """Rows as dicts (all columns kept as text, ``price`` parsed, ``line`` added) plus row errors.

    ``line`` is the line of the file where the record starts (the header is line 1)."""
    errors: list[RowError] = []
    rows = list(iter_catalog(path, errors))
    return rows, errors


def _unreadable(path: Path, exc: Exception) -> CatalogError:
    """The refusal of a file pandas cannot parse, wherever in the file it finds out."""
    return CatalogError(f"{path}: not a readable CSV ({str(exc).strip()})")


def _frames(path: Path, chunk_rows: int) -> Iterator[pd.DataFrame]:
    """The CSV in chunks of records, every column as text; ``CatalogError`` for a file that is not a readable
    CSV (raised where pandas finds it)."""
    try:
        # Bad bytes become U+FFFD so one mis-encoded row is reported instead of failing the file.
        reader = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig",
                             encoding_errors="replace", on_bad_lines="warn", chunksize=chunk_rows)
    except FileNotFoundError:
        raise CatalogError(f"catalog not found: {path}") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise _unreadable(path, exc) from None
    with reader:
        while True:
            try:
                with warnings.catch_warnings():  # only around pandas' own reading, never across a yield
                    # rows with too many fields are skipped with a warning counting records, not lines:
                    # _record_lines reports these rows by their line instead
                    warnings.simplefilter("ignore", pd.errors.ParserWarning)
                    frame = next(reader, None)
            except (pd.errors.ParserError, ValueError) as exc:
                raise _unreadable(path, exc) from None
            if frame is None:
                return
            yield frame


def iter_catalog(path: Path, errors: list[RowError], chunk_rows: int = CHUNK_ROWS) -> Iterator[dict]:
    """``read_catalog``'s rows, one at a time, read ``chunk_rows`` records at a time (a catalog of millions of
    rows is never held whole); the errors are appended to ``errors`` as they are found."""
    starts: np.ndarray | None = None
    at = 0
    seen: dict[str, int] = {}
    for frame in _frames(path, chunk_rows):
        frame.columns = [str(c).strip() for c in frame.columns]
        if starts is None:
            missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
            if missing:
                raise CatalogError(f"{path}: missing required column(s) {', '.join(missing)}; need "
                                   f"{', '.join(REQUIRED_COLUMNS)}")
            starts, malformed = _record_lines(path, len(frame.columns))
            errors += malformed
        records = frame.to_dict(orient="records")
        # cannot run short for standard CSV; fall back to record numbers
        lines = starts[at:at + len(records)] if at + len(records) <= len(starts) else \
            range(at + 2, at + len(records) + 2)
        at += len(records)
        for line, record in zip(lines, records, strict=True):
            row = _checked(int(line), record, seen, errors)
            if row is not None:
                yield row


def _checked(line: int, record: dict, seen: dict[str, int], errors: list[RowError]) -> dict | None:
    """One record as a clean row, or None with its error appended (a warning keeps the row)."""
    row = {k: (v.strip() if isinstance(v, str) else "") for k, v in record.items()}
    pid, url = row["id"], row["image_url"]

    def fail(msg: str) -> None:
        errors.append(RowError(line, pid, url, "catalog", msg))

    if any("\ufffd" in v for v in row.values()):
        fail("not valid UTF-8 text")
    elif any(len(v) > MAX_FIELD for v in row.values()):
        fail(f"a field is longer than {MAX_FIELD} characters")
    elif not pid:
        fail("empty id")
    elif pid in seen:
        fail(f"duplicate id (first seen on line {seen[pid]})")
    elif not url:
        fail("empty image_url")
    else:
        try:
            row["price"] = parse_price(row["price"])
        except ValueError as exc:
            fail(str(exc))
            return None
        seen[pid] = line
        row["line"] = line
        errors.extend(_unlinked(row))
        formulas = [k for k, v in row.items() if isinstance(v, str) and FORMULA.match(v)]
        if formulas:  # kept (it is just text to us), but flagged: it would run in a spreadsheet
            errors.append(RowError(line, pid, url, "warning", f"formula-looking cell in {', '.join(formulas)}: "
                                   "kept as text, neutralised in reports"))
        return row
    return None
