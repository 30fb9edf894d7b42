"""A build's shards on a Ray cluster (``build_index.py --engine ray``): one Ray task per shard, each fetching,
decoding and embedding its rows and writing its shard to the store; the driver then merges and publishes as a
build in one process does (catalog/build.py). ``RAY_ADDRESS`` (or ``--ray-address``) names the cluster; unset,
a Ray local to this machine is started for the build.

A task whose worker dies is run again by Ray (``TASK_RETRIES``); a driver that dies leaves the finished shards
in the store, and the next run starts from them. Each worker process keeps one embedder for all the tasks it
runs (a TorchServe client, or the model in-process), made from a picklable ``EmbedderSpec``."""

from __future__ import annotations

import logging
from collections.abc import Callable, Hashable

from tqdm import tqdm

from catalog.build import ShardJob, embed_shard
from catalog.previous import PreviousVectors
from catalog.shards import PendingShard, ShardFailed
from modelio.protocol import BatchEmbedder

log = logging.getLogger(__name__)

#: Times Ray runs a shard again when its worker process or node dies.
TASK_RETRIES = 3
#: Shards in flight per CPU of the cluster: enough to keep every CPU busy, few enough to bound the driver.
IN_FLIGHT_PER_CPU = 2

_EMBEDDERS: dict[Hashable, BatchEmbedder] = {}


def _worker_embedder(make: Callable[[], BatchEmbedder]) -> BatchEmbedder:
    """This worker process's embedder for ``make`` (made once, reused by every later task)."""
    if make not in _EMBEDDERS:
        _EMBEDDERS[make] = make()
    return _EMBEDDERS[make]


def _shard_task(job: ShardJob, shard: int, rows: list[dict], make: Callable[[], BatchEmbedder],
                previous: PreviousVectors) -> dict[str, int]:
    return embed_shard(job, shard, rows, _worker_embedder(make), previous)


def _backbone_task(make: Callable[[], BatchEmbedder]) -> str:
    return _worker_embedder(make).backbone_id


class RayEngine:
    """Runs shards as Ray tasks. ``make_embedder``: a picklable, hashable factory (``EmbedderSpec.create``'s
    owner, or any frozen dataclass with ``__call__``); ``cpus_per_task``: what Ray reserves for each shard."""

    def __init__(self, make_embedder: Callable[[], BatchEmbedder], address: str | None = None,
                 cpus_per_task: float = 1.0) -> None:
        self.make_embedder = make_embedder
        self.address = address
        self.cpus_per_task = cpus_per_task
        self._started = False

    def _connect(self):
        import ray

        if not ray.is_initialized():
            self._started = True  # so this engine also ends it
            ray.init(address=self.address or None, include_dashboard=False, log_to_driver=False,
                     configure_logging=False)
        return ray

    def backbone_id(self) -> str:
        """Asked of a worker's embedder (the driver has no model of its own, e.g. no TorchServe beside it)."""
        ray = self._connect()
        task = ray.remote(num_cpus=self.cpus_per_task, max_retries=TASK_RETRIES)(_backbone_task)
        try:
            return ray.get(task.remote(self.make_embedder))
        except ray.exceptions.RayTaskError as exc:  # the worker's own error, e.g. TorchServe not there
            raise exc.as_instanceof_cause() from None

    def run(self, job: ShardJob, todo: list[PendingShard], previous: PreviousVectors,
            progress: bool = True) -> None:
        ray = self._connect()
        try:
            self._run(ray, job, todo, previous, progress)
        finally:
            if self._started:
                ray.shutdown()
                self._started = False

    def _run(self, ray, job: ShardJob, todo: list[PendingShard], previous: PreviousVectors,
             progress: bool) -> None:
        task = ray.remote(num_cpus=self.cpus_per_task, max_retries=TASK_RETRIES)(_shard_task)
        # once into the object store (read into memory first: the tasks may run on machines without its file)
        shared = ray.put(previous.in_memory())
        limit = max(1, int(ray.cluster_resources().get("CPU", 1) / self.cpus_per_task) * IN_FLIGHT_PER_CPU)
        sizes: dict = {}
        waiting = list(reversed(todo))
        with tqdm(total=sum(shard.count for shard in todo), unit="img", desc="indexing (ray)",
                  disable=not progress) as bar:
            while waiting or sizes:
                while waiting and len(sizes) < limit:  # a shard's rows are read only as it is sent
                    pending = waiting.pop()
                    sizes[task.remote(job, pending.index, pending.rows(), self.make_embedder, shared)] = \
                        (pending.index, pending.count)
                done, _ = ray.wait(list(sizes), num_returns=1)
                shard, rows = sizes.pop(done[0])
                try:
                    ray.get(done[0])
                except ray.exceptions.RayError as exc:  # failed on every try: stop (its finished shards stay)
                    log.error("shard %d failed: %s", shard, exc)
                    raise ShardFailed(f"shard {shard} failed on {TASK_RETRIES + 1} tries ({type(exc).__name__}); "
                                      "the finished shards are kept: run the build again to resume") from None
                bar.update(rows)
