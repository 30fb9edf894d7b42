"""The TorchServe process manager (devtools/process.py): its config rendering and how it stops a process group
(stand-in groups of shell processes); TorchServe itself runs under every integration test's ``torchserve``
fixture."""

from __future__ import annotations

import json

import pytest
import requests

from devtools.process import CONFIG_TEMPLATE, models_setting, render_config


def test_overrides_replace_keys_and_append_new_ones(tmp_path):
    template = tmp_path / "config.properties"
    template.write_text("# inference_address=commented\ninference_address=http://127.0.0.1:8080\nkeep=1\n")
    out = render_config(template, {"inference_address": "http://127.0.0.1:9", "extra": "x"})
    assert out == "# inference_address=commented\ninference_address=http://127.0.0.1:9\nkeep=1\nextra=x\n"


def test_models_setting_and_the_checked_in_config():
    setting = json.loads(models_setting("embedding.mar", batch_size=4, max_batch_delay_ms=50, workers=2))
    assert setting == {"embedding": {"1.0": {"marName": "embedding.mar", "batchSize": 4, "maxBatchDelay": 50,
                                             "minWorkers": 2, "maxWorkers": 2, "responseTimeout": 60}}}
    keys = dict(line.split("=", 1) for line in CONFIG_TEMPLATE.read_text().splitlines()
                if line and not line.startswith("#"))
    assert all(keys[k].startswith("http://127.0.0.1:") for k in ("inference_address", "management_address",
                                                                  "metrics_address"))


def test_wait_for_http_answers_true_when_up_and_false_at_the_deadline(http_server):
    import time

    from devtools.process import wait_for_http
    from tests.conftest import free_port

    assert wait_for_http(http_server.add("/readyz", b"{}", content_type="application/json"), timeout=5)
    assert not wait_for_http(http_server.url + "/missing", timeout=0.5)  # 404 is not ready
    started = time.monotonic()
    assert not wait_for_http(f"http://127.0.0.1:{free_port()}/readyz", timeout=0.6, interval=0.1)
    assert 0.5 <= time.monotonic() - started < 5


def test_free_ports_are_distinct_and_bindable():
    import socket

    from devtools.process import free_ports

    ports = free_ports(5)
    assert len(set(ports)) == 5
    for port in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def occupied_port():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


@pytest.mark.integration
def test_a_port_taken_before_torchserve_binds_it_is_chosen_again(model_store, tmp_path, monkeypatch):
    """The frontend exits (with 0) when a port is taken between choosing and binding: the manager chooses again."""
    from devtools import process

    busy = occupied_port()
    real, calls = process.free_ports, []

    def first_one_taken(count):
        calls.append(count)
        ports = real(count)
        return [busy.getsockname()[1], *ports[1:]] if len(calls) == 1 else ports

    monkeypatch.setattr(process, "free_ports", first_one_taken)
    ts = process.TorchServe(model_store, tmp_path / "ts", overrides={"models": models_setting("embedding.mar", 1, 5)})
    try:
        ts.start().wait_ready(timeout=240)
        assert len(calls) == 2 and ts.ports[0] != busy.getsockname()[1]
        assert "Failed to bind" in (tmp_path / "ts" / "torchserve.out").read_text()  # the first start did fail
        assert requests.get(f"{ts.url}/ping", timeout=5).ok
    finally:
        ts.stop()
        busy.close()


@pytest.mark.integration
def test_a_given_port_taken_fails_with_torchserve_s_own_words(model_store, tmp_path):
    from devtools.process import PortTaken, TorchServe, free_ports

    busy = occupied_port()
    others = free_ports(4)
    ts = TorchServe(model_store, tmp_path / "ts", busy.getsockname()[1], others[0], others[1],
                    grpc_ports=(others[2], others[3]), overrides={"models": models_setting("embedding.mar", 1, 5)})
    try:
        with pytest.raises(PortTaken, match="Failed to bind"):
            ts.start().wait_ready(timeout=120)
    finally:
        ts.stop()
        busy.close()


def _group(tmp_path, script: str):
    """A stand-in TorchServe: a shell and a child of it in a process group of their own, as the wrapper, the Java
    frontend and its workers are; returned once the child runs (``script`` then touches ``ready``)."""
    import subprocess
    import time

    from devtools.process import TorchServe

    ts = TorchServe(tmp_path / "store", tmp_path / "work")
    ts.process = subprocess.Popen(["sh", "-c", script.replace("READY", str(tmp_path / "ready"))],
                                  start_new_session=True)
    ts.log = open(tmp_path / "out.log", "wb")  # noqa: SIM115 - stop() closes it
    deadline = time.monotonic() + 10
    while not (tmp_path / "ready").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    return ts


def _gone(group: int) -> bool:
    import os

    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return True
    return False


def test_stopping_ends_the_whole_process_group_with_sigterm(tmp_path):
    """The frontend outlives the wrapper for a moment and would still answer on its ports: stop() waits until
    every process of the group is gone, and a polite SIGTERM is enough for a group that honours it."""
    ts = _group(tmp_path, "sleep 60 & touch READY; sleep 60; wait")
    group = ts.process.pid
    ts.stop(timeout=20)
    assert _gone(group) and ts.log.closed
    assert ts.process.returncode == -15  # SIGTERM, not SIGKILL


def test_stopping_what_never_started_does_nothing(tmp_path):
    from devtools.process import TorchServe

    TorchServe(tmp_path / "store", tmp_path / "work").stop()
