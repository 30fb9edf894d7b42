"""The build's optional pass (``build_index.py --local-features``): every indexed product's keypoints
(localfeatures/sift.py), written a block of rows at a time into the version's three keypoint files, so
the gateway can confirm the very product a shopper photographed (ranking/verify.py).

It reads each product's photo once more (from the download cache for remote images) and runs SIFT beside
nothing else: 9.2 ms a Myntra photo on one core with its read and decode (measured, docs/QUALITY.md), so it
is off by default. It is not resumable: a build that dies in it runs it again from the start (the embedding
shards are kept).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from numpy.lib.format import open_memmap

from catalog.fetch import FetchError, ImageSource
from indexstore.store import LOCAL_COUNTS, LOCAL_DESCRIPTORS, LOCAL_POINTS
from localfeatures.sift import DESCRIPTOR, DESCRIPTOR_BYTES, KEYPOINTS, NONE, LocalFeatures, extract
from modelio.imaging import DEFAULT_MAX_PIXELS, ImageError, decode_image

log = logging.getLogger(__name__)

#: Rows extracted before they are written out (the memory the pass holds: ~16.5 KB a row).
BLOCK = 1024


def manifest_entry() -> dict:
    """The manifest's ``local_features`` section for files written by this code."""
    return {"descriptor": DESCRIPTOR, "keypoints": KEYPOINTS}


def row_features(source: ImageSource, row: dict) -> LocalFeatures:
    """One product's keypoints; none (and a warning) when its photo cannot be read again."""
    try:
        return extract(decode_image(source.fetch(str(row["image_url"])), DEFAULT_MAX_PIXELS))
    except (FetchError, ImageError) as exc:
        log.warning("no keypoints for product %s: %s", row.get("id"), exc)
        return NONE


def write_local_features(rows: Sequence[dict], source: ImageSource, folder: Path, workers: int = 2
                         ) -> dict[str, Path]:
    """The keypoint files of ``rows`` (in row order) under ``folder``, by their names in a version."""
    count = len(rows)
    paths = {name: folder / name for name in (LOCAL_DESCRIPTORS, LOCAL_POINTS, LOCAL_COUNTS)}
    descriptors = open_memmap(paths[LOCAL_DESCRIPTORS], "w+", np.uint8, (count, KEYPOINTS, DESCRIPTOR_BYTES))
    points = open_memmap(paths[LOCAL_POINTS], "w+", np.float16, (count, KEYPOINTS, 2))
    counts = open_memmap(paths[LOCAL_COUNTS], "w+", np.uint16, (count,))
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        for start in range(0, count, BLOCK):
            block = [rows[i] for i in range(start, min(count, start + BLOCK))]
            for offset, features in enumerate(pool.map(lambda row: row_features(source, row), block)):
                n = len(features)
                descriptors[start + offset, :n] = features.descriptors
                points[start + offset, :n] = features.points
                counts[start + offset] = n
            for array in (descriptors, points, counts):
                array.flush()
    del descriptors, points, counts  # the memory maps closed before the files are streamed to the store
    return paths
