"""An index version's products, read on demand from its products.jsonl instead of held as dicts.

A million products as Python dicts cost about a gigabyte in every gateway worker; here they cost a few
NumPy arrays (line offsets, id hashes), and the file itself is memory-mapped, so all workers share it.
"""

from __future__ import annotations

import hashlib
import json
import mmap
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

#: The catalog's optional column naming a product's page in the shop (checked by catalog/reader.py at build and
#: again by the gateway before a card links to it: safeio/paths.py ``product_link``).
PRODUCT_URL = "product_url"


def _id_hash(product_id: str) -> int:
    return int.from_bytes(hashlib.blake2b(product_id.encode(), digest_size=8).digest(), "little")


class ProductTable(Sequence[dict]):
    """Products by row, one JSON object per line of ``data`` (bytes or a memory map); blank lines skipped."""

    def __init__(self, data: bytes | mmap.mmap) -> None:
        self._data = data
        raw = np.frombuffer(data, dtype=np.uint8) if len(data) else np.zeros(0, np.uint8)
        ends = np.flatnonzero(raw == ord("\n"))
        if len(raw) and raw[-1] != ord("\n"):
            ends = np.append(ends, len(raw))
        starts = np.concatenate([[0], ends[:-1] + 1]).astype(np.int64) if len(ends) else np.zeros(0, np.int64)
        keep = ends > starts
        self._starts, self._ends = starts[keep], ends[keep].astype(np.int64)
        self._hashes: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def open(cls, path: Path) -> ProductTable:
        """Memory-map ``path`` read-only (shared between processes)."""
        with open(path, "rb") as fh:
            if fh.seek(0, 2) == 0:
                return cls(b"")
            return cls(mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ))

    def __len__(self) -> int:
        return len(self._starts)

    def release(self) -> None:
        """Give the file's pages back to the kernel (they are read again on the next access): a build keeps its
        table through the graph, its biggest step, without reading it there."""
        if isinstance(self._data, mmap.mmap):
            self._data.madvise(mmap.MADV_DONTNEED)

    def __getitem__(self, row: int) -> dict:  # type: ignore[override]
        if not -len(self) <= row < len(self):
            raise IndexError(row)
        return json.loads(self._data[self._starts[row]:self._ends[row]])

    def __iter__(self) -> Iterator[dict]:
        for row in range(len(self)):
            yield self[row]

    def scan(self, hashed: tuple[str, ...], listed: str, numeric: str = "") -> tuple[list[str], np.ndarray]:
        """One pass over the file at load: hash ``hashed`` columns for ``first_row`` (so no lookup parses the
        file on a request); return ``str(product.get(listed, ""))`` for every row, and the ``numeric`` column
        as float64 (NaN where it is missing or not a number; all NaN without ``numeric``)."""
        values: list[str] = []
        numbers = np.full(len(self), np.nan)
        keys = {column: np.empty(len(self), np.uint64) for column in hashed if column not in self._hashes}
        for row, product in enumerate(self):
            values.append(str(product.get(listed, "")))
            if numeric:
                numbers[row] = number_of(product.get(numeric))
            for column, out in keys.items():
                out[row] = _id_hash(str(product.get(column, "")))
        for column, hashes in keys.items():
            order = np.argsort(hashes, kind="stable")
            self._hashes[column] = (hashes[order], order)
        return values, numbers

    def _hashed(self, column: str) -> tuple[np.ndarray, np.ndarray]:
        """Sorted hashes of ``str(product[column])`` and their rows, built once per column (one pass)."""
        if column not in self._hashes:
            hashes = np.fromiter((_id_hash(str(p.get(column, ""))) for p in self), dtype=np.uint64, count=len(self))
            order = np.argsort(hashes, kind="stable")
            self._hashes[column] = (hashes[order], order)
        return self._hashes[column]

    def first_row(self, column: str, value: str) -> int | None:
        """The first row whose ``str(product[column])`` equals ``value``, or None."""
        hashes, order = self._hashed(column)
        key = np.uint64(_id_hash(str(value)))
        at = int(np.searchsorted(hashes, key))
        while at < len(hashes) and hashes[at] == key:  # a hash collision is possible; the value decides
            row = int(order[at])
            if str(self[row].get(column, "")) == str(value):
                return row
            at += 1
        return None

    def row_of(self, product_id: str) -> int | None:
        """The first row whose product has this id, or None."""
        return self.first_row("id", product_id)


def number_of(value: object) -> float:
    """A product's numeric field as float64: NaN where it is missing or not a number (a bool is not one)."""
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else float("nan")
