"""Start and stop a real TorchServe process (for ``make demo`` and the integration tests).

The config is ``infra/torchserve/config.properties`` with chosen keys overridden (ports, model store,
batch settings), written next to the logs so a run never touches the checked-in file.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parent.parent
CONFIG_TEMPLATE = REPO / "infra" / "torchserve" / "config.properties"


def render_config(template: Path, overrides: dict[str, str]) -> str:
    """The template's lines with ``key=value`` replaced (or appended) for each override."""
    lines, seen = [], set()
    for line in template.read_text().splitlines():
        key = line.split("=", 1)[0].strip()
        if not line.lstrip().startswith("#") and key in overrides:
            line = f"{key}={overrides[key]}"
            seen.add(key)
        lines.append(line)
    lines += [f"{k}={v}" for k, v in overrides.items() if k not in seen]
    return "\n".join(lines) + "\n"


def models_setting(mar: str, batch_size: int, max_batch_delay_ms: int, workers: int = 1) -> str:
    name = Path(mar).stem
    return json.dumps({name: {"1.0": {"marName": mar, "batchSize": batch_size, "maxBatchDelay": max_batch_delay_ms,
                                      "minWorkers": workers, "maxWorkers": workers, "responseTimeout": 60}}})


def free_ports(count: int) -> list[int]:
    """``count`` distinct loopback ports free right now: all are held open until every one is chosen, so two calls
    inside one choice can never return the same port (closing one socket before binding the next can)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


class PortTaken(RuntimeError):
    """TorchServe could not bind one of its ports: something else took it between choosing and binding."""


def wait_for_http(url: str, timeout: float = 60.0, interval: float = 0.2) -> bool:
    """Poll ``url`` until it answers 2xx (True) or ``timeout`` seconds pass (False): a started server's readiness."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=2).ok:
                return True
        except requests.RequestException:
            pass
        time.sleep(interval)
    return False


class TorchServe:
    """A TorchServe process in the foreground of its own process group."""

    # Ports left as None are free loopback ports, chosen at the first start and chosen again when another process
    # takes one before TorchServe binds it (the frontend then exits, and wait_ready starts it once more).
    START_ATTEMPTS = 3

    def __init__(self, model_store: Path, workdir: Path, inference_port: int | None = None,
                 management_port: int | None = None, metrics_port: int | None = None,
                 overrides: dict[str, str] | None = None, grpc_ports: tuple[int, int] | None = None,
                 env: dict[str, str] | None = None, template: Path = CONFIG_TEMPLATE) -> None:
        self.model_store = Path(model_store).resolve()
        self.workdir = Path(workdir).resolve()
        self.fixed_ports = (inference_port, management_port, metrics_port, *(grpc_ports or (None, None)))
        self.extra = dict(overrides or {})
        self.template = Path(template)  # infra/torchserve/config*.properties; the overrides win
        self.env = env or {}  # e.g. PHOTO_THREADS for several workers on few cores (handlers/runtimes.py)
        self.process: subprocess.Popen | None = None
        self.ports: list[int] | None = None
        self.log_start = 0
        if None not in self.fixed_ports:
            self.use_ports([int(p) for p in self.fixed_ports if p is not None])

    def use_ports(self, ports: list[int]) -> None:
        """Listen on these ports: inference, management, metrics, gRPC inference, gRPC management."""
        self.ports = ports
        self.url = f"http://127.0.0.1:{ports[0]}"
        self.management_url = f"http://127.0.0.1:{ports[1]}"
        self.metrics_url = f"http://127.0.0.1:{ports[2]}"
        self.overrides = {
            "inference_address": self.url,
            "management_address": self.management_url,
            "metrics_address": self.metrics_url,
            "model_store": str(self.model_store),
            "grpc_inference_port": str(ports[3]),
            "grpc_management_port": str(ports[4]),
            **self.extra,
        }

    def choose_ports(self) -> None:
        """Free ports wherever none was given (the given ones stay)."""
        free = iter(free_ports(5))
        self.use_ports([p if p is not None else next(free) for p in self.fixed_ports])

    def start(self) -> TorchServe:
        if self.ports is None:
            self.choose_ports()
        self.workdir.mkdir(parents=True, exist_ok=True)
        config = self.workdir / "config.properties"
        config.write_text(render_config(self.template, self.overrides))
        # TorchServe keeps a pid file in the temp dir and refuses to start a second server beside it:
        # a temp dir of its own lets several run on one machine (tests, a demo next to a test run).
        (self.workdir / "tmp").mkdir(exist_ok=True)
        env = {**os.environ, "LOG_LOCATION": str(self.workdir / "logs"),
               "METRICS_LOCATION": str(self.workdir / "logs"), "TMPDIR": str(self.workdir / "tmp"),
               "TEMP": str(self.workdir / "tmp"), **self.env}  # TEMP → java.io.tmpdir, where worker sockets live
        exe = Path(sys.executable).with_name("torchserve")
        cmd = [str(exe), "--start", "--foreground", "--ncs", "--model-store", str(self.model_store),
               "--ts-config", str(config)]
        self.log = open(self.workdir / "torchserve.out", "ab")  # noqa: SIM115 - closed in stop()
        self.log_start = self.log.tell()
        self.process = subprocess.Popen(cmd, cwd=self.workdir, env=env, stdout=self.log, stderr=subprocess.STDOUT,
                                        start_new_session=True)
        return self

    def management_headers(self) -> dict[str, str]:
        """The management key, when token authorization is on (TorchServe writes key_file.json into its cwd)."""
        try:
            key = json.loads((self.workdir / "key_file.json").read_text())["management"]["key"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}
        return {"Authorization": f"Bearer {key}"}

    def ready(self, model: str = "embedding") -> bool:
        try:
            resp = requests.get(f"{self.management_url}/models/{model}", headers=self.management_headers(),
                                timeout=2)
            return resp.ok and any(w.get("status") == "READY" for w in resp.json()[0].get("workers", []))
        except (requests.RequestException, ValueError, IndexError, KeyError):
            return False

    def log_since_start(self) -> str:
        """What TorchServe printed since its last start (its stdout and stderr)."""
        with open(self.workdir / "torchserve.out", "rb") as f:
            f.seek(self.log_start)
            return f.read().decode("utf-8", "replace")

    def exited(self) -> RuntimeError:
        """The error for a frontend that exited while starting: PortTaken when a port was taken."""
        output = self.log_since_start()
        tail = "\n".join(output.splitlines()[-15:])
        kind = PortTaken if "Failed to bind" in output or "Address already in use" in output else RuntimeError
        return kind(f"TorchServe exited with {self.process.returncode if self.process else None}; "
                    f"see {self.workdir}; its last lines:\n{tail}")

    def wait_ready(self, model: str = "embedding", timeout: float = 180.0) -> None:
        """Wait until a worker of ``model`` is READY; a port taken meanwhile is chosen again (free ports only)."""
        deadline = time.monotonic() + timeout
        attempts = 1
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                error = self.exited()
                if not isinstance(error, PortTaken) or None not in self.fixed_ports \
                        or attempts >= self.START_ATTEMPTS:
                    raise error
                self.stop()
                self.choose_ports()
                self.start()
                attempts += 1
                continue
            if self.ready(model):
                return
            time.sleep(0.5)
        raise TimeoutError(f"TorchServe model {model!r} not READY after {timeout:g}s; see {self.workdir}/logs")

    def stop(self, timeout: float = 30.0) -> None:
        """Stop the whole process group (wrapper, Java frontend, Python workers) and wait until all are gone:
        the frontend outlives the wrapper for a moment and would still answer on its ports."""
        if self.process is None:
            return
        group = self.process.pid
        try:
            os.killpg(group, signal.SIGTERM)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.process.poll()
            try:
                os.killpg(group, 0)
            except ProcessLookupError:
                break
            time.sleep(0.2)
        else:
            try:
                os.killpg(group, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.process.wait(timeout)
        self.log.close()
