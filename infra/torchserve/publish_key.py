"""Start TorchServe and publish its **inference key only** for the gateway.

TorchServe 0.12 writes ``key_file.json`` with three keys: inference, management and the token API's.
Whoever holds the management key can unregister the model or scale its workers to 0, so the gateway must
not see that file. This wrapper runs TorchServe (the command after ``--``) and, whenever TorchServe writes
or rotates its keys, copies the inference key alone into ``PUBLISH_DIR/key_file.json`` (the same format,
the other keys left out), written atomically; the deployments mount only ``PUBLISH_DIR`` into the gateway.
SIGTERM/SIGINT are passed on to TorchServe, and the wrapper exits with TorchServe's status.

    python publish_key.py KEY_FILE PUBLISH_DIR -- torchserve --start --foreground ...
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

#: Seconds between looks at TorchServe's key file.
POLL_S = 1.0


def inference_only(key_file: Path) -> dict | None:
    """The key file's inference entry alone, or None while it is missing, partly written or malformed."""
    try:
        keys = json.loads(key_file.read_text())
        entry = keys["inference"]
        if not isinstance(entry, dict) or not isinstance(entry.get("key"), str) or not entry["key"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return {"inference": entry}


def publish(key_file: Path, out_dir: Path, last: dict | None = None) -> dict | None:
    """Write the inference key into ``out_dir/key_file.json`` when it changed; the entry now published."""
    entry = inference_only(key_file)
    if entry is None or entry == last:
        return last
    out_dir.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out_dir, prefix=".key_file.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(entry, fh)
        os.chmod(tmp, 0o644)  # the gateway runs as another user of the same group in some deployments
        os.replace(tmp, out_dir / "key_file.json")  # readers see the old key or the new one, never half
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return entry


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        print(__doc__, file=sys.stderr)
        return 2
    key_file, out_dir, command = Path(argv[0]), Path(argv[1]), argv[3:]
    server = subprocess.Popen(command)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda signum, _frame: server.send_signal(signum))
    last = None
    while server.poll() is None:
        last = publish(key_file, out_dir, last)
        time.sleep(POLL_S)
    return server.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
