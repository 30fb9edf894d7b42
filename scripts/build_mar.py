"""Build the TorchServe archive: ``python scripts/build_mar.py --backbone auto --output model_store/``."""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from handlers.backbones import CHOICES, WeightsUnavailable
from modelarchive.archive import DEFAULT_MODEL_NAME, build_archive
from modelarchive.export import AUTO, RUNTIME_CHOICES, ExportError


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--backbone", choices=CHOICES, default="auto")
    parser.add_argument("--weights", type=Path, help="explicit weights file (state_dict)")
    parser.add_argument("--output", type=Path, default=Path("model_store"))
    parser.add_argument("--model-name", default=DEFAULT_MODEL_NAME)
    parser.add_argument("--runtime", choices=RUNTIME_CHOICES, default=AUTO,
                        help="what runs the network in TorchServe; auto: the fastest installed runtime whose vectors "
                             "match eager PyTorch (cosine >= 0.999), measured now on the check images")
    parser.add_argument("--check-images", type=Path,
                        help="folder of real catalog JPEGs to check runtimes on (default: data/demo/images)")
    parser.add_argument("--download", action="store_true",
                        help="allow the official torchvision download of ResNet18 weights (needs internet)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    try:
        archive = build_archive(args.backbone, args.weights, args.output, args.model_name, args.download,
                                args.runtime, args.check_images)
    except (WeightsUnavailable, ExportError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    choice = archive.choice
    print(f"{archive.path} ({archive.backbone_id}, runtime {archive.runtime})")
    print(f"  model-only images/s: {choice.images_per_s}; cosine to eager: {choice.min_cosine}")
    for runtime, why in choice.refused.items():
        print(f"  not {runtime}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
