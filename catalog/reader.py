"""Read ``products.csv`` into clean rows, reporting every unusable row instead of aborting."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

REQUIRED_COLUMNS: tuple[str, ...] = ("id", "name", "category", "price", "image_url")


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
    value = float(text.replace(",", ""))
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"price must be a non-negative number, got {text!r}")
    return value


def read_catalog(path: Path) -> tuple[list[dict], list[RowError]]:
    """Rows as dicts (all columns kept as text, ``price`` parsed, ``line`` added) plus row errors."""
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    except FileNotFoundError:
        raise CatalogError(f"catalog not found: {path}") from None
    except UnicodeDecodeError as exc:
        raise CatalogError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as exc:
        raise CatalogError(f"{path}: not a readable CSV ({exc})") from None
    frame.columns = [str(c).strip() for c in frame.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise CatalogError(
            f"{path}: missing required column(s) {', '.join(missing)}; need {', '.join(REQUIRED_COLUMNS)}"
        )
    rows: list[dict] = []
    errors: list[RowError] = []
    seen: dict[str, int] = {}
    for offset, record in enumerate(frame.to_dict(orient="records")):
        line = offset + 2  # header is line 1
        row = {k: (v.strip() if isinstance(v, str) else "") for k, v in record.items()}
        pid, url = row["id"], row["image_url"]

        def fail(msg: str, pid: str = pid, url: str = url, line: int = line) -> None:
            errors.append(RowError(line, pid, url, "catalog", msg))

        if not pid:
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
                continue
            seen[pid] = line
            row["line"] = line
            rows.append(row)
    return rows, errors
