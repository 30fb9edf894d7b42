"""Index build with real files and a real local HTTP server (catalog/build.py, scripts/build_index.py)."""

from __future__ import annotations

import csv
import shutil

import numpy as np
import pytest

from catalog.build import build_index
from catalog.reader import CatalogError, read_catalog
from indexstore.store import open_store, read_current
from scripts.build_index import main as build_cli
from tests.conftest import DEMO_DIR, demo_image

GOOD = ["10109", "10175", "10664", "11052"]


def write_csv(path, rows, header=("id", "name", "category", "price", "image_url", "colour")):
    with open(path, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(header)
        writer.writerows(rows)
    return path


@pytest.fixture
def messy_catalog(tmp_path, http_server):
    """Good local and remote rows plus one of each kind of bad row."""
    (tmp_path / "images").mkdir()
    for pid in GOOD[:3]:
        shutil.copy(DEMO_DIR / "images" / f"{pid}.jpg", tmp_path / "images" / f"{pid}.jpg")
    (tmp_path / "images" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    remote = http_server.add("/img/11052.jpg", demo_image("11052"))
    rows = [
        ["10109", "Watch", "Watches", "1299.50", "images/10109.jpg", "steel"],
        ["10175", "Shoe", "Casual Shoes", "", "images/10175.jpg", "black"],
        ["10664", "Tee", "Tshirts", "499", "images/10664.jpg", "yellow"],
        ["11052", "Remote", "Tshirts", "", remote, "blue"],
        ["20001", "Missing", "Tshirts", "", "images/nope.jpg", ""],
        ["20002", "Gone", "Tshirts", "", http_server.url + "/img/404.jpg", ""],
        ["10109", "Duplicate", "Watches", "", "images/10109.jpg", ""],
        ["20003", "Broken", "Tshirts", "", "images/broken.jpg", ""],
    ]
    return write_csv(tmp_path / "products.csv", rows)


def test_build_reports_bad_rows_and_indexes_the_rest(messy_catalog, local_embedder, tmp_path, http_server):
    out = tmp_path / "index"
    report = build_index(messy_catalog, out, local_embedder, tmp_path / "cache", progress=False,
                         allow_private_hosts=True)
    assert report.indexed == 4 and report.embedded == 4 and report.downloaded == 1
    problems = {(e.id, e.stage): e.error for e in report.errors}
    assert set(problems) == {("20001", "fetch"), ("20002", "fetch"), ("10109", "catalog"), ("20003", "decode")}
    assert "not found" in problems[("20001", "fetch")]
    assert "HTTP 404" in problems[("20002", "fetch")]
    assert "duplicate id" in problems[("10109", "catalog")]
    assert "truncated" in problems[("20003", "decode")] or "image" in problems[("20003", "decode")]

    index = read_current(open_store(out))
    assert [p["id"] for p in index.products] == GOOD
    assert index.products[0]["price"] == 1299.5 and index.products[1]["price"] is None
    assert index.products[0]["colour"] == "steel"  # extra columns kept
    assert index.embeddings.shape == (4, 1280) and index.embeddings.dtype == np.float32
    assert np.allclose(np.linalg.norm(index.embeddings, axis=1), 1.0, atol=1e-5)
    assert float(index.embeddings[0] @ local_embedder.embed_one(demo_image("10109"))) > 0.9999
    manifest = index.manifest
    assert manifest["backbone"] == local_embedder.backbone_id and manifest["count"] == 4 and manifest["dim"] == 1280
    assert set(manifest["files"]) == {"embeddings.npy", "products.jsonl", "errors.csv", "appearance.npz",
                                      "appearance.npy", "prototypes.npz"}
    # four products are too few to fit a colour projection: the histogram alone orders inside a category
    assert manifest["appearance"]["projection"] is None and manifest["appearance"]["column"] == "colour"
    errors_file = out / "versions" / manifest["version"] / "errors.csv"
    assert len(list(csv.DictReader(errors_file.open()))) == 4


def test_second_build_downloads_and_embeds_nothing(messy_catalog, local_embedder, tmp_path, http_server):
    out, cache = tmp_path / "index", tmp_path / "cache"
    first = build_index(messy_catalog, out, local_embedder, cache, progress=False, allow_private_hosts=True)
    fetched_once = list(http_server.requests)
    second = build_index(messy_catalog, out, local_embedder, cache, progress=False, allow_private_hosts=True)
    assert second.version != first.version
    assert second.downloaded == 0 and second.cache_hits == 1
    assert second.embedded == 0 and second.reused == 4
    assert http_server.requests == fetched_once + ["/img/404.jpg"]  # only the failure is retried


def test_changed_and_added_rows_are_the_only_ones_embedded(messy_catalog, local_embedder, tmp_path):
    out, cache = tmp_path / "index", tmp_path / "cache"
    build_index(messy_catalog, out, local_embedder, cache, progress=False, allow_private_hosts=True)
    shutil.copy(DEMO_DIR / "images" / "11052.jpg", tmp_path / "images" / "10664.jpg")  # changed image
    shutil.copy(DEMO_DIR / "images" / "10140.jpg", tmp_path / "images" / "10140.jpg")
    with open(messy_catalog, "a", newline="") as fh:
        csv.writer(fh).writerow(["10140", "New watch", "Watches", "", "images/10140.jpg", ""])  # added row
    report = build_index(messy_catalog, out, local_embedder, cache, progress=False, allow_private_hosts=True)
    assert report.embedded == 1 and report.reused == 4  # 10664 now has 11052's bytes → reused by content
    assert report.indexed == 5


def test_missing_required_column_fails_before_any_work(tmp_path):
    bad = write_csv(tmp_path / "p.csv", [["1", "x", "y"]], header=("id", "name", "image_url"))
    with pytest.raises(CatalogError, match="missing required column.*category.*price"):
        read_catalog(bad)


def test_cli_local_embedder_and_clear_error(tmp_path, capsys):
    bad = write_csv(tmp_path / "p.csv", [["1", "x"]], header=("id", "name"))
    assert build_cli(["--catalog", str(bad), "--output", str(tmp_path / "i"), "--embedder", "local"]) == 2
    assert "missing required column" in capsys.readouterr().err


def test_path_escape_is_a_row_error(tmp_path, local_embedder):
    (tmp_path / "cat").mkdir()
    (tmp_path / "secret.jpg").write_bytes(demo_image("10109"))
    catalog = write_csv(tmp_path / "cat" / "p.csv", [["1", "x", "y", "", "../secret.jpg", ""],
                                                      ["2", "x", "y", "", "/etc/passwd", ""]])
    report = build_index(catalog, tmp_path / "idx", local_embedder, tmp_path / "cache", progress=False)
    assert report.indexed == 0
    assert all("escapes the catalog folder" in e.error for e in report.errors)


def test_private_hosts_refused_without_the_flag(tmp_path, http_server, local_embedder):
    url = http_server.add("/img/a.jpg", demo_image("10109"))
    catalog = write_csv(tmp_path / "p.csv", [["1", "x", "y", "", url, ""]])
    report = build_index(catalog, tmp_path / "idx", local_embedder, tmp_path / "cache", progress=False)
    assert report.indexed == 0 and "loopback address" in report.errors[0].error
    assert http_server.requests == []  # refused before connecting


def test_symlink_escape_is_a_row_error(tmp_path, local_embedder):
    (tmp_path / "cat" / "images").mkdir(parents=True)
    (tmp_path / "outside.jpg").write_bytes(demo_image("10109"))
    (tmp_path / "cat" / "images" / "link.jpg").symlink_to(tmp_path / "outside.jpg")
    catalog = write_csv(tmp_path / "cat" / "p.csv", [["1", "x", "y", "", "images/link.jpg", ""],
                                                      ["2", "x", "y", "", "images/a\0.jpg", ""]])
    report = build_index(catalog, tmp_path / "idx", local_embedder, tmp_path / "cache", progress=False)
    assert report.indexed == 0
    assert "escapes the catalog folder" in report.errors[0].error and "NUL" in report.errors[1].error


class OtherBackbone:
    """The same network under another backbone id: what a changed model or preprocessing looks like."""

    def __init__(self, embedder) -> None:
        self.inner, self.backbone_id = embedder, embedder.backbone_id + "-v2"

    def __getattr__(self, name):
        return getattr(self.inner, name)


def test_a_new_backbone_embeds_everything_again(messy_catalog, local_embedder, tmp_path):
    out, cache = tmp_path / "index", tmp_path / "cache"
    build_index(messy_catalog, out, local_embedder, cache, progress=False, allow_private_hosts=True)
    other = OtherBackbone(local_embedder)
    report = build_index(messy_catalog, out, other, cache, progress=False, allow_private_hosts=True)
    # Neither the published version's vectors nor the vector cache of the old backbone are used.
    assert (report.embedded, report.reused, report.resumed, report.indexed) == (4, 0, 0, 4)
    assert read_current(open_store(out)).manifest["backbone"] == other.backbone_id
    again = build_index(messy_catalog, out, other, cache, progress=False, allow_private_hosts=True)
    assert (again.embedded, again.reused) == (0, 4)


def test_a_changed_image_gets_its_new_vector(messy_catalog, local_embedder, tmp_path):
    out, cache = tmp_path / "index", tmp_path / "cache"
    build_index(messy_catalog, out, local_embedder, cache, progress=False, allow_private_hosts=True)
    shutil.copy(DEMO_DIR / "images" / "10140.jpg", tmp_path / "images" / "10664.jpg")  # bytes never seen before
    report = build_index(messy_catalog, out, local_embedder, cache, progress=False, allow_private_hosts=True)
    assert (report.embedded, report.reused) == (1, 3)
    index = read_current(open_store(out))
    row = [p["id"] for p in index.products].index("10664")
    assert float(index.embeddings[row] @ local_embedder.embed_one(demo_image("10140"))) > 0.9999
    assert float(index.embeddings[row] @ local_embedder.embed_one(demo_image("10664"))) < 0.99
