"""Versioned publish, live reload, outages and rollback — against a REAL S3 API server (moto's standalone
server in its own process, on loopback) and against a local folder."""

from __future__ import annotations

import csv
import os
import re
import signal
import subprocess
import sys
import threading
import time

import boto3
import numpy as np
import pytest
import requests

from catalog.build import build_index
from indexstore.store import (
    CorruptIndex,
    IndexData,
    IndexNotFound,
    current_version,
    open_store,
    publish,
    read_current,
    write_version,
)
from scripts.manage_index import main as manage_cli
from search.milvus import MilvusSettings
from tests.conftest import DEMO_CSV, REPO, demo_image, free_port

pytestmark = pytest.mark.integration
DEMO_ROWS = list(csv.DictReader(DEMO_CSV.open()))


class MotoServer:
    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            try:
                requests.get(self.url, timeout=0.5)
                return
            except requests.RequestException:
                time.sleep(0.1)
        raise TimeoutError("moto server did not start")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)


@pytest.fixture
def s3(monkeypatch):
    server = MotoServer()
    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": server.url}
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    boto3.client("s3").create_bucket(Bucket="shop")
    server.env = env
    yield server
    server.stop()


@pytest.fixture(params=["local", "s3"])
def index_uri(request, tmp_path):
    if request.param == "s3":
        request.getfixturevalue("s3")
        return "s3://shop/indexes/demo"
    return str(tmp_path / "index")


def write_catalog(folder, rows) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images").mkdir(exist_ok=True)
    with open(folder / "products.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["id", "name", "category", "price", "image_url"])
        writer.writeheader()
        for row in rows:
            (folder / "images" / f"{row['id']}.jpg").write_bytes(demo_image(row["id"]))
            writer.writerow({k: row[k] for k in writer.fieldnames})
    return folder / "products.csv"


def build(catalog, uri, embedder, tmp_path, **kw):
    return build_index(catalog, uri, embedder, tmp_path / "cache", progress=False, **kw)


def gateway_env(uri, torchserve, extra=None):
    env = {"INDEX_URI": uri, "TORCHSERVE_URL": torchserve.url, "INDEX_POLL_S": "0.3", "READY_CACHE_S": "0"}
    env.update({k: v for k, v in os.environ.items() if k.startswith("AWS_")})
    env.update(extra or {})
    return env


def ready(gw) -> dict:
    return requests.get(f"{gw.admin_url}/readyz", timeout=10).json()


def wait_for(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)
    return False


def test_swap_to_new_version_under_load_with_zero_failures(index_uri, tmp_path, local_embedder, torchserve,
                                                           start_gateway):
    swap_under_load(index_uri, tmp_path, local_embedder, torchserve, start_gateway)


@pytest.mark.parametrize("backend", ["ann", "milvus"])
def test_swap_under_load_on_every_search_backend(backend, tmp_path, local_embedder, torchserve, start_gateway):
    """The same swap with the in-process ANN (a graph file per version) and with Milvus Lite (a collection per
    version; tests/test_milvus.py checks the alias and the drop)."""
    build_kw: dict = {"ann": "always" if backend == "ann" else "never"}
    extra = {"SEARCH_BACKEND": backend}
    if backend == "milvus":  # one Milvus Lite server on loopback for both the build (it fills) and the gateway
        from milvus_lite.server_manager import server_manager_instance

        uri = server_manager_instance.start_and_get_uri(str(tmp_path / "milvus.db"))
        extra |= {"MILVUS_URI": uri, "MILVUS_INDEX_TYPE": "FLAT"}
        build_kw["milvus"] = MilvusSettings(uri, index_type="FLAT")
    try:
        swap_under_load(str(tmp_path / "index"), tmp_path, local_embedder, torchserve, start_gateway, extra,
                        **build_kw)
    finally:
        if backend == "milvus":
            server_manager_instance.release_server(str(tmp_path / "milvus.db"))


def swap_under_load(index_uri, tmp_path, local_embedder, torchserve, start_gateway, extra=None, **build_kw):
    """Three clients query without pause while a new version is built and published: no request fails,
    both versions answer, and the new product is found afterwards."""
    catalog = write_catalog(tmp_path / "cat", DEMO_ROWS[:30])
    first = build(catalog, index_uri, local_embedder, tmp_path, **build_kw)
    gw = start_gateway(**gateway_env(index_uri, torchserve, extra))
    assert ready(gw)["index_version"] == first.version and ready(gw)["ready"]
    assert ready(gw)["search_backend"] == (extra or {}).get("SEARCH_BACKEND", "exact")

    failures, answered, versions, stop = [], [0], set(), threading.Event()

    def client_loop():
        query = demo_image(DEMO_ROWS[40]["id"])
        deadline = time.monotonic() + 60  # bounded even if the swap never happens
        while not stop.is_set() and time.monotonic() < deadline:
            for resp in (requests.get(f"{gw.url}/api/products/{DEMO_ROWS[0]['id']}/similar?threshold=0", timeout=30),
                         requests.post(f"{gw.url}/api/search", files={"file": ("q.jpg", query)},
                                       data={"threshold": "0"}, timeout=30)):
                answered[0] += 1
                if resp.status_code != 200:
                    failures.append((resp.status_code, resp.text[:200]))
                else:
                    versions.add(resp.json()["index_version"])

    threads = [threading.Thread(target=client_loop) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.0)
        write_catalog(tmp_path / "cat", DEMO_ROWS[:30] + DEMO_ROWS[40:45])  # five new products
        second = build(catalog, index_uri, local_embedder, tmp_path, **build_kw)
        assert second.embedded == 5 and second.reused == 30
        assert wait_for(lambda: ready(gw)["index_version"] == second.version)
        time.sleep(1.0)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert failures == [] and answered[0] > 10
    assert versions == {first.version, second.version}
    top = requests.post(f"{gw.url}/api/search", files={"file": ("q.jpg", demo_image(DEMO_ROWS[40]["id"]))},
                        timeout=30).json()["results"][0]
    assert top["id"] == DEMO_ROWS[40]["id"]  # the new product is searchable


class FailingStore:
    """Wraps a real store and dies after ``n`` uploads, like a build killed mid-upload."""

    def __init__(self, store, n: int) -> None:
        self.store, self.n = store, n
        self.uri = store.uri

    def _die_at_zero(self):
        if self.n == 0:
            raise KeyboardInterrupt("killed mid-upload")
        self.n -= 1

    def put(self, key, data):
        self._die_at_zero()
        self.store.put(key, data)

    def put_file(self, key, path):
        self._die_at_zero()
        self.store.put_file(key, path)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_build_killed_mid_upload_leaves_published_version(index_uri, tmp_path, local_embedder):
    catalog = write_catalog(tmp_path / "cat", DEMO_ROWS[:12])
    first = build(catalog, index_uri, local_embedder, tmp_path)
    store = open_store(index_uri)
    published = read_current(store)
    for n in range(5):  # die before/after each file of the new version, or at the pointer
        index = IndexData(published.embeddings[:5], published.products[:5], {"backbone": published.backbone_id})
        with pytest.raises(KeyboardInterrupt):
            failing = FailingStore(store, n)
            publish(failing, write_version(failing, index, {"errors.csv": b""}))
        after = read_current(store)
        assert after.version == first.version and after.files == published.files
    # A later real build still works and cleans up the leftovers of the killed ones.
    second = build(catalog, index_uri, local_embedder, tmp_path, keep=1)
    assert current_version(store) == second.version and store.list_versions() == [second.version]


def test_kill_minus_9_build_process_then_rerun(index_uri, tmp_path):
    """kill -9 in the middle of embedding: the published version stays intact, and the re-run
    finishes without embedding again what the killed run had finished."""
    catalog = write_catalog(tmp_path / "cat", DEMO_ROWS[:40])
    cmd = [sys.executable, "scripts/build_index.py", "--catalog", str(catalog), "--output", index_uri,
           "--embedder", "local", "--cache-dir", str(tmp_path / "cache"), "--no-progress"]
    assert subprocess.run(cmd, cwd=REPO, capture_output=True, timeout=300).returncode == 0
    store = open_store(index_uri)
    before = read_current(store)
    write_catalog(tmp_path / "cat", DEMO_ROWS[:240])
    vectors = tmp_path / "vectors"

    def kept() -> int:  # the vector files (each has its colour histogram beside it)
        return sum(p.name.count(".") == 1 for p in vectors.rglob("*.npy"))  # <sha>.npy, not <sha>.<descriptor>.npy

    done_before = kept()
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert wait_for(lambda: kept() > done_before, timeout=120)
    proc.send_signal(signal.SIGKILL)
    proc.wait(30)
    finished = kept() - done_before
    assert 0 < finished < 200, "the kill must land mid-build"
    assert read_current(store).files == before.files  # published version untouched
    rerun = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    counts = dict(re.findall(r"(\d+) (embedded|reused|from the vector cache)", rerun.stdout)[i][::-1]
                  for i in range(3))
    assert int(counts["reused"]) == 40 and int(counts["from the vector cache"]) >= finished
    assert int(counts["embedded"]) == 200 - int(counts["from the vector cache"])
    assert read_current(store).manifest["count"] == 240


def test_corrupt_new_version_is_refused_and_old_one_served(index_uri, tmp_path, local_embedder, torchserve,
                                                           start_gateway):
    catalog = write_catalog(tmp_path / "cat", DEMO_ROWS[:12])
    first = build(catalog, index_uri, local_embedder, tmp_path)
    gw = start_gateway(**gateway_env(index_uri, torchserve))
    store = open_store(index_uri)
    data = read_current(store)
    version = write_version(store, IndexData(data.embeddings[:6], data.products[:6], {"backbone": data.backbone_id}))
    store.put(f"versions/{version}/products.jsonl", b'{"id": "tampered"}\n' * 6)  # corrupted object
    publish(store, version)
    with pytest.raises(CorruptIndex, match="checksum mismatch"):
        read_current(store)
    assert wait_for(lambda: "checksum mismatch" in (ready(gw).get("index_error") or ""))
    state = ready(gw)
    assert state["index_version"] == first.version and state["ready"] and state["products"] == 12
    resp = requests.get(f"{gw.url}/api/products/{DEMO_ROWS[0]['id']}/similar", timeout=10)
    assert resp.status_code == 200 and resp.json()["index_version"] == first.version


def test_s3_outage_keeps_serving_and_restart_uses_local_copy(s3, tmp_path, local_embedder, torchserve,
                                                             start_gateway):
    uri = "s3://shop/indexes/demo"
    catalog = write_catalog(tmp_path / "cat", DEMO_ROWS[:12])
    first = build(catalog, uri, local_embedder, tmp_path)
    env = gateway_env(uri, torchserve, {"INDEX_CACHE_DIR": str(tmp_path / "copy")})
    gw = start_gateway(**env)
    assert ready(gw)["index_version"] == first.version
    s3.stop()
    assert wait_for(lambda: ready(gw).get("index_error") is not None)
    query = {"files": {"file": ("q.jpg", demo_image(DEMO_ROWS[3]["id"]))}, "data": {"threshold": "0"}}
    resp = requests.post(f"{gw.url}/api/search", timeout=30, **query)
    assert resp.status_code == 200 and resp.json()["results"][0]["id"] == DEMO_ROWS[3]["id"]
    gw.stop()
    restarted = start_gateway(**env)  # S3 still down
    state = ready(restarted)
    assert state["ready"] and state["index_cached"] and state["index_version"] == first.version
    assert "cached copy" in state["reason"]
    resp = requests.post(f"{restarted.url}/api/search", timeout=30, **query)
    assert resp.status_code == 200 and resp.json()["index_version"] == first.version


def test_rollback_repoints_and_gateway_follows(index_uri, tmp_path, local_embedder, torchserve, start_gateway,
                                               capsys):
    catalog = write_catalog(tmp_path / "cat", DEMO_ROWS[:10])
    first = build(catalog, index_uri, local_embedder, tmp_path)
    write_catalog(tmp_path / "cat", DEMO_ROWS[:14])
    second = build(catalog, index_uri, local_embedder, tmp_path)
    gw = start_gateway(**gateway_env(index_uri, torchserve))
    assert ready(gw)["index_version"] == second.version
    assert manage_cli([index_uri, "list"]) == 0
    listing = capsys.readouterr().out
    assert f"* {second.version}" in listing and f"  {first.version}" in listing
    assert manage_cli([index_uri, "rollback"]) == 0
    assert current_version(open_store(index_uri)) == first.version
    assert wait_for(lambda: ready(gw)["index_version"] == first.version)
    assert ready(gw)["products"] == 10
    assert manage_cli([index_uri, "rollback", "--to", "20200101T000000000000Z-000000"]) == 2
    assert "not found" in capsys.readouterr().err
    assert manage_cli([index_uri, "rollback", "--to", "no-such-version"]) == 2
    assert "not an index version name" in capsys.readouterr().err
    assert manage_cli([index_uri, "rollback", "--to", second.version]) == 0
    assert wait_for(lambda: ready(gw)["index_version"] == second.version)


@pytest.mark.parametrize("objects", [1000, 1001])
def test_s3_delete_removes_every_page_of_a_version(s3, objects):
    """S3 lists 1,000 keys per page: a version of exactly one page and of one key more are both deleted."""
    from concurrent.futures import ThreadPoolExecutor

    store = open_store("s3://shop/indexes/big")
    version = "20260101T000000000000Z-abcdef"
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda i: store.put(f"versions/{version}/part-{i:05d}", b"x"), range(objects)))
    store.put("versions/20260102T000000000000Z-abcdef/manifest.json", b"{}")  # another version stays
    store.delete_version(version)
    left = boto3.client("s3").list_objects_v2(Bucket="shop", Prefix="indexes/big/")
    assert [o["Key"] for o in left.get("Contents", [])] == [
        "indexes/big/versions/20260102T000000000000Z-abcdef/manifest.json"]


PART = 5 * 1024 * 1024  # S3's smallest part (moto enforces it too)


def _etag(key: str) -> str:
    return boto3.client("s3").head_object(Bucket="shop", Key=key)["ETag"].strip('"')


def test_a_file_goes_in_parts_from_the_part_size_and_round_trips(s3, tmp_path):
    """boto3's transfer manager: a file of one byte under the part size is one PUT, one of exactly the part size
    is a multipart upload (its ETag ends in -<parts>), and 2.4 parts are 3 parts; each comes back whole."""
    from indexstore.store import S3Store

    store = S3Store("shop", "indexes/parts", part_bytes=PART)
    for size, parts in ((PART - 1, None), (PART, 1), (int(PART * 2.4), 3)):
        data = os.urandom(size)
        (tmp_path / "up").write_bytes(data)
        store.put_file("versions/v/embeddings.npy", tmp_path / "up")
        etag = _etag("indexes/parts/versions/v/embeddings.npy")
        assert (etag.endswith(f"-{parts}") if parts else "-" not in etag), (size, etag)
        store.get_file("versions/v/embeddings.npy", tmp_path / "down")
        assert (tmp_path / "down").read_bytes() == data


def test_an_upload_that_dies_after_a_part_never_becomes_visible(s3, tmp_path):
    from botocore.exceptions import EndpointConnectionError

    from indexstore.store import S3Store, StoreUnavailable

    store = S3Store("shop", "indexes/parts", part_bytes=PART)
    sent = []

    def second_part_fails(**kwargs):
        sent.append(kwargs.get("params", {}).get("PartNumber"))
        if len(sent) == 2:  # the network goes away mid-upload
            raise EndpointConnectionError(endpoint_url=s3.url)

    store.client.meta.events.register("before-call.s3.UploadPart", second_part_fails)
    (tmp_path / "up").write_bytes(os.urandom(3 * PART))
    with pytest.raises(StoreUnavailable, match="S3 unreachable"):
        store.put_file("versions/v/embeddings.npy", tmp_path / "up")
    client = boto3.client("s3")
    assert "Contents" not in client.list_objects_v2(Bucket="shop", Prefix="indexes/parts/")  # nothing visible
    assert not client.list_multipart_uploads(Bucket="shop").get("Uploads")  # and its parts were aborted
    with pytest.raises(IndexNotFound):
        store.get_file("versions/v/embeddings.npy", tmp_path / "down")


def test_an_upload_the_store_refuses_is_a_store_error_in_its_words(s3, tmp_path):
    from indexstore.store import S3Store, StoreUnavailable

    (tmp_path / "up").write_bytes(b"x" * 10)
    with pytest.raises(StoreUnavailable, match="S3 upload of versions/v/errors.csv failed at s3://missing/i"):
        S3Store("missing", "i", part_bytes=PART).put_file("versions/v/errors.csv", tmp_path / "up")


def test_a_builds_shards_round_trip_through_s3_and_go_with_it(s3):
    """The shards of a build on the S3 API server: saved (npz, then its JSON), finished, loaded, a damaged
    one's JSON deleted so the next run redoes it, and every object of the build gone after ``clear``."""
    from catalog.shards import ShardError, ShardStore
    from tests.test_shards import shard

    store = open_store("s3://shop/indexes/demo")
    shards = ShardStore(store, "b1")
    for i in range(3):
        shards.save(i, shard())
    assert [shards.finished(i) for i in range(4)] == [(3, 4), (3, 4), (3, 4), None]
    assert np.array_equal(shards.load(1).vectors, shard().vectors)
    store.put("builds/b1/shard-00002.npz", b"not the npz its JSON names")
    with pytest.raises(ShardError, match="checksum mismatch"):
        shards.load(2)
    assert shards.finished(2) is None
    other = ShardStore(store, "b2")
    other.save(0, shard())
    assert store.list_folders("builds") == ["b1", "b2"]  # common prefixes, as manage_index.py's builds lists
    shards.clear()
    assert store.list_folders("builds") == ["b2"] and store.list_folders("nothing-here") == []
    listed = boto3.client("s3").list_objects_v2(Bucket="shop", Prefix="indexes/demo/builds/")
    assert sorted(o["Key"] for o in listed.get("Contents", [])) == [
        "indexes/demo/builds/b2/shard-00000.json", "indexes/demo/builds/b2/shard-00000.npz"]  # another build's stay
