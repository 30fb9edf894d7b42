"""An index version's manifest as typed, checked values: the part of ``manifest.json`` that serving reads.

The store is untrusted input: ``Manifest.parse`` checks every field serving uses (types, ranges, finite
numbers, a monotone calibration, required keys) when a version is read from the store (indexstore/store.py
``read_manifest``), so a version that fails is refused like a bad checksum and the one served before keeps
serving. Optional sections a build may leave out or write as null (an older build, a small catalog) read
as None; a section that is there must be right.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

#: Longest backbone id a manifest may name (real ones are ~60 characters).
MAX_BACKBONE_CHARS = 200


class ManifestError(ValueError):
    """A manifest field with the wrong type, a number out of range or not finite, or a key missing."""


@dataclass(frozen=True)
class Manifest:
    """What serving reads of a version's manifest."""

    version: str
    backbone: str  # the id of the vector function that made the embeddings
    count: int  # products (rows)
    dim: int  # the model vector's length
    calibration: tuple[tuple[float, float], ...] | None  # (cosine, percent) points; None: uncalibrated
    no_match_percent: float | None  # the fitted "no close match" threshold; None: never said
    appearance_descriptor: str | None  # the colour descriptor the appearance files were made with
    appearance_weight: float | None
    local_features: str | None = None  # the local-feature descriptor of the version's keypoint files

    @classmethod
    def parse(cls, raw: object) -> Manifest:
        """The typed manifest of ``raw`` (parsed JSON), or ``ManifestError`` naming the first bad field."""
        if not isinstance(raw, dict):
            raise ManifestError(f"the manifest is a {type(raw).__name__}, not an object")
        backbone = _required(raw, "backbone", str)
        if not backbone or len(backbone) > MAX_BACKBONE_CHARS:
            raise ManifestError(f"backbone must be 1 to {MAX_BACKBONE_CHARS} characters")
        count, dim = _whole(raw, "count"), _whole(raw, "dim")
        if count > 0 and dim == 0:
            raise ManifestError("dim is 0 for a version with products")
        appearance = _section(raw, "appearance")
        local = _section(raw, "local_features")
        return cls(_required(raw, "version", str), backbone, count, dim, _calibration(raw),
                   _no_match(raw), None if appearance is None else _required(appearance, "descriptor", str,
                                                                               "appearance."),
                   None if appearance is None else _number(appearance, "weight", 0, 1, "appearance."),
                   None if local is None else _required(local, "descriptor", str, "local_features."))


def _required(raw: dict, key: str, kind: type, where: str = "") -> object:
    if key not in raw:
        raise ManifestError(f"{where}{key} is missing")
    value = raw[key]
    if not isinstance(value, kind) or isinstance(value, bool) and kind is not bool:
        raise ManifestError(f"{where}{key} must be {_kind_name(kind)}, not {type(value).__name__}")
    return value


def _kind_name(kind: type) -> str:
    return {str: "text", int: "a whole number", dict: "an object", list: "a list"}.get(kind, kind.__name__)


def _whole(raw: dict, key: str) -> int:
    value = _required(raw, key, int)
    if value < 0:
        raise ManifestError(f"{key} must be at least 0, not {value}")
    return value


def _number(raw: dict, key: str, low: float, high: float, where: str = "") -> float:
    """A finite number in [low, high] (JSON true is not 1)."""
    value = raw.get(key)
    if key not in raw:
        raise ManifestError(f"{where}{key} is missing")
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ManifestError(f"{where}{key} must be a number, not {type(value).__name__}")
    if not math.isfinite(value) or not low <= value <= high:
        raise ManifestError(f"{where}{key} must be a finite number from {low:g} to {high:g}, not {value!r}")
    return float(value)


def _section(raw: dict, key: str) -> dict | None:
    """An optional object: None when left out or null."""
    value = raw.get(key)
    if value is None:
        return None
    if not isinstance(value, dict):
        raise ManifestError(f"{key} must be an object or null, not {type(value).__name__}")
    return value


def _calibration(raw: dict) -> tuple[tuple[float, float], ...] | None:
    """The calibration points: at least two [cosine, percent] pairs, cosines in [-1, 1], percents in
    [0, 100], both strictly increasing (so the map and its inverse are functions)."""
    section = _section(raw, "calibration")
    if section is None:
        return None
    points = _required(section, "points", list, "calibration.")
    if len(points) < 2 or len(points) > 64:
        raise ManifestError(f"calibration.points must hold 2 to 64 points, not {len(points)}")
    checked = []
    for i, point in enumerate(points):
        if not isinstance(point, list) or len(point) != 2:
            raise ManifestError(f"calibration.points[{i}] must be a [cosine, percent] pair")
        pair = dict(zip(("cosine", "percent"), point, strict=True))
        where = f"calibration.points[{i}]."
        checked.append((_number(pair, "cosine", -1, 1, where), _number(pair, "percent", 0, 100, where)))
    for (c0, p0), (c1, p1) in zip(checked, checked[1:], strict=False):
        if not (c0 < c1 and p0 < p1):
            raise ManifestError("calibration.points must increase strictly in both cosine and percent")
    return tuple(checked)


def _no_match(raw: dict) -> float | None:
    section = _section(raw, "no_match")
    return None if section is None else _number(section, "percent", 0, 100, "no_match.")
