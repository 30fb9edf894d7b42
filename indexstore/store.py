"""Index storage: immutable versions plus one small pointer object, written last.

Layout under the index root (a local folder; S3 uses the same keys)::

    CURRENT                          {"version": "..."}   <- readers follow only this
    versions/<version>/manifest.json schema, backbone id, dim, count, checksums of the files below
    versions/<version>/embeddings.npy float32 (count, dim), L2-normalised rows
    versions/<version>/products.jsonl one product per line, same order as the matrix rows
    versions/<version>/errors.csv     rows left out of the index, and why

A build writes its version completely, then replaces CURRENT atomically, so a crashed or concurrent
build never exposes a partial index. ``s3://bucket/prefix`` uses boto3's standard credential chain
(environment, profile, instance role) and honours ``AWS_ENDPOINT_URL`` for S3-compatible stores.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import BinaryIO

import numpy as np

from indexstore.manifest import Manifest, ManifestError
from ranking.whitening import Whitening
from safeio.rowfile import RowFile

SCHEMA_VERSION = 1
POINTER = "CURRENT"
EMBEDDINGS = "embeddings.npy"
PRODUCTS = "products.jsonl"
ERRORS = "errors.csv"
WHITENING = "whitening.npz"
#: The appearance space (ranking/appearance.py) and each product's unit appearance vector (float32, rows).
APPEARANCE = "appearance.npz"
APPEARANCE_VECTORS = "appearance.npy"
ANN = "ann.faiss"  # optional: the HNSW graph over the search-space vectors (indexstore/ann.py)
#: Optional: what the catalog's products look like, a few hundred unit model vectors (ranking/prototypes.py).
PROTOTYPES = "prototypes.npz"
#: Optional (``build_index.py --local-features``): each product's keypoints (localfeatures/sift.py):
#: uint8 descriptors (count, KEYPOINTS, 128), float16 points (count, KEYPOINTS, 2), uint16 keypoints per row.
LOCAL_DESCRIPTORS = "local_descriptors.npy"
LOCAL_POINTS = "local_points.npy"
LOCAL_COUNTS = "local_counts.npy"
LOCAL_FILES = (LOCAL_DESCRIPTORS, LOCAL_POINTS, LOCAL_COUNTS)
MANIFEST = "manifest.json"


class IndexNotFound(FileNotFoundError):
    """No published index at this location."""


class CorruptIndex(ValueError):
    """A version whose files do not match its manifest, or store content that is not what a build writes."""


#: What ``new_version_name`` makes; anything else read from a store (pointer, manifest, listing, a rollback
#: target) is refused before it can become part of a path.
VERSION_NAME = re.compile(r"^[0-9]{8}T[0-9]{12}Z-[0-9a-f]{6}$")
#: The only files a version may list in its manifest.
FILE_NAMES = frozenset({EMBEDDINGS, PRODUCTS, ERRORS, WHITENING, ANN, APPEARANCE, APPEARANCE_VECTORS,
                        PROTOTYPES, *LOCAL_FILES})
#: Bytes per read when a file is streamed (copied and checksummed without holding it in memory).
CHUNK = 8 << 20


def checked_version(name: object, where: str) -> str:
    """``name`` if it is a version name a build writes, else ``CorruptIndex`` (it came from ``where``)."""
    if not isinstance(name, str) or not VERSION_NAME.match(name):
        raise CorruptIndex(f"{where}: {str(name)[:80]!r} is not an index version name")
    return name


class LocalStore:
    """Keys are relative paths under a folder; every write is atomic (temp file + rename)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.uri = str(self.root)

    def _path(self, key: str) -> Path:
        """The file of ``key``, refused if it would resolve outside the root (``..``, absolute, links)."""
        root = self.root.resolve()
        path = (root / key).resolve()
        if not path.is_relative_to(root) or path == root:
            raise CorruptIndex(f"{key[:80]!r} is outside the index folder {self.root}")
        return path

    def put(self, key: str, data: bytes) -> None:
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)

    def put_file(self, key: str, source: Path) -> None:
        """Copy the file ``source`` to ``key``, streamed and atomically (temp file + rename)."""
        path = self._path(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".part-")
        try:
            with os.fdopen(fd, "wb") as fh, open(source, "rb") as src:
                shutil.copyfileobj(src, fh, CHUNK)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def get_file(self, key: str, target: Path) -> None:
        """Copy ``key`` to the file ``target``, streamed."""
        with self.open(key) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out, CHUNK)

    def get(self, key: str) -> bytes:
        try:
            return self._path(key).read_bytes()
        except FileNotFoundError:
            raise IndexNotFound(f"{self.root / key} not found") from None

    def open(self, key: str) -> BinaryIO:
        """A file object to stream ``key`` from."""
        try:
            return self._path(key).open("rb")
        except FileNotFoundError:
            raise IndexNotFound(f"{self.root / key} not found") from None

    def file(self, key: str) -> Path:
        """The local path of ``key`` (checked like every other key)."""
        return self._path(key)

    def list_folders(self, prefix: str) -> list[str]:
        """The names of the folders right under ``prefix`` (e.g. ``versions``), sorted."""
        folder = self._path(prefix)
        return sorted(p.name for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []

    def list_versions(self) -> list[str]:
        return [n for n in self.list_folders("versions") if VERSION_NAME.match(n)]

    def delete_version(self, version: str) -> None:
        self.delete_tree(f"versions/{checked_version(version, 'delete')}")

    def delete(self, key: str) -> None:
        """Delete ``key`` if it exists."""
        self._path(key).unlink(missing_ok=True)

    def delete_tree(self, prefix: str) -> None:
        """Delete every file under ``prefix`` (a folder key)."""
        shutil.rmtree(self._path(prefix), ignore_errors=True)


class StoreUnavailable(ConnectionError):
    """The index store cannot be reached (network, credentials, throttling)."""


#: Files at least this big travel in parts of this size (boto3's transfer manager, several at once): S3 takes
#: at most 5 GiB in one PUT and 10,000 parts in one upload, so 64 MiB parts carry files up to 625 GiB.
PART_BYTES = 64 << 20


class S3Store:
    """Keys under ``s3://bucket/prefix``. A single PUT is atomic in S3, so the pointer swap is too; a file sent
    in parts appears only once the upload completes, so one that dies midway never becomes visible."""

    def __init__(self, bucket: str, prefix: str, client=None, part_bytes: int = PART_BYTES) -> None:
        import boto3
        from boto3.s3.transfer import TransferConfig
        from botocore.config import Config as BotoConfig

        self.transfer = TransferConfig(multipart_threshold=part_bytes, multipart_chunksize=part_bytes,
                                       max_concurrency=8)
        self.bucket = bucket
        self.prefix = prefix.strip("/")
        self.uri = f"s3://{bucket}/{self.prefix}".rstrip("/")
        # Short timeouts and few retries: a reader must fall back quickly when S3 is down.
        self.client = client or boto3.client("s3", config=BotoConfig(
            connect_timeout=3, read_timeout=20, retries={"max_attempts": 2, "mode": "standard"}))

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _call(self, fn, **kwargs):
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code", "")
            if code in ("NoSuchKey", "404", "NotFound"):
                raise IndexNotFound(f"{self.uri}/{kwargs.get('Key', '')} not found") from None
            raise StoreUnavailable(f"S3 error {code or exc} at {self.uri}") from None
        except BotoCoreError as exc:
            raise StoreUnavailable(f"S3 unreachable at {self.uri}: {exc}") from None

    def put(self, key: str, data: bytes) -> None:
        self._call(self.client.put_object, Key=self._key(key), Body=data)

    def put_file(self, key: str, source: Path) -> None:
        """Upload the file ``source``, in parts when big (streamed from disk, never whole in memory). A failed
        upload's parts are aborted: the object never exists half-written."""
        from boto3.exceptions import S3UploadFailedError

        try:
            self._call(self._upload, Key=self._key(key), Filename=str(source))
        except S3UploadFailedError as exc:
            raise StoreUnavailable(f"S3 upload of {key} failed at {self.uri}: {exc}") from None

    def get_file(self, key: str, target: Path) -> None:
        """Download ``key`` to the file ``target``, in parts when big (ranged GETs, several at once)."""
        self._call(self._download, Key=self._key(key), Filename=str(target))

    def _upload(self, Bucket: str, Key: str, Filename: str) -> None:  # noqa: N803 - boto3's own names
        self.client.upload_file(Filename, Bucket, Key, Config=self.transfer)

    def _download(self, Bucket: str, Key: str, Filename: str) -> None:  # noqa: N803 - boto3's own names
        self.client.download_file(Bucket, Key, Filename, Config=self.transfer)

    def get(self, key: str) -> bytes:
        from botocore.exceptions import BotoCoreError

        body = self._call(self.client.get_object, Key=self._key(key))["Body"]
        try:
            return body.read()
        except (BotoCoreError, OSError) as exc:
            raise StoreUnavailable(f"S3 read of {key} failed at {self.uri}: {exc}") from None

    def open(self, key: str) -> BinaryIO:
        """A stream of ``key``'s body; a broken read raises ``StoreUnavailable``."""
        return _S3Body(self._call(self.client.get_object, Key=self._key(key))["Body"], f"{self.uri}/{key}")

    def list_folders(self, prefix: str) -> list[str]:
        """The names of the "folders" right under ``prefix`` (common key prefixes, every listing page), sorted."""
        base = self._key(prefix.strip("/") + "/")
        found: set[str] = set()
        token: dict = {}
        while True:
            page = self._call(self.client.list_objects_v2, Prefix=base, Delimiter="/", **token)
            found.update(p["Prefix"][len(base):].strip("/") for p in page.get("CommonPrefixes", []))
            if not page.get("IsTruncated"):
                return sorted(found)
            token = {"ContinuationToken": page["NextContinuationToken"]}

    def list_versions(self) -> list[str]:
        return [n for n in self.list_folders("versions") if VERSION_NAME.match(n)]

    def delete_version(self, version: str) -> None:
        self.delete_tree(f"versions/{checked_version(version, 'delete')}")

    def delete(self, key: str) -> None:
        """Delete ``key`` (S3 answers the same whether it existed or not)."""
        self._call(self.client.delete_object, Key=self._key(key))

    def delete_tree(self, prefix: str) -> None:
        """Delete every object under ``prefix``: all listing pages (1,000 keys each), one batch per page."""
        base = self._key(prefix.rstrip("/") + "/")
        token: dict = {}
        while True:
            page = self._call(self.client.list_objects_v2, Prefix=base, **token)
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            if keys:
                self._call(self.client.delete_objects, Delete={"Objects": keys, "Quiet": True})
            if not page.get("IsTruncated"):
                return
            token = {"ContinuationToken": page["NextContinuationToken"]}


class _S3Body(io.RawIOBase):
    """An S3 object body whose read errors are ``StoreUnavailable``, like every other S3 failure."""

    def __init__(self, body, where: str) -> None:
        self._body, self._where = body, where

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        from botocore.exceptions import BotoCoreError

        try:
            return self._body.read(None if size < 0 else size)
        except (BotoCoreError, OSError) as exc:
            raise StoreUnavailable(f"S3 read of {self._where} failed: {exc}") from None

    def close(self) -> None:
        self._body.close()
        super().close()


Store = LocalStore | S3Store


def open_store(uri: str | Path) -> Store:
    """The store for an index location: ``s3://bucket/prefix`` or a local folder."""
    text = str(uri)
    if text.startswith("s3://"):
        bucket, _, prefix = text[5:].partition("/")
        if not bucket:
            raise ValueError(f"{text}: no bucket name")
        return S3Store(bucket, prefix)
    return LocalStore(Path(text))


@dataclass
class IndexData:
    """A loaded (or about to be written) index version."""

    embeddings: np.ndarray
    products: Sequence[dict]  # a list, or a ProductTable for a memory-mapped version
    manifest: dict = field(default_factory=dict)
    #: The verified raw files of a loaded version, so it can be copied without downloading it again.
    files: dict[str, bytes] = field(default_factory=dict, repr=False)
    #: The local folder of a memory-mapped version (``open_local``); its files are read from there.
    folder: Path | None = None

    def has_file(self, name: str) -> bool:
        return name in self.files or (self.folder is not None and name in self.manifest.get("files", {}))

    def file_bytes(self, name: str) -> bytes:
        return self.files[name] if name in self.files else (self.folder / name).read_bytes()

    @property
    def info(self) -> Manifest:
        """The manifest's typed, checked fields (``ManifestError`` for one that was never checked)."""
        return Manifest.parse(self.manifest)

    @property
    def backbone_id(self) -> str:
        """The id of the vector function that made the embeddings (stored as the manifest's ``backbone``)."""
        return self.manifest["backbone"]

    @property
    def version(self) -> str:
        return self.manifest["version"]

    def whitening(self) -> Whitening | None:
        """The catalog-fitted transform stored with this version, if any."""
        return Whitening.from_bytes(self.file_bytes(WHITENING)) if self.has_file(WHITENING) else None


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def new_version_name() -> str:
    """Sortable by creation time, unique across concurrent builds."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S%fZ") + "-" + secrets.token_hex(3)


def write_version(store: Store, index: IndexData, extra_files: dict[str, bytes | Path] | None = None) -> str:
    """Write all files of a new version (not yet visible to readers); return its name.

    Each file is written to a temporary folder first and streamed to the store from there (in parts on S3), so
    the matrix is never held a second time as bytes. ``extra_files`` (e.g. ``errors.csv``, ``whitening.npz``)
    are stored and checksummed alongside: bytes, or the path of a file already written (streamed as it is)."""
    version = new_version_name()
    with tempfile.TemporaryDirectory(prefix="photo-version-") as tmp:
        paths = _version_files(Path(tmp), index, extra_files or {})
        for name, path in paths.items():
            store.put_file(f"versions/{version}/{name}", path)
        n, dim = index.embeddings.shape
        manifest = {
            "schema_version": SCHEMA_VERSION,
            "version": version,
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            **index.manifest,
            "dim": int(dim),
            "count": int(n),
            "files": {name: {"sha256": file_sha(path), "bytes": path.stat().st_size} for name, path in paths.items()},
        }
    store.put(f"versions/{version}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
    index.manifest = manifest
    # the small files, as given; the matrix, the products and files given by path are in the store
    index.files = {name: data for name, data in (extra_files or {}).items() if isinstance(data, bytes)}
    return version


def _version_files(folder: Path, index: IndexData, extra_files: dict[str, bytes | Path]) -> dict[str, Path]:
    """A version's files written under ``folder``: the matrix (streamed from an array or a memory map), the
    products one line at a time, and the extra files."""
    paths = {EMBEDDINGS: folder / EMBEDDINGS, PRODUCTS: folder / PRODUCTS}
    matrix = index.embeddings
    if isinstance(matrix, RowFile):  # already a file (a build's merged matrix): stored as it is
        paths[EMBEDDINGS] = matrix.path
    else:
        if matrix.dtype != np.float32 or not matrix.flags.c_contiguous:
            matrix = np.ascontiguousarray(matrix, dtype=np.float32)
        np.save(paths[EMBEDDINGS], matrix, allow_pickle=False)
    with open(paths[PRODUCTS], "w", encoding="utf-8") as out:
        for product in index.products:
            out.write(json.dumps(product, ensure_ascii=False) + "\n")
    for name, data in extra_files.items():
        if isinstance(data, Path):  # a big file the build wrote (the ANN graph, the appearance vectors)
            paths[name] = data
        else:
            paths[name] = folder / name
            paths[name].write_bytes(data)
    return paths


def publish(store: Store, version: str) -> None:
    """Point readers at ``version``: the single atomic step that makes a build visible."""
    manifest = read_manifest(store, version)  # a malformed version is never published (CorruptIndex)
    store.put(POINTER, json.dumps({"version": version, "backbone": manifest["backbone"]}).encode())


def write_and_publish(store: Store, index: IndexData, extra_files: dict[str, bytes | Path] | None = None,
                      keep: int = 5) -> tuple[str, list[str]]:
    """The whole write of a build: every file of a new version, then the pointer, then pruning to ``keep``
    versions. Dying at any step leaves the previously published version served. Returns (version, pruned)."""
    version = write_version(store, index, extra_files)
    publish(store, version)
    return version, prune(store, keep)


def current_version(store: Store) -> str:
    try:
        version = json.loads(store.get(POINTER))["version"]
    except (ValueError, KeyError, TypeError) as exc:
        raise CorruptIndex(f"{store.uri}/{POINTER} is unreadable: {exc}") from None
    return checked_version(version, f"{store.uri}/{POINTER}")


def read_manifest(store: Store, version: str) -> dict:
    """The manifest of ``version``, checked as untrusted input: its version must be the one asked for and it
    may name only the files a build writes, so nothing it says becomes a path (``CorruptIndex`` otherwise)."""
    version = checked_version(version, "requested version")
    try:
        manifest = json.loads(store.get(f"versions/{version}/{MANIFEST}"))
    except ValueError as exc:
        raise CorruptIndex(f"version {version}: manifest is not JSON ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("schema_version") != SCHEMA_VERSION:
        found = manifest.get("schema_version") if isinstance(manifest, dict) else type(manifest).__name__
        raise CorruptIndex(f"version {version}: schema {found}, need {SCHEMA_VERSION}")
    if manifest.get("version") != version:
        raise CorruptIndex(f"version {version}: its manifest says {str(manifest.get('version'))[:80]!r}")
    files = manifest.get("files")
    if not isinstance(files, dict) or not set(files) <= FILE_NAMES or not {EMBEDDINGS, PRODUCTS} <= set(files):
        raise CorruptIndex(f"version {version}: the manifest lists unexpected files")
    if not all(isinstance(meta, dict) and isinstance(meta.get("sha256"), str) for meta in files.values()):
        raise CorruptIndex(f"version {version}: the manifest's checksums are malformed")
    if not all(isinstance(manifest.get(key), int) and manifest[key] >= 0 for key in ("count", "dim")):
        raise CorruptIndex(f"version {version}: the manifest's count or dim is missing")
    try:
        Manifest.parse(manifest)  # every field serving reads: refused here, like a bad checksum
    except ManifestError as exc:
        raise CorruptIndex(f"version {version}: the manifest is malformed: {exc}; rebuild the index") from None
    return manifest


def _check_shape(version: str, manifest: dict, embeddings: np.ndarray, products: int) -> None:
    if embeddings.shape != (manifest["count"], manifest["dim"]) or products != manifest["count"]:
        raise CorruptIndex(f"version {version}: shape {embeddings.shape} does not match manifest")


def read_version(store: Store, version: str) -> IndexData:
    """Load a version into memory and verify every file against the manifest's checksums."""
    manifest = read_manifest(store, version)
    blobs = {}
    for name, meta in manifest["files"].items():
        data = store.get(f"versions/{version}/{name}")
        if _sha(data) != meta["sha256"]:
            raise CorruptIndex(f"version {version}: {name} checksum mismatch")
        blobs[name] = data
    try:
        embeddings = np.load(io.BytesIO(blobs[EMBEDDINGS]), allow_pickle=False)
        products = [json.loads(line) for line in blobs[PRODUCTS].decode().splitlines() if line]
    except ValueError as exc:
        raise CorruptIndex(f"version {version}: unreadable data ({exc})") from None
    _check_shape(version, manifest, embeddings, len(products))
    return IndexData(embeddings=embeddings, products=products, manifest=manifest, files=blobs)


def _download_checked(store: Store, key: str, target: Path, sha256: str, what: str) -> None:
    """Download ``key`` to ``target`` (in parts on S3; atomically: temp file + rename) if its checksum is
    ``sha256``; a failed or mismatched download leaves nothing at ``target``."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    os.close(fd)
    try:
        store.get_file(key, Path(tmp))
        with open(tmp, "rb+") as out:
            os.fsync(out.fileno())
        if file_sha(Path(tmp)) != sha256:
            raise CorruptIndex(f"{what} checksum mismatch")
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def file_sha(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sync_version(store: Store, version: str, dest: LocalStore, skip: frozenset[str] = frozenset(),
                 manifest: dict | None = None) -> dict:
    """Make ``dest`` hold a verified copy of ``version`` and point its CURRENT at it; return the manifest.

    Files are streamed (never whole in memory) and checksummed on the way; files already in ``dest`` are
    re-verified, not copied again; files named in ``skip`` are not fetched (a replica that searches the ANN file
    needs no raw matrix). The manifest is written last, so a copy that dies midway is never complete. Several
    processes may sync the same folder at once: a file lock takes turns. ``manifest``: the version's, when the
    caller has already read it with ``read_manifest`` (it is not fetched again)."""
    manifest = manifest if manifest is not None else read_manifest(store, version)
    folder = dest.file(f"versions/{version}/{MANIFEST}").parent
    folder.mkdir(parents=True, exist_ok=True)
    with open(dest.root / ".sync.lock", "a+b") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        for name, meta in manifest["files"].items():
            target = dest.file(f"versions/{version}/{name}")
            if name in skip or (target.exists() and file_sha(target) == meta["sha256"]):
                continue
            _download_checked(store, f"versions/{version}/{name}", target, meta["sha256"],
                              f"version {version}: {name}")
        dest.put(f"versions/{version}/{MANIFEST}", json.dumps(manifest, indent=2).encode())
        publish(dest, version)
    return manifest


class NotFetched:
    """The shape of a version's matrix whose file was not fetched (``skip``): any read of it is a bug, refused."""

    dtype = np.dtype(np.float32)

    def __init__(self, shape: tuple[int, int]) -> None:
        self.shape = shape

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key: object) -> np.ndarray:
        raise CorruptIndex(f"the raw vectors ({EMBEDDINGS}) of this version were not fetched: the backend that "
                           "needs them must not skip them")

    def __array__(self, *args: object, **kwargs: object) -> np.ndarray:
        return self[:]


def open_local(store: LocalStore, version: str, verify: bool = True, skip: frozenset[str] = frozenset()) -> IndexData:
    """A version of a local store, memory-mapped rather than read: the embeddings as a read-only memmap and
    the products as a ``ProductTable``, shared by every process that opens them. ``verify`` re-checks the
    checksums first (one streamed read of each file). Files in ``skip`` need not be there (``sync_version``'s
    ``skip``); the embeddings among them become a ``NotFetched`` of the manifest's shape."""
    from catalog.products import ProductTable

    manifest = read_manifest(store, version)
    for name, meta in manifest["files"].items():
        path = store.file(f"versions/{version}/{name}")
        if name in skip and not path.is_file():
            continue
        if not path.is_file():
            raise IndexNotFound(f"{path} not found")
        if verify and file_sha(path) != meta["sha256"]:
            raise CorruptIndex(f"version {version}: {name} checksum mismatch")
    matrix = store.file(f"versions/{version}/{EMBEDDINGS}")
    try:
        embeddings = (NotFetched((manifest["count"], manifest["dim"])) if EMBEDDINGS in skip and not matrix.is_file()
                      else np.load(matrix, mmap_mode="r", allow_pickle=False))
    except ValueError as exc:
        raise CorruptIndex(f"version {version}: unreadable embeddings ({exc})") from None
    products = ProductTable.open(store.file(f"versions/{version}/{PRODUCTS}"))
    _check_shape(version, manifest, embeddings, len(products))
    folder = store.file(f"versions/{version}/{MANIFEST}").parent
    return IndexData(embeddings=embeddings, products=products, manifest=manifest, folder=folder)


def read_current(store: Store) -> IndexData:
    return read_version(store, current_version(store))


def complete_versions(store: Store) -> list[str]:
    """Versions whose manifest exists (a crashed build leaves none), oldest first."""
    done = []
    for version in store.list_versions():
        try:
            store.get(f"versions/{version}/{MANIFEST}")
            done.append(version)
        except IndexNotFound:
            continue
    return done


def rollback(store: Store, to: str | None = None) -> str:
    """Point readers at ``to`` (default: the complete version before the current one), after verifying it."""
    if to is not None:
        checked_version(to, "rollback target")
    current = current_version(store)
    if to is None:
        older = [v for v in complete_versions(store) if v < current]
        if not older:
            raise IndexNotFound(f"{store.uri}: no version older than {current} to roll back to")
        to = older[-1]
    read_version(store, to)  # refuse to publish a missing, corrupt or wrongly named version
    publish(store, to)
    return to


def prune(store: Store, keep: int) -> list[str]:
    """Delete all but the newest ``keep`` complete versions (never the published one), plus leftovers
    of crashed builds older than the oldest kept version. Returns what was deleted."""
    try:
        current = current_version(store)
    except IndexNotFound:
        current = None
    complete = complete_versions(store)
    kept = set(complete[-max(keep, 1):]) | {current}
    oldest_kept = min(kept - {None}, default="")
    doomed = [v for v in store.list_versions() if v not in kept and (v in complete or v < oldest_kept)]
    for version in doomed:
        store.delete_version(version)
    return doomed
