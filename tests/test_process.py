"""The TorchServe process manager's config rendering (devtools/process.py); the process itself is
exercised by every integration test through the ``torchserve`` fixture."""

from __future__ import annotations

import json

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
