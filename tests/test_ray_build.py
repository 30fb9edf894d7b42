"""The build on a real two-node Ray cluster on this machine (two raylets on loopback, ``ray start``):
catalog/ray_engine.py. The version equals the one-process build's; a worker killed mid-shard, and a driver
killed mid-build, still end in a complete version."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from catalog.build import build_index
from catalog.ray_engine import RayEngine
from catalog.shards import ShardFailed
from devtools.process import REPO, free_ports
from indexstore.store import LocalStore, read_current
from scripts.build_index import main as build_cli
from tests.conftest import DEMO_DIR
from tests.embedders import HashEmbedder, MakeHash

pytestmark = pytest.mark.integration
ray = pytest.importorskip("ray")
RAY = str(Path(sys.executable).with_name("ray"))


@pytest.fixture(scope="module")
def cluster():
    """A head and a second node, one CPU each, every address on loopback; stopped after the module. Ray 2.60
    turns token authentication on for a head that finds ~/.ray/auth_token (any earlier local Ray writes one),
    which a joining node and this process's drivers would then need: on a loopback-only cluster of one test
    module it is off for all, whatever ~/.ray holds."""
    port, = free_ports(1)
    temp = tempfile.mkdtemp(prefix="ray-", dir="/tmp")  # Ray's socket paths must stay short
    auth = {"RAY_AUTH_MODE": "disabled"}
    saved = {key: os.environ.get(key) for key in auth}
    os.environ.update(auth)  # this process's drivers, and the driver it starts
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_USAGE_STATS_ENABLED": "0"}
    common = ["--node-ip-address=127.0.0.1", "--num-cpus=1", "--disable-usage-stats"]
    started = subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false",
                              f"--temp-dir={temp}", *common], env=env, capture_output=True, text=True, timeout=120)
    assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
    address = f"127.0.0.1:{port}"
    try:
        joined = subprocess.run([RAY, "start", f"--address={address}", *common], env=env, capture_output=True,
                                text=True, timeout=120)
        assert joined.returncode == 0, joined.stdout[-3000:] + joined.stderr[-3000:]
        yield address
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)
        shutil.rmtree(temp, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture
def catalog(tmp_path):
    """24 real demo products."""
    lines = (DEMO_DIR / "products.csv").read_text().splitlines()
    folder = tmp_path / "shop"
    shutil.copytree(DEMO_DIR / "images", folder / "images")
    (folder / "products.csv").write_text("\n".join(lines[:25]) + "\n")
    return folder / "products.csv"


def build(catalog, out, embedder, tmp_path, engine=None, vectors="v"):
    return build_index(catalog, out, embedder, tmp_path / "cache", progress=False, shard_rows=4,
                       vector_cache=tmp_path / vectors, whiten_min=10, engine=engine)


def same_version(a: Path, b: Path) -> None:
    x, y = read_current(LocalStore(a)), read_current(LocalStore(b))
    assert [p["id"] for p in x.products] == [p["id"] for p in y.products]
    np.testing.assert_allclose(x.embeddings, y.embeddings, atol=1e-6)
    for fitted in ("calibration", "no_match", "appearance", "whitening"):
        close(x.manifest[fitted], y.manifest[fitted])


def close(a: object, b: object) -> None:
    """Equal JSON, numbers within float32 tolerance (two processes may round a sum differently)."""
    if isinstance(a, dict):
        assert isinstance(b, dict) and a.keys() == b.keys()
        for key in a:
            close(a[key], b[key])
    elif isinstance(a, list):
        assert isinstance(b, list) and len(a) == len(b)
        for u, v in zip(a, b, strict=True):
            close(u, v)
    elif isinstance(a, float):
        assert b == pytest.approx(a, abs=1e-5)
    else:
        assert a == b


def test_a_ray_build_on_two_nodes_equals_the_one_process_build(cluster, catalog, tmp_path):
    trace = tmp_path / "trace"
    engine = RayEngine(MakeHash(trace=str(trace), delay_s=0.2), cluster)
    report = build(catalog, tmp_path / "ray", HashEmbedder(), tmp_path, engine, vectors="v1")
    local = build(catalog, tmp_path / "local", HashEmbedder(), tmp_path, vectors="v2")
    assert (report.indexed, report.shards, report.embedded) == (24, 6, 24) == (local.indexed, 6, local.embedded)
    same_version(tmp_path / "ray", tmp_path / "local")
    nodes = {p.name.split("-")[1] for p in trace.iterdir()}
    assert len(nodes) == 2, nodes  # both raylets embedded shards


def test_a_ray_rebuild_reuses_the_published_versions_vectors_on_every_node(cluster, catalog, tmp_path):
    """The previous version's vectors go to Ray's object store once (read from their file first: a task on
    another machine has no such file) and every shard reuses them."""
    build(catalog, tmp_path / "ray", HashEmbedder(), tmp_path, vectors="v1")
    engine = RayEngine(MakeHash(), cluster)
    again = build(catalog, tmp_path / "ray", HashEmbedder(), tmp_path, engine, vectors="v2")
    assert (again.indexed, again.reused, again.embedded, again.resumed) == (24, 24, 0, 0)


def test_a_worker_killed_mid_shard_still_ends_in_a_complete_version(cluster, catalog, tmp_path):
    marker = tmp_path / "crashed"
    engine = RayEngine(MakeHash(crash_once=str(marker)), cluster)
    report = build(catalog, tmp_path / "ray", HashEmbedder(), tmp_path, engine, vectors="v1")
    assert marker.exists()  # a worker did die
    assert report.indexed == 24 and report.shards_resumed == 0
    build(catalog, tmp_path / "local", HashEmbedder(), tmp_path, vectors="v2")
    same_version(tmp_path / "ray", tmp_path / "local")


def test_a_shard_that_fails_on_every_try_stops_the_build_in_words(cluster, catalog, tmp_path, monkeypatch):
    monkeypatch.setattr("catalog.ray_engine.TASK_RETRIES", 0)
    engine = RayEngine(MakeHash(crash_once=str(tmp_path / "crashed")), cluster)
    with pytest.raises(ShardFailed, match="failed on 1 tries .* run the build again to resume"):
        build(catalog, tmp_path / "ray", HashEmbedder(), tmp_path, engine, vectors="v1")
    assert not (tmp_path / "ray" / "CURRENT").exists()


def test_the_command_line_builds_on_ray_with_the_real_model(cluster, catalog, tmp_path, local_embedder):
    out = tmp_path / "ray"
    code = build_cli(["--catalog", str(catalog), "--output", str(out), "--embedder", "local", "--engine", "ray",
                      "--ray-address", cluster, "--shard-rows", "8", "--cache-dir", str(tmp_path / "cache"),
                      "--no-progress"])
    assert code == 0
    build_index(catalog, tmp_path / "local", local_embedder, tmp_path / "cache", progress=False,
                vector_cache=tmp_path / "v2")
    x, y = read_current(LocalStore(out)), read_current(LocalStore(tmp_path / "local"))
    assert x.backbone_id == y.backbone_id and len(x.products) == 24
    np.testing.assert_allclose(x.embeddings, y.embeddings, atol=1e-4)


DRIVER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from catalog.build import build_index
    from catalog.ray_engine import RayEngine
    from tests.embedders import HashEmbedder, MakeHash
    catalog, out, cache, address = sys.argv[1:]
    build_index(Path(catalog), out, HashEmbedder(), Path(cache) / "cache", progress=False, shard_rows=4,
                vector_cache=Path(cache) / "v1", whiten_min=10,
                engine=RayEngine(MakeHash(delay_s=1.0), address, cpus_per_task=1))
""")


def test_a_killed_driver_resumes_from_the_shards_it_finished(cluster, catalog, tmp_path):
    out = tmp_path / "ray"
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, str(catalog), str(out), str(tmp_path), cluster],
                              cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)}, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while len(list(out.glob("builds/*/*.json"))) < 2 and time.monotonic() < deadline and driver.poll() is None:
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGKILL)
    finally:
        driver.wait(timeout=30)
    finished = len(list(out.glob("builds/*/*.json")))
    assert 2 <= finished < 6 and not (out / "CURRENT").exists()
    again = HashEmbedder()
    report = build(catalog, out, again, tmp_path, vectors="v2")  # a fresh vector cache: the shards count
    assert report.shards_resumed == finished and again.embedded == 24 - 4 * finished
    build(catalog, tmp_path / "local", HashEmbedder(), tmp_path, vectors="v3")
    same_version(out, tmp_path / "local")
