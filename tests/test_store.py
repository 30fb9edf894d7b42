"""Versioned index storage (indexstore/store.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from indexstore.store import (
    CorruptIndex,
    IndexData,
    IndexNotFound,
    current_version,
    open_local,
    open_store,
    prune,
    publish,
    read_current,
    read_version,
    rollback,
    sync_version,
    write_and_publish,
    write_version,
)


def make_index(n=3, dim=4, backbone="test-backbone"):
    rng = np.random.default_rng(0)
    emb = rng.normal(size=(n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    return IndexData(emb, [{"id": str(i), "name": f"p{i}"} for i in range(n)], {"backbone": backbone})


def test_round_trip_and_pointer_written_last(tmp_path):
    store = open_store(tmp_path)
    with pytest.raises(IndexNotFound):
        read_current(store)
    index = make_index()
    version = write_version(store, index, {"errors.csv": b"line,id\n"})
    with pytest.raises(IndexNotFound):  # written but not yet published: invisible to readers
        read_current(store)
    publish(store, version)
    loaded = read_current(store)
    assert loaded.version == version and loaded.backbone_id == "test-backbone"
    assert np.array_equal(loaded.embeddings, index.embeddings) and loaded.products == index.products


def test_new_version_does_not_touch_the_published_one(tmp_path):
    store = open_store(tmp_path)
    first = write_version(store, make_index(3))
    publish(store, first)
    second = write_version(store, make_index(5))
    assert read_current(store).version == first
    publish(store, second)
    assert read_current(store).manifest["count"] == 5


def test_corrupted_file_is_refused(tmp_path):
    store = open_store(tmp_path)
    version = write_version(store, make_index())
    publish(store, version)
    path = tmp_path / "versions" / version / "products.jsonl"
    path.write_text(path.read_text().replace("p1", "px"))
    with pytest.raises(CorruptIndex, match="products.jsonl checksum mismatch"):
        read_current(store)


def test_unreadable_pointer(tmp_path):
    (tmp_path / "CURRENT").write_text("{not json")
    with pytest.raises(CorruptIndex, match="CURRENT is unreadable"):
        read_current(open_store(tmp_path))
    (tmp_path / "CURRENT").write_text(json.dumps({"version": "20260101T000000000000Z-abcdef"}))
    with pytest.raises(IndexNotFound):  # well formed, but no such version
        read_current(open_store(tmp_path))


# --------------------------------------------------------------------------- the store is untrusted input


@pytest.mark.parametrize("pointer", ["nope", "../../..", "../../../../tmp/x", "/etc", 7, None,
                                     "20260101T000000000000Z-abcdef/../../..", "20260101T000000000000Z-ABCDEF"])
def test_pointer_must_name_a_version_a_build_writes(tmp_path, pointer):
    (tmp_path / "CURRENT").write_text(json.dumps({"version": pointer}))
    with pytest.raises(CorruptIndex, match="not an index version name"):
        current_version(open_store(tmp_path))  # also what `manage_index list` and prune read
    with pytest.raises(CorruptIndex, match="not an index version name"):
        read_current(open_store(tmp_path))


def test_manifest_version_and_file_names_are_checked(tmp_path):
    store = open_store(tmp_path / "index")
    version = write_version(store, make_index())
    path = tmp_path / "index" / "versions" / version / "manifest.json"
    manifest = json.loads(path.read_text())
    other = "20260101T000000000000Z-abcdef"
    for bad, reason in [({**manifest, "version": "../../.."}, "its manifest says"),
                        ({**manifest, "version": other}, "its manifest says"),
                        ({**manifest, "files": {**manifest["files"], "../../evil.pth": {"sha256": "x"}}},
                         "unexpected files"),
                        ({**manifest, "files": {"products.jsonl": manifest["files"]["products.jsonl"]}},
                         "unexpected files"),
                        ([1, 2], "schema")]:
        path.write_text(json.dumps(bad))
        with pytest.raises(CorruptIndex, match=reason):
            read_version(store, version)
    path.write_text(json.dumps(manifest))
    assert read_version(store, version).version == version


def test_a_crafted_version_never_writes_outside_the_gateways_copy(tmp_path):
    """The attack from the security review: a pointer and manifest saying "../../..", served to a gateway."""
    from gateway.index import IndexManager

    store = open_store(tmp_path / "index")
    version = write_version(store, make_index())
    (tmp_path / "index" / "CURRENT").write_text(json.dumps({"version": "../../.."}))
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "cache" / "copy", poll_s=0)
    manager.load()
    assert manager.current is None and "not an index version name" in manager.error
    before = sorted(p for p in tmp_path.rglob("*"))
    publish(store, version)
    manifest_path = tmp_path / "index" / "versions" / version / "manifest.json"
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()), "version": "../../.."}))
    manager.load()
    assert manager.current is None and "its manifest says" in manager.error
    assert sorted(p for p in tmp_path.rglob("*")) == before  # nothing written anywhere


def test_local_store_refuses_keys_outside_its_root(tmp_path):
    store = open_store(tmp_path / "index")
    for key in ("../escape", "/etc/passwd", "versions/../../escape", ""):
        with pytest.raises(CorruptIndex, match="outside the index folder"):
            store.put(key, b"x")
        with pytest.raises(CorruptIndex, match="outside the index folder"):
            store.get(key)
    assert not (tmp_path / "escape").exists()
    with pytest.raises(CorruptIndex, match="not an index version name"):
        store.delete_version("..")
    with pytest.raises(CorruptIndex, match="not an index version name"):
        rollback(store, to="../../x")


def test_listing_ignores_what_a_build_never_writes(tmp_path):
    store = open_store(tmp_path / "index")
    version = write_version(store, make_index())
    (tmp_path / "index" / "versions" / "..hidden").mkdir()
    (tmp_path / "index" / "versions" / "notes").mkdir()
    assert store.list_versions() == [version]
    publish(store, version)
    assert prune(store, keep=1) == [] and (tmp_path / "index" / "versions" / "notes").is_dir()



class DiesAfter:
    """A store whose streamed reads die after ``n`` files, like a gateway killed mid-copy."""

    def __init__(self, store, n: int) -> None:
        self.store, self.n, self.opened = store, n, []

    def get_file(self, key, target):
        if self.n == 0:
            raise KeyboardInterrupt("killed mid-copy")
        self.n -= 1
        self.opened.append(key.rsplit("/", 1)[-1])
        return self.store.get_file(key, target)

    def __getattr__(self, name):
        return getattr(self.store, name)


@pytest.mark.parametrize("dies_after", [0, 1, 2])
def test_a_copy_that_dies_at_any_file_is_never_complete_and_resumes(tmp_path, dies_after):
    """The gateway's local copy is a multi-file write: killed after any file, the copy has no manifest (so it
    is neither served nor published locally), the previous copy stays current, and the next sync finishes."""
    source = open_store(tmp_path / "index")
    old, _ = write_and_publish(source, make_index(n=2))
    cache = open_store(tmp_path / "cache")
    sync_version(source, old, cache)
    new, _ = write_and_publish(source, make_index(n=5), {"errors.csv": b"line,stage,reason\n"})  # three files
    with pytest.raises(KeyboardInterrupt):
        sync_version(DiesAfter(source, dies_after), new, cache)
    assert current_version(cache) == old
    with pytest.raises(IndexNotFound):
        open_local(cache, new)
    assert not list((tmp_path / "cache" / "versions" / new).glob(".part-*"))  # no half-written file left
    resumed = DiesAfter(source, 10)
    sync_version(resumed, new, cache)
    assert current_version(cache) == new and len(resumed.opened) == 3 - dies_after  # copied files are kept
    loaded = open_local(cache, new)
    assert len(loaded.products) == 5 and np.array_equal(loaded.embeddings, read_current(source).embeddings)


def test_a_corrupt_file_is_not_copied(tmp_path):
    source = open_store(tmp_path / "index")
    version, _ = write_and_publish(source, make_index())
    (tmp_path / "index" / "versions" / version / "products.jsonl").write_text('{"id": "tampered"}\n')
    cache = open_store(tmp_path / "cache")
    with pytest.raises(CorruptIndex, match="checksum mismatch"):
        sync_version(source, version, cache)
    assert not (tmp_path / "cache" / "versions" / version / "products.jsonl").exists()
    with pytest.raises(IndexNotFound):
        current_version(cache)


def test_a_copy_altered_on_disk_is_refused_when_opened(tmp_path):
    source = open_store(tmp_path / "index")
    version, _ = write_and_publish(source, make_index())
    cache = open_store(tmp_path / "cache")
    sync_version(source, version, cache)
    (tmp_path / "cache" / "versions" / version / "products.jsonl").write_text('{"id": "x"}\n' * 3)
    with pytest.raises(CorruptIndex, match="checksum mismatch"):
        open_local(cache, version)
    sync_version(source, version, cache)  # a sync repairs it
    assert open_local(cache, version).products[0]["id"] == "0"


def test_the_gateways_copy_keeps_the_served_version_and_the_one_before(tmp_path):
    from gateway.index import IndexManager

    source = open_store(tmp_path / "index")
    write_and_publish(source, make_index())
    manager = IndexManager(str(tmp_path / "index"), tmp_path / "cache", poll_s=0)
    manager.load()
    versions = [manager.current.version]
    for n in (4, 5, 6):
        write_and_publish(source, make_index(n=n))
        assert manager.refresh()
        versions.append(manager.current.version)
    assert sorted(p.name for p in (tmp_path / "cache" / "versions").iterdir()) == versions[-2:]


class DiesAtWrite:
    """A store whose process dies at its ``n``-th write or delete (counted from 0), like a killed build."""

    def __init__(self, store, n: int) -> None:
        self.store, self.n, self.steps = store, n, []

    def _step(self, what: str) -> None:
        if len(self.steps) == self.n:
            raise KeyboardInterrupt(f"killed at {what}")
        self.steps.append(what)

    def put(self, key, data):
        self._step(key.rsplit("/", 1)[-1])
        return self.store.put(key, data)

    def put_file(self, key, path):
        self._step(key.rsplit("/", 1)[-1])
        return self.store.put_file(key, path)

    def delete_version(self, version):
        self._step(f"delete {version}")
        return self.store.delete_version(version)

    def __getattr__(self, name):
        return getattr(self.store, name)


# The steps of write_and_publish with one extra file and one version to prune: embeddings, products,
# errors.csv, manifest, pointer, then the delete.
@pytest.mark.parametrize("dies_at", range(6))
def test_a_publish_that_dies_at_any_step_serves_the_old_or_the_new_version_whole(tmp_path, dies_at):
    store = open_store(tmp_path / "index")
    old, _ = write_and_publish(store, make_index(n=2), keep=1)
    with pytest.raises(KeyboardInterrupt):
        write_and_publish(DiesAtWrite(store, dies_at), make_index(n=5), {"errors.csv": b"line\n"}, keep=1)
    served = read_current(store)  # whole and checksummed, never a mix
    assert (served.version == old) is (dies_at < 5) and len(served.products) == (2 if dies_at < 5 else 5)
    new, pruned = write_and_publish(store, make_index(n=7), keep=1)  # the next build finishes the job
    assert read_current(store).version == new and store.list_versions() == [new]
    assert old in pruned


def test_prune_after_a_rollback_keeps_the_rolled_back_version_and_the_newest(tmp_path):
    store = open_store(tmp_path / "index")
    versions = [write_and_publish(store, make_index(n=n), keep=10)[0] for n in (2, 3, 4, 5)]
    assert rollback(store, to=versions[1]) == versions[1]
    assert prune(store, keep=1) == [versions[0], versions[2]]
    assert store.list_versions() == [versions[1], versions[3]] and current_version(store) == versions[1]
    assert read_current(store).manifest["count"] == 3
    with pytest.raises(IndexNotFound, match="no version older than"):
        rollback(store)  # the older one was pruned: nothing to roll back to, and nothing changes
    assert current_version(store) == versions[1]


def _manifest_cases(manifest: dict, version: str) -> list[tuple[object, str]]:
    files = manifest["files"]
    missing = f"version {version}: the manifest's count or dim is missing"
    return [
        ([1, 2], f"version {version}: schema list, need 1"),
        ({**manifest, "schema_version": 2}, f"version {version}: schema 2, need 1"),
        ({k: v for k, v in manifest.items() if k != "schema_version"}, f"version {version}: schema None, need 1"),
        ({**manifest, "version": "x" * 200}, f"version {version}: its manifest says {'x' * 80!r}"),
        ({**manifest, "files": ["embeddings.npy"]}, f"version {version}: the manifest lists unexpected files"),
        ({**manifest, "files": {"embeddings.npy": files["embeddings.npy"]}},
         f"version {version}: the manifest lists unexpected files"),
        ({**manifest, "files": {**files, "embeddings.npy": "abc"}},
         f"version {version}: the manifest's checksums are malformed"),
        ({**manifest, "files": {**files, "products.jsonl": {"sha256": 7}}},
         f"version {version}: the manifest's checksums are malformed"),
        ({k: v for k, v in manifest.items() if k != "count"}, missing),
        ({**manifest, "count": -1}, missing),
        ({**manifest, "dim": "4"}, missing),
    ]


def test_each_manifest_refusal_word_for_word(tmp_path):
    from indexstore.store import read_manifest

    store = open_store(tmp_path / "index")
    version = write_version(store, make_index())
    path = tmp_path / "index" / "versions" / version / "manifest.json"
    manifest = json.loads(path.read_text())
    for bad, message in _manifest_cases(manifest, version):
        path.write_text(json.dumps(bad))
        with pytest.raises(CorruptIndex) as refused:
            read_manifest(store, version)
        assert str(refused.value) == message
    path.write_text("{not json")
    with pytest.raises(CorruptIndex, match=rf"^version {version}: manifest is not JSON \(Expecting"):
        read_manifest(store, version)
    path.write_text(json.dumps({**manifest, "count": 0, "dim": 0}))  # the lowest counts pass the manifest check
    assert read_manifest(store, version)["count"] == 0


# --------------------------------------------------------------------------- what a version holds, exactly


def test_a_written_version_is_float32_utf8_and_described_in_full(tmp_path):
    from datetime import datetime

    store = open_store(tmp_path / "index")
    index = make_index()
    index.embeddings = index.embeddings.astype(np.float64)  # whatever the caller holds, float32 is stored
    index.products[0]["name"] = "Ünïcode ✓"
    version = write_version(store, index)
    folder = tmp_path / "index" / "versions" / version
    assert "Ünïcode ✓".encode() in (folder / "products.jsonl").read_bytes()  # UTF-8, not \\u escapes
    text = (folder / "manifest.json").read_text()
    manifest = json.loads(text)
    assert text == json.dumps(manifest, indent=2)  # a person reads it during an incident
    assert datetime.fromisoformat(manifest["created"]).utcoffset().total_seconds() == 0
    for name, meta in manifest["files"].items():
        assert meta["bytes"] == (folder / name).stat().st_size
    assert index.manifest == manifest and index.files == {}  # the caller's manifest; no second copy of the matrix
    loaded = read_version(store, version)
    assert loaded.embeddings.dtype == np.float32 and set(loaded.files) == set(manifest["files"])
    local = open_local(store, version)
    assert isinstance(local.embeddings, np.memmap) and local.embeddings.dtype == np.float32


def test_the_pointer_names_the_version_and_its_backbone(tmp_path):
    store = open_store(tmp_path / "index")
    version = write_version(store, make_index(backbone="bb-1"))
    publish(store, version)
    assert json.loads((tmp_path / "index" / "CURRENT").read_text()) == {"version": version, "backbone": "bb-1"}


def test_a_versions_whitening_is_read_back(tmp_path):
    from indexstore.store import WHITENING
    from ranking.whitening import fit_whitening

    fitted = fit_whitening(np.random.default_rng(1).normal(size=(40, 4)), dims=3)
    store = open_store(tmp_path / "index")
    publish(store, write_version(store, make_index(), {WHITENING: fitted.to_bytes()}))
    for loaded in (read_current(store), open_local(store, current_version(store))):
        assert np.array_equal(loaded.whitening().projection, fitted.projection.astype(np.float32))
    assert read_version(store, write_version(store, make_index())).whitening() is None


@pytest.mark.parametrize(("uri", "bucket", "prefix"), [("s3://shop-index/photo/live", "shop-index", "photo/live"),
                                                       ("s3://shop-index", "shop-index", ""),
                                                       ("s3://b/", "b", "")])
def test_an_s3_uri_names_its_bucket_and_prefix(uri, bucket, prefix):
    from indexstore.store import S3Store

    store = open_store(uri)
    assert isinstance(store, S3Store) and (store.bucket, store.prefix) == (bucket, prefix)


def test_an_s3_uri_without_a_bucket_and_other_schemes():
    with pytest.raises(ValueError, match=r"^s3://: no bucket name$"):
        open_store("s3://")
    assert type(open_store("S3://x")).__name__ == "LocalStore"  # only the lowercase scheme is S3


def test_refusals_name_where_the_bad_version_came_from(tmp_path):
    from indexstore.store import read_manifest

    store = open_store(tmp_path / "index")
    publish(store, write_version(store, make_index()))
    long = "v" * 100
    cases = [(lambda: read_manifest(store, long), f"requested version: {'v' * 80!r} is not an index version name"),
             (lambda: rollback(store, to="x"), "rollback target: 'x' is not an index version name"),
             (lambda: store.delete_version("x"), "delete: 'x' is not an index version name")]
    for call, message in cases:
        with pytest.raises(CorruptIndex) as refused:
            call()
        assert str(refused.value) == message
    (tmp_path / "index" / "CURRENT").write_text(json.dumps({"version": "x"}))
    with pytest.raises(CorruptIndex) as refused:
        current_version(store)
    assert str(refused.value) == f"{store.uri}/CURRENT: 'x' is not an index version name"


def test_rollback_goes_to_the_newest_older_version(tmp_path):
    store = open_store(tmp_path / "index")
    versions = []
    for n in (3, 4, 5):
        versions.append(write_version(store, make_index(n)))
        publish(store, versions[-1])
    assert rollback(store) == versions[1] and current_version(store) == versions[1]
    assert rollback(store) == versions[0]


def _rewrite(folder, name: str, data: bytes) -> None:
    """Replace a version's file and its checksum in the manifest, as a careless tool would."""
    import hashlib

    (folder / name).write_bytes(data)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (folder / "manifest.json").write_text(json.dumps(manifest))


def test_a_version_whose_files_disagree_with_its_manifest_is_refused_by_name(tmp_path):
    store = open_store(tmp_path / "index")
    version = write_version(store, make_index(3))
    folder = tmp_path / "index" / "versions" / version
    products = (folder / "products.jsonl").read_bytes()
    _rewrite(folder, "products.jsonl", b"\n".join(products.splitlines()[:2]) + b"\n")  # 2 products, 3 vectors
    for read in (read_version, open_local):
        with pytest.raises(CorruptIndex) as refused:
            read(store, version)
        assert str(refused.value) == f"version {version}: shape (3, 4) does not match manifest"
    _rewrite(folder, "products.jsonl", b"{not json\n")
    with pytest.raises(CorruptIndex, match=rf"^version {version}: unreadable data \("):
        read_version(store, version)


def test_write_and_publish_keeps_five_versions_by_default(tmp_path):
    store = open_store(tmp_path / "index")
    for n in range(7):
        write_and_publish(store, make_index(n + 1))
    assert len(list((tmp_path / "index" / "versions").iterdir())) == 5


def test_files_a_build_already_wrote_are_stored_as_they_are_and_not_kept_in_memory(tmp_path):
    """A build's matrix (a ``RowFile``) and its big files (paths) go to the store unread; only the small files
    given as bytes stay on the written index."""
    from indexstore.store import ANN, ERRORS
    from safeio.rowfile import RowWriter

    index = make_index(5)
    with RowWriter(tmp_path / "merged.npy", 5, 4) as out:
        out.append(index.embeddings)
    graph = tmp_path / "graph.bin"
    graph.write_bytes(b"graph bytes")
    index = IndexData(out.close(), index.products, index.manifest)
    version = write_version(open_store(tmp_path / "index"), index, {ANN: graph, ERRORS: b"line,id\n"})
    folder = tmp_path / "index" / "versions" / version
    assert (folder / "embeddings.npy").read_bytes() == (tmp_path / "merged.npy").read_bytes()
    assert (folder / ANN).read_bytes() == b"graph bytes" and graph.exists()  # copied, the build's own stays
    assert index.files == {ERRORS: b"line,id\n"}
    assert index.manifest["count"] == 5 and index.manifest["dim"] == 4
    loaded = read_version(open_store(tmp_path / "index"), version)
    np.testing.assert_array_equal(loaded.embeddings, np.load(tmp_path / "merged.npy"))
