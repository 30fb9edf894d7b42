"""How many CPUs this process may use: its cgroup's CPU quota (a container's ``limits.cpu``), which
``os.cpu_count()`` and OpenBLAS do not see, and the BLAS threads that fit in it.

OpenBLAS starts one thread per CPU of the *machine* and keeps each spinning for a while after every call: in a
container limited to one CPU on a 16-core node, a gunicorn worker's fifteen spinning threads can spend the quota
and the request that needs it waits for the next period (docs/PERFORMANCE.md, "Session 10")."""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path

CGROUP_ROOT = Path("/sys/fs/cgroup")
OWN_CGROUP = Path("/proc/self/cgroup")


def cpu_limit(root: Path = CGROUP_ROOT, own: Path = OWN_CGROUP) -> float | None:
    """This process's CPU quota in CPUs (1.5 for ``limits.cpu: 1500m``); None when it has none or it cannot be
    read. cgroup v2 (``cpu.max``) and v1 (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), at the process's own
    cgroup, then at the root (a container's own cgroup namespace shows its cgroup there): the first quota
    found. A folder without one, or with an unreadable or malformed one, is passed over; none anywhere: None,
    and the caller keeps its default."""
    for folder, version in _cgroup_folders(root, own):
        try:
            if version == 2:
                quota, period = (folder / "cpu.max").read_text().split()
            else:
                quota = (folder / "cpu.cfs_quota_us").read_text()
                period = (folder / "cpu.cfs_period_us").read_text()
            cpus = int(quota) / int(period)
        except (OSError, ValueError, ZeroDivisionError):
            continue
        if cpus > 0:  # v1's -1 is none at this level (v2's "max" is not a number): a parent's may still hold
            return cpus
    return None


def _cgroup_folders(root: Path, own: Path) -> Iterator[tuple[Path, int]]:
    """Folders that may hold this process's CPU quota, with their cgroup version, innermost first."""
    try:
        lines = own.read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        hierarchy, _, rest = line.partition(":")
        controllers, _, path = rest.partition(":")
        inner = path.strip("/")
        if hierarchy == "0" and not controllers:
            yield from ((folder, 2) for folder in dict.fromkeys((root / inner, root)))
        elif "cpu" in controllers.split(","):
            for mount in dict.fromkeys((controllers, "cpu", "cpu,cpuacct")):
                yield from ((folder, 1) for folder in dict.fromkeys((root / mount / inner, root / mount)))
    yield root, 2


def blas_threads(setting: int, limit: float | None, cpus: int) -> int:
    """BLAS threads for a process: ``setting`` when above 0, else the whole CPUs of its quota ``limit`` (at
    least 1, at most ``cpus``), else ``cpus`` (no quota: the library's own default)."""
    if setting > 0:
        return setting
    if limit is None:
        return cpus
    return max(1, min(cpus, math.floor(limit)))
