"""The published version's vectors, reused by a rebuild for every image whose bytes did not change.

Looked up by image sha256 without holding the version: the digests are one sorted array (64 bytes a product)
and each vector is read from the version's matrix file when a row asks for it (a ``RowFile``: nothing of the
matrix stays in memory). A local store is read where it is; the version of an S3 store is first copied
(streamed, checksummed) into the build's work folder, without the files a rebuild does not need.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from catalog.products import ProductTable
from indexstore.store import (
    EMBEDDINGS,
    PRODUCTS,
    IndexNotFound,
    LocalStore,
    Store,
    StoreUnavailable,
    current_version,
    open_local,
    read_manifest,
    sync_version,
)
from safeio.rowfile import RowFile

log = logging.getLogger(__name__)


class PreviousVectors:
    """image sha256 (hex) → the vector the published version stored for it (``get``; None when unknown)."""

    def __init__(self, digests: list[str], matrix: np.ndarray | RowFile | None) -> None:
        keys = np.array(digests, dtype="S64")
        self._order = np.argsort(keys)  # products sharing an image share its vector: any of them will do
        self._keys = keys[self._order]
        self.matrix = matrix

    @classmethod
    def none(cls) -> PreviousVectors:
        return cls([], None)

    def __len__(self) -> int:
        return len(self._keys)

    def get(self, digest: str) -> np.ndarray | None:
        key = digest.encode("ascii", "replace")
        at = int(np.searchsorted(self._keys, key))
        if at == len(self._keys) or self._keys[at] != key:
            return None
        row = int(self._order[at])
        return self.matrix[row:row + 1][0]

    def in_memory(self) -> PreviousVectors:
        """The same lookup with the matrix read into memory (to send to other machines, e.g. Ray's store)."""
        out = PreviousVectors.__new__(PreviousVectors)
        out._order, out._keys = self._order, self._keys
        out.matrix = None if self.matrix is None else np.asarray(self.matrix[:], dtype=np.float32)
        return out


def previous_vectors(store: Store, backbone: str, work: Path) -> PreviousVectors:
    """The published version's vectors when it was built by ``backbone`` (else none: everything is embedded).
    An unreachable store stops the build (its publish would fail too); an unreadable version only costs
    re-embedding."""
    try:
        version = current_version(store)
        manifest = read_manifest(store, version)
    except IndexNotFound:
        return PreviousVectors.none()
    except StoreUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - an unreadable old version only costs re-embedding
        log.warning("previous version not reusable: %s", exc)
        return PreviousVectors.none()
    if manifest.get("backbone") != backbone:
        log.info("previous version used %s, re-embedding everything with %s", manifest.get("backbone"), backbone)
        return PreviousVectors.none()
    try:
        return _open(store, version, manifest, work)
    except StoreUnavailable:
        raise
    except Exception as exc:  # noqa: BLE001 - as above
        log.warning("previous version %s not reusable: %s", version, exc)
        return PreviousVectors.none()


def _open(store: Store, version: str, manifest: dict, work: Path) -> PreviousVectors:
    """The lookup over ``version``: read in place from a local store, else from a verified copy in ``work``."""
    unneeded = frozenset(manifest["files"]) - {EMBEDDINGS, PRODUCTS}
    copied = not isinstance(store, LocalStore)
    if copied:
        local = LocalStore(work / "previous")
        sync_version(store, version, local, skip=unneeded, manifest=manifest)
        store = local
    # a copy was checksummed as it came (not twice); a version read in place is checked here
    index = open_local(store, version, verify=not copied, skip=unneeded)
    products = index.products
    digests = [str(p.get("image_sha256", "")) for p in products]
    if isinstance(products, ProductTable):
        products.release()
    del index  # open_local checked the matrix's shape against the products
    return PreviousVectors(digests, RowFile(store.file(f"versions/{version}/{EMBEDDINGS}")))
