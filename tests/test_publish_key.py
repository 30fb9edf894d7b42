"""infra/torchserve/publish_key.py: the gateway gets TorchServe's inference key and nothing else."""

from __future__ import annotations

import importlib.util
import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from devtools.process import REPO

SCRIPT = REPO / "infra" / "torchserve" / "publish_key.py"
spec = importlib.util.spec_from_file_location("publish_key", SCRIPT)
publish_key = importlib.util.module_from_spec(spec)
spec.loader.exec_module(publish_key)

KEYS = {"management": {"key": "M-secret", "expiration time": "2027"}, "inference": {"key": "I-1", "expiration time":
        "2027"}, "API": {"key": "A-secret"}}


def test_only_the_inference_key_is_published(tmp_path):
    src, out = tmp_path / "key_file.json", tmp_path / "out"
    src.write_text(json.dumps(KEYS))
    entry = publish_key.publish(src, out)
    published = (out / "key_file.json").read_text()
    assert json.loads(published) == {"inference": KEYS["inference"]} == entry
    assert "M-secret" not in published and "A-secret" not in published
    assert [p.name for p in out.iterdir()] == ["key_file.json"]  # no temporary file left behind


def test_a_rotated_key_is_published_again_and_an_unchanged_one_is_not_rewritten(tmp_path):
    src, out = tmp_path / "key_file.json", tmp_path / "out"
    src.write_text(json.dumps(KEYS))
    first = publish_key.publish(src, out)
    stamp = (out / "key_file.json").stat().st_mtime_ns
    time.sleep(0.01)
    assert publish_key.publish(src, out, first) == first and (out / "key_file.json").stat().st_mtime_ns == stamp
    src.write_text(json.dumps({**KEYS, "inference": {"key": "I-2"}}))
    assert publish_key.publish(src, out, first) == {"inference": {"key": "I-2"}}
    assert json.loads((out / "key_file.json").read_text())["inference"]["key"] == "I-2"


@pytest.mark.parametrize("text", ["", "{", "[]", '{"management": {"key": "M"}}', '{"inference": {"key": ""}}',
                                  '{"inference": "I"}', '{"inference": {"key": 5}}'])
def test_a_missing_partial_or_malformed_key_file_publishes_nothing_and_keeps_the_last_key(tmp_path, text):
    src, out = tmp_path / "key_file.json", tmp_path / "out"
    assert publish_key.publish(src, out) is None and not out.exists()  # TorchServe has not written it yet
    src.write_text(json.dumps(KEYS))
    last = publish_key.publish(src, out)
    src.write_text(text)  # caught half-written, or damaged
    assert publish_key.publish(src, out, last) == last
    assert json.loads((out / "key_file.json").read_text()) == {"inference": KEYS["inference"]}


def test_a_failed_write_leaves_the_published_key_whole(tmp_path, monkeypatch):
    src, out = tmp_path / "key_file.json", tmp_path / "out"
    src.write_text(json.dumps(KEYS))
    last = publish_key.publish(src, out)
    src.write_text(json.dumps({**KEYS, "inference": {"key": "I-2"}}))

    def dies(*args):
        raise OSError("disk full")

    monkeypatch.setattr(publish_key.os, "replace", dies)
    with pytest.raises(OSError, match="disk full"):
        publish_key.publish(src, out, last)
    assert json.loads((out / "key_file.json").read_text())["inference"]["key"] == "I-1"
    assert [p.name for p in out.iterdir()] == ["key_file.json"]


def test_the_wrapper_publishes_passes_on_sigterm_and_exits_with_the_servers_status(tmp_path):
    """A stand-in server writes its keys, then waits; SIGTERM to the wrapper reaches it, and its exit status
    (here 3) is the wrapper's."""
    src, out = tmp_path / "key_file.json", tmp_path / "out"
    server = (f"import json, signal, sys, time; open({str(src)!r}, 'w').write({json.dumps(KEYS)!r}); "
              "signal.signal(signal.SIGTERM, lambda *a: sys.exit(3)); time.sleep(30)")
    wrapper = subprocess.Popen([sys.executable, str(SCRIPT), str(src), str(out), "--", sys.executable, "-c", server])
    try:
        deadline = time.monotonic() + 20
        while not (out / "key_file.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert json.loads((out / "key_file.json").read_text()) == {"inference": KEYS["inference"]}
        wrapper.send_signal(signal.SIGTERM)
        assert wrapper.wait(10) == 3
    finally:
        wrapper.kill()


def test_a_wrong_command_line_is_refused_with_its_usage():
    run = subprocess.run([sys.executable, str(SCRIPT), "only-one"], capture_output=True, text=True)
    assert run.returncode == 2 and "publish_key.py KEY_FILE PUBLISH_DIR -- torchserve" in run.stderr


def test_the_image_runs_torchserve_through_it():
    """ENTRYPOINT start.py, CMD serve; start.py runs TorchServe through this wrapper with the image's paths."""
    import importlib.util as util

    dockerfile = (REPO / "infra" / "docker" / "torchserve.Dockerfile").read_text()
    assert 'ENTRYPOINT ["python", "/home/model-server/start.py"]' in dockerfile and 'CMD ["serve"]' in dockerfile
    spec = util.spec_from_file_location("start", REPO / "infra" / "torchserve" / "start.py")
    start = util.module_from_spec(spec)
    spec.loader.exec_module(start)
    command = start.torchserve_command(Path("/home/model-server"))
    assert command[1:5] == ["/home/model-server/publish_key.py", "/home/model-server/keys/key_file.json",
                            "/home/model-server/inference-key", "--"] and command[5] == "torchserve"
    assert command[-2:] == ["--ts-config", "/home/model-server/config.properties"]
    assert "--model-store" not in command  # the config's model_store decides (SageMaker: /opt/ml/model)
