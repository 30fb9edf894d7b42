"""The approximate-nearest-neighbour file of an index version: a FAISS HNSW graph over the search-space vectors.

Chosen by measurement (docs/SCALING.md): on 100k clustered 512-d vectors on this 2-core CPU FAISS's
``IndexHNSWFlat`` built in half the time of usearch and answered in ~0.3 ms at recall 0.999; hnswlib was
as fast but cannot memory-map its file, so every gateway worker would hold its own copy. FAISS maps the
vectors (``IO_FLAG_MMAP_IFC``): all workers share one copy in the page cache, and it filters natively
(``IDSelector``), so a category filter does not depend on over-fetching.

A native loader can crash the process on a malformed file, and the file comes from the index store (a
trust boundary): ``check_file`` opens it in a child process first, and only a file that passes is opened
by the gateway.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from safeio.rowfile import RowFile, blocks

#: Rows added to the graph per call (the block read from the matrix file).
ANN_BLOCK = 16_384


class AnnFileError(ValueError):
    """An ANN file that is not the graph its index version needs (wrong size, corrupt, crashes the loader)."""


@dataclass(frozen=True)
class AnnSettings:
    """HNSW parameters (see docs/SCALING.md for how they were chosen)."""

    connectivity: int = 32  # M: links per node (16 reached recall@10 0.89 at 1M even searching 256 deep)
    expansion_add: int = 128  # efConstruction
    expansion_search: int = 128  # efSearch (ANN_EXPANSION in the gateway)
    #: Catalogs from this size get an ANN file at build time (``--ann auto``) and use it in the gateway.
    min_products: int = 100_000


def _graph(vectors: np.ndarray | RowFile, settings: AnnSettings):
    """The HNSW index over the rows, added a block at a time. The flat storage and the links are sized once for
    all rows first, so adding never reallocates them (a growing vector briefly holds its old and new copy: at
    1M rows the links' last growth alone was ~150 MB over the graph's own size)."""
    import faiss

    count, dim = int(vectors.shape[0]), int(vectors.shape[1])
    index = faiss.IndexHNSWFlat(dim, settings.connectivity, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = settings.expansion_add
    # reserve (a vector keeps its capacity when resized back to empty): 4·dim bytes a row of storage, and
    # 2M links a row on level 0 plus M per upper level (a row has 1/(M-1) of those on average: 2 covers it)
    for vector, size in ((faiss.downcast_index(index.storage).codes, count * dim * 4),
                         (index.hnsw.neighbors, count * (2 * settings.connectivity + 2))):
        vector.resize(size)
        vector.resize(0)
    for _, block in blocks(vectors, ANN_BLOCK):
        index.add(np.ascontiguousarray(block, dtype=np.float32))
    return index


def build_ann(vectors: np.ndarray | RowFile, settings: AnnSettings = AnnSettings()) -> bytes:
    """The serialised HNSW graph (inner product) over ``vectors`` (rows L2-normalised), row i = id i."""
    import faiss

    return faiss.serialize_index(_graph(vectors, settings)).tobytes()


def write_ann(vectors: np.ndarray | RowFile, path: Path, settings: AnnSettings = AnnSettings()) -> Path:
    """``build_ann`` written straight to ``path`` (no second copy of the graph in memory); returns ``path``."""
    import faiss

    faiss.write_index(_graph(vectors, settings), str(path))
    return path


def open_ann(path: Path, count: int, dim: int):
    """The FAISS index in ``path``, memory-mapped read-only. Run ``check_file`` on a file from a store first."""
    import faiss

    index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    if not isinstance(index, faiss.IndexHNSWFlat) or index.ntotal != count or index.d != dim \
            or index.metric_type != faiss.METRIC_INNER_PRODUCT:
        raise AnnFileError(f"{path.name}: not an inner-product HNSW graph of {count} × {dim} vectors")
    return index


def vectors_of(index) -> np.ndarray:
    """The stored vectors of an opened HNSW index as a read-only array over its memory (no copy)."""
    import faiss

    n, d = index.ntotal, index.d
    if n == 0:
        return np.zeros((0, d), np.float32)
    flat = faiss.downcast_index(index.storage)
    view = faiss.rev_swig_ptr(flat.get_xb(), n * d).reshape(n, d)
    view.flags.writeable = False
    return view


def check_file(path: Path, count: int, dim: int, timeout_s: float = 120.0) -> None:
    """Open ``path`` and search it in a child process; ``AnnFileError`` if that fails or crashes."""
    try:
        done = subprocess.run([sys.executable, "-m", "indexstore.ann", str(path), str(count), str(dim)],
                              capture_output=True, text=True, timeout=timeout_s,
                              cwd=Path(__file__).resolve().parent.parent)
    except subprocess.TimeoutExpired:
        raise AnnFileError(f"{path.name}: checking it took over {timeout_s:.0f} s") from None
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or [f"the check died (exit {done.returncode})"])[-1]
        raise AnnFileError(f"{path.name}: {last[:200]}")


def _self_check(path: Path, count: int, dim: int) -> None:
    """What the child process of ``check_file`` runs: open, search a few stored rows, read vectors."""
    index = open_ann(path, count, dim)
    vectors = vectors_of(index)
    rows = np.unique(np.linspace(0, count - 1, num=min(count, 8)).astype(np.int64)) if count else []
    for row in rows:
        scores, found = index.search(np.ascontiguousarray(vectors[row:row + 1]), min(10, count))
        if not np.all((found >= -1) & (found < count)) or not np.all(np.isfinite(scores[found >= 0])):
            raise AnnFileError(f"{path.name}: a search returned ids or scores out of range")
    print(json.dumps({"ok": True, "count": count}))


if __name__ == "__main__":
    try:
        _self_check(Path(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]))
    except Exception as exc:  # noqa: BLE001 - reported to the parent on stderr
        print(f"{type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
