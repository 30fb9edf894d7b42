"""Matrices bigger than memory, one block of rows at a time: ``.npy`` files written and read by plain file I/O.

A memory map would do the same reads, but every page it touches stays resident in the process until it is
unmapped, so a build that read a 5 GB matrix through one would hold 5 GB. ``RowFile`` reads each block into a
fresh array instead (the page cache still keeps the file warm), and ``RowWriter`` appends blocks, so the
memory of a pass over the matrix is one block, whatever the catalog's size.

The header of a file read back is checked (a float32, C-order, 2-d array whose size matches the file):
these files can come from a store.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
from numpy.lib import format as npy

#: Rows per block of a pass (16,384 × 1,280 float32 is 80 MB).
BLOCK_ROWS = 16_384
_HEADERS = {(1, 0): npy.read_array_header_1_0, (2, 0): npy.read_array_header_2_0}


class RowFileError(ValueError):
    """A ``.npy`` file that is not a whole 2-d float32 matrix (wrong header, truncated, another dtype)."""


class RowFile:
    """A 2-d float32 ``.npy`` file on disk: its shape, contiguous slices and blocks read on demand."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        with open(self.path, "rb") as fh:
            try:
                read_header = _HEADERS.get(npy.read_magic(fh))
                if read_header is None:
                    raise ValueError("an unknown .npy version")
                shape, fortran, dtype = read_header(fh)
            except (ValueError, EOFError, SyntaxError) as exc:
                raise RowFileError(f"{self.path.name}: not a .npy file ({exc})") from None
            self.offset = fh.tell()
        if len(shape) != 2 or fortran or dtype != np.dtype("<f4"):
            raise RowFileError(f"{self.path.name}: a {len(shape)}-d {dtype} array, not a float32 matrix")
        if self.path.stat().st_size != self.offset + shape[0] * shape[1] * 4:
            raise RowFileError(f"{self.path.name}: {self.path.stat().st_size} bytes, not {shape[0]} × {shape[1]} "
                               "float32")
        self.shape: tuple[int, int] = (int(shape[0]), int(shape[1]))
        self.dtype = np.dtype(np.float32)

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        """Rows ``start:stop`` (step 1) as a new array."""
        start, stop, step = rows.indices(self.shape[0])
        if step != 1:
            raise IndexError("a RowFile reads contiguous rows only")
        count = max(0, stop - start) * self.shape[1]
        with open(self.path, "rb") as fh:
            fh.seek(self.offset + start * self.shape[1] * 4)
            out = np.fromfile(fh, dtype=np.float32, count=count)
        return out.reshape(-1, self.shape[1])


def blocks(matrix: np.ndarray | RowFile, rows: int = BLOCK_ROWS) -> Iterator[tuple[int, np.ndarray]]:
    """``(start, block)`` over the rows of an array or a ``RowFile``, in order."""
    for start in range(0, len(matrix), rows):
        yield start, np.asarray(matrix[start:start + rows], dtype=np.float32)


def take(matrix: np.ndarray | RowFile, rows: np.ndarray, block: int = BLOCK_ROWS) -> np.ndarray:
    """The given rows (sorted, unique) as one array: from an array by indexing, from a file block by block."""
    rows = np.asarray(rows, dtype=np.int64)
    if not isinstance(matrix, RowFile):
        return np.asarray(matrix[rows], dtype=np.float32)
    out = np.empty((len(rows), matrix.shape[1]), np.float32)
    at = 0
    for start, part in blocks(matrix, block):
        wanted = rows[(rows >= start) & (rows < start + len(part))]
        out[at:at + len(wanted)] = part[wanted - start]
        at += len(wanted)
    if at != len(rows):
        raise IndexError(f"rows out of range 0..{len(matrix) - 1}")
    return out


class RowWriter:
    """Writes a ``rows × dim`` float32 ``.npy`` file block by block; ``close`` checks every row came."""

    def __init__(self, path: Path, rows: int, dim: int) -> None:
        self.path, self.shape, self.written = Path(path), (int(rows), int(dim)), 0
        self._fh = open(self.path, "wb")  # noqa: SIM115 - closed by close()
        npy.write_array_header_1_0(self._fh, {"descr": "<f4", "fortran_order": False, "shape": self.shape})

    def append(self, block: np.ndarray) -> None:
        block = np.ascontiguousarray(block, dtype=np.float32).reshape(-1, self.shape[1])
        if self.written + len(block) > self.shape[0]:
            raise ValueError(f"{self.path.name}: more than {self.shape[0]} rows")
        self._fh.write(block.tobytes())
        self.written += len(block)

    def close(self) -> RowFile:
        self._fh.close()
        if self.written != self.shape[0]:
            raise ValueError(f"{self.path.name}: {self.written} of {self.shape[0]} rows written")
        return RowFile(self.path)

    def __enter__(self) -> RowWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._fh.closed:
            self._fh.close()
