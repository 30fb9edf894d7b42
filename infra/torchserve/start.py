"""The TorchServe image's entrypoint: ``serve`` (what SageMaker runs: ``docker run IMAGE serve``, which
replaces CMD) or no argument starts TorchServe through publish_key.py; anything else is run as given
(``docker run -it IMAGE bash``).

TorchServe reads everything from /home/model-server/config.properties (the image's CONFIG build argument
picks the container or the SageMaker one), including its model store: /home/model-server/model-store in a
container, /opt/ml/model under SageMaker, where SageMaker unpacks ModelDataUrl. Paths can be moved with
PHOTO_HOME (tests run the image's layout under a temporary folder).
"""

from __future__ import annotations

import os
import sys
from pathlib import Path


def torchserve_command(home: Path) -> list[str]:
    """publish_key.py wrapping TorchServe in the foreground, with the image's config."""
    return [sys.executable, str(home / "publish_key.py"), str(home / "keys" / "key_file.json"),
            str(home / "inference-key"), "--", "torchserve", "--start", "--foreground", "--ncs",
            "--ts-config", str(home / "config.properties")]


def main(argv: list[str]) -> None:
    home = Path(os.environ.get("PHOTO_HOME", "/home/model-server"))
    if not argv or argv == ["serve"]:
        command = torchserve_command(home)
        os.chdir(home / "keys")  # TorchServe writes key_file.json into its working directory
    else:
        command = argv
    os.execvp(command[0], command)


if __name__ == "__main__":
    main(sys.argv[1:])
