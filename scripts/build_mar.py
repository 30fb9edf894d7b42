"""Build the TorchServe archive: ``python scripts/build_mar.py --backbone auto --output model_store/``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from handlers.archive import DEFAULT_MODEL_NAME, build_archive
from handlers.backbones import CHOICES, WeightsUnavailable


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", choices=CHOICES, default="auto")
    parser.add_argument("--weights", type=Path, help="explicit weights file (state_dict)")
    parser.add_argument("--output", type=Path, default=Path("model_store"))
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--download", action="store_true",
                        help="allow the official torchvision download of ResNet18 weights (needs internet)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        path, model_id = build_archive(args.backbone, args.weights, args.output, args.model_name, args.download)
    except WeightsUnavailable as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"{path} ({model_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
