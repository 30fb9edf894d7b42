"""safeio/cpus.py: the CPU quota read from cgroup files (v2 and v1, the process's own cgroup and the root), and
the BLAS threads that fit in it; gateway/__main__.py applies them in each worker. Fake cgroup trees on disk."""

from __future__ import annotations

import pytest
from threadpoolctl import threadpool_info, threadpool_limits

from gateway import __main__ as gateway_main
from gateway.config import Config
from safeio.cpus import blas_threads, cpu_limit


def tree(tmp_path, own: str, files: dict[str, str]):
    """A cgroup root with ``files`` (path → text) and a /proc/self/cgroup of ``own``."""
    root = tmp_path / "cgroup"
    for path, text in files.items():
        (root / path).parent.mkdir(parents=True, exist_ok=True)
        (root / path).write_text(text)
    (tmp_path / "own").write_text(own)
    return root, tmp_path / "own"


V2 = "0::/\n"
V1 = "4:memory:/x\n1:cpu,cpuacct:/\n"


@pytest.mark.parametrize(("own", "files", "cpus"), [
    (V2, {"cpu.max": "max 100000\n"}, None),  # v2, no quota
    (V2, {"cpu.max": "150000 100000\n"}, 1.5),  # limits.cpu: 1500m
    (V2, {"cpu.max": "50000 100000\n"}, 0.5),
    ("0::/pod/ctr\n", {"pod/ctr/cpu.max": "200000 100000\n", "cpu.max": "max 100000"}, 2.0),  # its own cgroup
    ("0::/pod/gone\n", {"cpu.max": "100000 100000\n"}, 1.0),  # not mounted there: the root's
    (V1, {"cpu,cpuacct/cpu.cfs_quota_us": "-1\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, None),
    (V1, {"cpu,cpuacct/cpu.cfs_quota_us": "100000\n", "cpu,cpuacct/cpu.cfs_period_us": "100000\n"}, 1.0),
    ("1:cpu:/phototest\n", {"cpu/phototest/cpu.cfs_quota_us": "250000", "cpu/phototest/cpu.cfs_period_us": "100000",
                            "cpu/cpu.cfs_quota_us": "-1", "cpu/cpu.cfs_period_us": "100000"}, 2.5),
    ("1:cpu:/\n", {"cpu,cpuacct/cpu.cfs_quota_us": "100000", "cpu,cpuacct/cpu.cfs_period_us": "50000"}, 2.0),
    ("2:cpu,cpuacct:/x\n", {"cpu/x/cpu.cfs_quota_us": "200000", "cpu/x/cpu.cfs_period_us": "100000"}, 2.0),
    ("0::/pod/ctr\n", {"pod/ctr/cpu.max": "max 100000", "cpu.max": "100000 100000"}, 1.0),  # the parent's holds
    ("1:cpu:/x\n", {"cpu/x/cpu.cfs_quota_us": "-1", "cpu/x/cpu.cfs_period_us": "100000",
                    "cpu/cpu.cfs_quota_us": "50000", "cpu/cpu.cfs_period_us": "100000"}, 0.5),
    ("0::/a:b\n", {"a:b/cpu.max": "300000 100000"}, 3.0),  # a colon in the path
    ("0::/kubepods/podX\n", {"kubepods/podX/cpu.max": "300000 100000", "cpu.max": "max 100000"}, 3.0),
])
def test_the_quota_is_read_where_the_process_is(tmp_path, own, files, cpus):
    assert cpu_limit(*tree(tmp_path, own, files)) == cpus


@pytest.mark.parametrize("files", [
    {}, {"cpu.max": ""}, {"cpu.max": "lots 100000"}, {"cpu.max": "100000 0"}, {"cpu.max": "0 100000"},
    {"cpu.max": "100000 100000 7"}, {"cpu.max": "\xff\xfe"},
])
def test_a_missing_or_malformed_quota_is_no_quota(tmp_path, files):
    assert cpu_limit(*tree(tmp_path, V2, files)) is None


def test_no_cgroup_file_for_the_process_still_reads_the_root(tmp_path):
    root, _ = tree(tmp_path, V2, {"cpu.max": "100000 100000"})
    assert cpu_limit(root, tmp_path / "no-such-file") == 1.0


@pytest.mark.parametrize(("setting", "limit", "cpus", "threads"), [
    (3, 0.5, 16, 3), (1, None, 16, 1),  # set: taken as is
    (0, None, 16, 16),  # no quota: every CPU, as OpenBLAS would
    (0, 0.5, 16, 1), (0, 1.0, 16, 1), (0, 1.99, 16, 1), (0, 2.0, 16, 2),  # whole CPUs of the quota, at least 1
    (0, 8.0, 2, 2),  # never more than the machine has
])
def test_blas_threads(setting, limit, cpus, threads):
    assert blas_threads(setting, limit, cpus) == threads


def blas_counts() -> list[int]:
    return [lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"]


def test_each_worker_sets_its_blas_threads_when_it_loads_the_app(monkeypatch):
    """``GatewayServer.load`` runs in each gunicorn worker: it limits BLAS before the app is made."""
    monkeypatch.setattr("gateway.create_app", lambda: "app")
    server = gateway_main.GatewayServer.__new__(gateway_main.GatewayServer)
    server.admin_port, server.blas = 0, 1
    with threadpool_limits(limits=2, user_api="blas"):  # restored after the test
        assert server.load() is not None
        assert blas_counts() and set(blas_counts()) == {1}


def test_the_setting_is_read_and_checked():
    assert Config().blas_threads == 0
    assert Config.from_env({"BLAS_THREADS": "3"}).blas_threads == 3
    with pytest.raises(ValueError, match="BLAS_THREADS"):
        Config.from_env({"BLAS_THREADS": "-1"})
