"""A build in shards (catalog/shards.py, catalog/build.py): each shard written when done, a build that dies
resumes from its finished shards, a shard read back is checked, the merge equals a build in one go."""

from __future__ import annotations

import hashlib
import json
import shutil

import numpy as np
import pytest

from catalog.build import build_index
from catalog.reader import RowError
from catalog.shards import MAX_SHARD_ROWS, ShardError, ShardResult, ShardStore, build_id, spool
from indexstore.store import LocalStore, open_store, read_current
from tests.conftest import DEMO_DIR
from tests.embedders import HashEmbedder


@pytest.fixture
def catalog(tmp_path):
    return small_catalog(tmp_path)


def small_catalog(tmp_path):
    """12 real demo products, one with a missing image."""
    lines = (DEMO_DIR / "products.csv").read_text().splitlines()
    folder = tmp_path / "shop"
    shutil.copytree(DEMO_DIR / "images", folder / "images")
    rows = lines[1:12] + ["99999,Gone,Watches,,images/nope.jpg,Women,Accessories,Watches,Watches,Steel,,,"]
    (folder / "products.csv").write_text("\n".join([lines[0], *rows]) + "\n")
    return folder / "products.csv"


def build(catalog, out, embedder, tmp_path, **kw):
    return build_index(catalog, out, embedder, tmp_path / "cache", progress=False, shard_rows=4,
                       vector_cache=tmp_path / kw.pop("vectors", "vectors"), **kw)


def rows_of(n: int) -> list[dict]:
    return [{"id": str(i), "name": f"Ünïcode {i}", "price": None if i % 2 else 1.5, "line": i + 2} for i in range(n)]


@pytest.mark.parametrize(("shard_rows", "ok"), [(0, False), (1, True), (MAX_SHARD_ROWS, True),
                                                (MAX_SHARD_ROWS + 1, False)])
def test_the_shard_size_has_limits_on_both_sides(tmp_path, shard_rows, ok):
    if ok:
        assert [s.count for s in spool(rows_of(3), tmp_path, shard_rows)] == ([1, 1, 1] if shard_rows == 1 else [3])
    else:
        with pytest.raises(ValueError, match="shard_rows"):
            spool(rows_of(3), tmp_path, shard_rows)


@pytest.mark.parametrize(("n", "counts"), [(9, [4, 4, 1]), (8, [4, 4]), (7, [4, 3]), (0, [])])
def test_shards_spool_every_row_once_in_order(tmp_path, n, counts):
    """The catalog, streamed, is cut into shard files as it is read; each reads back its rows as they were."""
    pending = spool(iter(rows_of(n)), tmp_path, 4)
    assert [s.count for s in pending] == counts and [s.index for s in pending] == list(range(len(counts)))
    assert [row for s in pending for row in s.rows()] == rows_of(n)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"rows-{i:05d}.jsonl" for i in range(len(counts))]


def test_the_build_id_follows_the_catalog_the_model_the_colour_descriptor_and_the_shard_size(tmp_path, monkeypatch):
    csv = tmp_path / "p.csv"
    csv.write_text("id\n1\n")
    first = build_id(csv, "a", 4)
    assert first == build_id(csv, "a", 4)
    assert len({first, build_id(csv, "b", 4), build_id(csv, "a", 5)}) == 3
    monkeypatch.setattr("catalog.shards.DESCRIPTOR", "hsv-other-v0")  # shards of another histogram: not resumed
    assert build_id(csv, "a", 4) != first
    monkeypatch.undo()
    csv.write_text("id\n2\n")
    assert build_id(csv, "a", 4) != first


def shard(n=3, dim=4) -> ShardResult:
    rows = [{"id": str(i), "line": i + 2} for i in range(n)]
    return ShardResult(rows, np.arange(n * dim, dtype=np.float32).reshape(n, dim), np.ones((n, 5), np.float32),
                       [RowError(9, "x", "u", "fetch", "gone")], embedded=n, downloaded=1)


def test_a_shard_round_trips_and_counts_as_finished_only_with_its_json(tmp_path):
    store = LocalStore(tmp_path)
    shards = ShardStore(store, "b1")
    assert shards.finished(0) is None
    shards.save(0, shard())
    assert shards.finished(0) == (3, 4)
    got = shards.load(0)
    assert got.rows == shard().rows and np.array_equal(got.vectors, shard().vectors)
    assert got.errors == shard().errors and (got.embedded, got.downloaded) == (3, 1)
    store.delete("builds/b1/shard-00000.json")  # died after the arrays, before the mark
    assert shards.finished(0) is None


@pytest.mark.parametrize("damage", ["npz", "json-format", "json-garbage", "rows", "error-line", "width"])
def test_a_damaged_shard_is_redone_never_trusted(tmp_path, damage):
    store = LocalStore(tmp_path)
    shards = ShardStore(store, "b1")
    shards.save(0, shard())
    meta_key, npz_key = "builds/b1/shard-00000.json", "builds/b1/shard-00000.npz"
    meta = json.loads(store.get(meta_key))
    if damage == "npz":
        store.put(npz_key, store.get(npz_key)[:-10])
    elif damage == "json-format":
        store.put(meta_key, json.dumps(meta | {"format": 99}).encode())
    elif damage == "json-garbage":
        store.put(meta_key, b"{not json")
    elif damage == "rows":
        store.put(meta_key, json.dumps(meta | {"rows": meta["rows"][:2]}).encode())
    elif damage == "error-line":
        store.put(meta_key, json.dumps(meta | {"errors": [{**meta["errors"][0], "line": "9"}]}).encode())
    else:
        store.put(meta_key, json.dumps(meta | {"dim": 5}).encode())
    if shards.finished(0) is not None:  # the JSON looks whole: loading it finds the damage and forgets it
        with pytest.raises(ShardError, match="redone on the next run"):
            shards.load(0)
    assert shards.finished(0) is None


def test_a_build_in_shards_equals_one_in_one_shard_and_leaves_no_shards(catalog, tmp_path):
    many = build(catalog, tmp_path / "many", HashEmbedder(), tmp_path, vectors="v1")
    one = build_index(catalog, tmp_path / "one", HashEmbedder(), tmp_path / "cache", progress=False,
                      vector_cache=tmp_path / "v2")
    a, b = read_current(LocalStore(tmp_path / "many")), read_current(LocalStore(tmp_path / "one"))
    assert (many.shards, one.shards, many.indexed) == (3, 1, 11)
    assert [p["id"] for p in a.products] == [p["id"] for p in b.products]
    np.testing.assert_allclose(a.embeddings, b.embeddings, atol=1e-6)
    assert a.manifest["calibration"] == b.manifest["calibration"]
    assert [(e.id, e.stage) for e in many.errors] == [("99999", "fetch")]
    assert list((tmp_path / "many" / "builds").iterdir()) == []  # its shards went with the publish


def test_a_killed_build_resumes_from_its_finished_shards(catalog, tmp_path):
    out = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        build(catalog, out, HashEmbedder(die_after=6), tmp_path, vectors="v1")  # dies inside shard 1
    assert sorted(p.name for p in (out / "builds").glob("*/*.json")) == ["shard-00000.json"]
    assert not (out / "CURRENT").exists()
    again = HashEmbedder()
    report = build(catalog, out, again, tmp_path, vectors="v2")  # a fresh vector cache: only shards count
    assert (report.shards, report.shards_resumed, report.indexed) == (3, 1, 11)
    assert again.embedded == 7 and report.embedded == 11  # shard 0's four came from the store, not the model
    clean = build(catalog, tmp_path / "clean", HashEmbedder(), tmp_path, vectors="v3")
    np.testing.assert_allclose(read_current(LocalStore(out)).embeddings,
                               read_current(LocalStore(tmp_path / "clean")).embeddings, atol=1e-6)
    assert clean.shards_resumed == 0


def test_a_changed_catalog_does_not_resume_another_catalogs_shards(catalog, tmp_path):
    out = tmp_path / "index"
    with pytest.raises(KeyboardInterrupt):
        build(catalog, out, HashEmbedder(die_after=6), tmp_path, vectors="v1")
    catalog.write_text(catalog.read_text().replace("Fastrack", "Fastrack New"))
    report = build(catalog, out, HashEmbedder(), tmp_path, vectors="v2")
    assert report.shards_resumed == 0 and report.embedded == 11


@pytest.mark.parametrize(("shard_rows", "ok"), [("0", False), ("1", True), (str(MAX_SHARD_ROWS + 1), False)])
def test_the_command_line_takes_shard_sizes_within_the_limits_only(catalog, tmp_path, shard_rows, ok, capsys):
    from scripts.build_index import main as build_cli

    args = ["--catalog", str(catalog), "--output", str(tmp_path / "out"), "--embedder", "local",
            "--shard-rows", shard_rows, "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    if ok:
        assert build_cli(args) == 0
        assert "12 shard(s), 0 finished by an earlier run" in capsys.readouterr().out
    else:
        with pytest.raises(SystemExit) as stop:
            build_cli(args)
        assert stop.value.code == 2 and "--shard-rows must be 1 to 1,048,576" in capsys.readouterr().err


def test_the_build_takes_each_colour_from_the_model_and_decodes_no_photo_itself(catalog, tmp_path, local_embedder,
                                                                               monkeypatch):
    import catalog.build as build_module
    from catalog.vector_cache import VectorCache
    from ranking.appearance import colour_histogram

    decoded = []
    monkeypatch.setattr(build_module, "colour_histogram_or_none", lambda data, _: decoded.append(data))
    first = build_index(catalog, tmp_path / "a", local_embedder, tmp_path / "cache", progress=False,
                        vector_cache=tmp_path / "v")
    again = build_index(catalog, tmp_path / "b", local_embedder, tmp_path / "cache", progress=False,
                        vector_cache=tmp_path / "v")  # every vector (and colour) from the vector cache
    assert (first.embedded, again.resumed, decoded) == (11, 11, [])
    photo = (catalog.parent / "images" / "10109.jpg").read_bytes()
    kept = VectorCache(tmp_path / "v", local_embedder.backbone_id).get_colour(hashlib.sha256(photo).hexdigest())
    np.testing.assert_allclose(kept, colour_histogram(photo, 40_000_000), atol=1e-6)  # the build's own descriptor
    no_colour = build(catalog, tmp_path / "c", HashEmbedder(), tmp_path, vectors="v2")
    assert no_colour.embedded == 11 and len(decoded) == 11  # a model that gives no colour: decoded here


def craft(store: LocalStore, meta: object, arrays: dict | None = None) -> None:
    """Shard 0 of build b1 written by hand: ``arrays`` as its npz (its checksum right), ``meta`` as its JSON
    (``npz_sha256`` filled in for a dict)."""
    import io

    buf = io.BytesIO()
    np.savez(buf, **(arrays if arrays is not None else {"vectors": shard().vectors, "hists": shard().hists}))
    data = buf.getvalue()
    store.put("builds/b1/shard-00000.npz", data)
    if isinstance(meta, dict):
        meta = {"npz_sha256": hashlib.sha256(data).hexdigest(), **meta}
    store.put("builds/b1/shard-00000.json", json.dumps(meta).encode())


GOOD_META = {"format": 1, "dim": 4, "rows": shard().rows, "errors": [shard().errors[0].as_dict()],
             "counts": {"embedded": 3, "reused": 0, "resumed": 0, "downloaded": 1, "cache_hits": 0}}
V, H = shard().vectors, shard().hists


@pytest.mark.parametrize(("meta", "arrays", "reason"), [
    (GOOD_META, None, None),
    ([1, 2], None, "not a shard of this format"),
    (GOOD_META | {"format": 2}, None, "not a shard of this format"),
    (GOOD_META | {"rows": "3 rows"}, None, "malformed rows, errors or counts"),
    (GOOD_META | {"rows": [{"id": "0"}, {"id": "1"}, "row"]}, None, "malformed rows, errors or counts"),
    (GOOD_META | {"errors": {}}, None, "malformed rows, errors or counts"),
    (GOOD_META | {"counts": [3]}, None, "malformed rows, errors or counts"),
    (GOOD_META | {"counts": {"embedded": 3}}, None, "malformed: 'reused'"),
    (GOOD_META | {"errors": [{**GOOD_META["errors"][0], "line": "9"}]}, None, "malformed row error"),
    (GOOD_META | {"errors": [{**GOOD_META["errors"][0], "stage": None}]}, None, "malformed row error"),
    (GOOD_META | {"errors": [{**GOOD_META["errors"][0], "id": 7}]}, None, "malformed row error"),
    (GOOD_META, {"vectors": V.astype(np.float64), "hists": H}, "arrays do not match the rows"),
    (GOOD_META, {"vectors": V, "hists": H.astype(np.float64)}, "arrays do not match the rows"),
    (GOOD_META, {"vectors": V.ravel(), "hists": H}, "arrays do not match the rows"),
    (GOOD_META, {"vectors": V, "hists": H.ravel()}, "arrays do not match the rows"),
    (GOOD_META, {"vectors": V[:2], "hists": H}, "arrays do not match the rows"),
    (GOOD_META, {"vectors": V, "hists": H[:2]}, "arrays do not match the rows"),
    (GOOD_META, {"vectors": V[:, 0], "hists": H}, "arrays do not match the rows"),  # one number a row
    (GOOD_META, {"vectors": V, "hists": H[:, 0]}, "arrays do not match the rows"),
    (GOOD_META | {"dim": 5}, None, "the vectors' width is not the shard's dim"),
    (GOOD_META, {"vectors": V, "hists": np.array([{"a": 1}] * 3, dtype=object)}, "Object arrays cannot be loaded"),
    (GOOD_META, {"vectors": V}, "malformed: "),
])
def test_a_shard_read_back_is_checked_field_by_field(tmp_path, meta, arrays, reason):
    store = LocalStore(tmp_path)
    craft(store, meta, arrays)
    shards = ShardStore(store, "b1")
    if reason is None:
        assert shards.load(0).rows == shard().rows
        return
    with pytest.raises(ShardError) as caught:
        shards.load(0)
    assert f"shard 0 of builds/b1 is unreadable ({reason}" in str(caught.value)
    assert shards.finished(0) is None  # its JSON is gone: the next run redoes the shard


def test_a_checksum_mismatch_is_named(tmp_path):
    store = LocalStore(tmp_path)
    craft(store, GOOD_META)
    store.put("builds/b1/shard-00000.npz", store.get("builds/b1/shard-00000.npz") + b"x")
    with pytest.raises(ShardError, match=r"unreadable \(checksum mismatch\)"):
        ShardStore(store, "b1").load(0)


@pytest.mark.parametrize("meta", [GOOD_META | {"format": 2}, GOOD_META | {"rows": {}}, GOOD_META | {"dim": "4"},
                                  GOOD_META | {"dim": None}, {"format": 1}])
def test_a_shard_whose_json_is_not_a_finished_shards_is_not_finished(tmp_path, meta, caplog):
    store = LocalStore(tmp_path)
    craft(store, meta)
    assert ShardStore(store, "b1").finished(0) is None
    assert "shard 0 of builds/b1 is unreadable, redoing it: " in caplog.text
    if meta.get("format") == 2:
        assert caplog.text.rstrip().endswith("redoing it: not a shard of this format")
    assert caplog.records[-1].getMessage().split("redoing it: ")[1] not in ("", "None")


def test_a_shard_is_stored_as_float32_whatever_it_was_given(tmp_path):
    shards = ShardStore(LocalStore(tmp_path), "b1")
    given = shard()
    given.vectors, given.hists = given.vectors.astype(np.float64), given.hists.astype(np.float64)
    shards.save(0, given)
    got = shards.load(0)
    assert got.vectors.dtype == got.hists.dtype == np.float32 and np.array_equal(got.vectors, shard().vectors)


def test_the_build_id_is_24_hex_digits_of_the_whole_catalog(tmp_path):
    csv = tmp_path / "p.csv"
    csv.write_bytes(b"x" * (9 << 20))  # more than one read of the file
    first = build_id(csv, "a", 4)
    assert len(first) == 24 and int(first, 16) >= 0
    csv.write_bytes(b"x" * (9 << 20) + b"y")  # a change past the first read
    assert build_id(csv, "a", 4) != first


def test_abandoned_builds_are_listed_and_deleted_by_name_only(tmp_path, capsys):
    """``manage_index.py URI builds``: the builds with shards (a folder that is not a build's name is not one),
    ``--delete`` removes the named build's shards and nothing else, an unknown name is refused in words."""
    from catalog.shards import list_builds
    from scripts.manage_index import main

    store = open_store(tmp_path / "index")
    first, second = "a" * 24, "0123456789abcdef01234567"
    ShardStore(store, first).save(0, shard())
    ShardStore(store, second).save(3, shard())
    (tmp_path / "index" / "builds" / "not-a-build").mkdir()
    assert list_builds(store) == [second, first]
    assert main([str(tmp_path / "index"), "builds"]) == 0
    assert capsys.readouterr().out.split() == [second, first]
    assert main([str(tmp_path / "index"), "builds", "--delete", "../versions"]) == 2
    assert "no build '../versions'" in capsys.readouterr().err and list_builds(store) == [second, first]
    assert main([str(tmp_path / "index"), "builds", "--delete", first]) == 0
    assert capsys.readouterr().out == f"deleted build {first}\n"
    assert list_builds(store) == [second] and ShardStore(store, second).finished(3) == (3, 4)
    assert main([str(tmp_path / "index"), "builds", "--delete", second]) == 0
    capsys.readouterr()
    assert main([str(tmp_path / "index"), "builds"]) == 0
    assert capsys.readouterr().out.startswith("no build has shards in ")


def test_a_build_that_dies_in_the_keypoint_pass_publishes_nothing_and_resumes_every_shard(catalog, tmp_path,
                                                                                        monkeypatch):
    """--local-features runs after the shards are merged: dying there leaves no version and every shard done."""
    import catalog.build as build_module
    from indexstore.store import LOCAL_FILES

    out = tmp_path / "index"
    real = build_module.write_local_features

    def dies(*args, **kwargs):
        real(*args, **kwargs)  # the files are written, then the process dies before the version
        raise KeyboardInterrupt

    monkeypatch.setattr(build_module, "write_local_features", dies)
    with pytest.raises(KeyboardInterrupt):
        build(catalog, out, HashEmbedder(), tmp_path, vectors="v1", local_features=True)
    assert not (out / "CURRENT").exists() and len(list((out / "builds").glob("*/*.json"))) == 3
    monkeypatch.setattr(build_module, "write_local_features", real)
    again = HashEmbedder()
    report = build(catalog, out, again, tmp_path, vectors="v2", local_features=True)
    assert (report.shards_resumed, again.embedded) == (3, 0)
    version = read_current(LocalStore(out))
    assert set(LOCAL_FILES) <= set(version.manifest["files"]) and version.manifest["local_features"]["keypoints"]
    plain = build(catalog, tmp_path / "plain", HashEmbedder(), tmp_path, vectors="v3")
    assert plain.indexed == 11 and "local_features" not in read_current(LocalStore(tmp_path / "plain")).manifest
