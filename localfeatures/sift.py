"""Local features of a photo: the details (a logo, a print, a strap, a seam) that tell the very product from
a lookalike of the same kind, where the CNN's one vector says only what kind of thing it is.

SIFT keypoints (OpenCV, no weights to download): the build keeps each product's strongest ``KEYPOINTS``
(docs/QUALITY.md "The exact product confirmed by its details"); the gateway extracts a query's from the part
of the photo it searched and counts, for each of the CNN's first candidates, the matches that are each
other's nearest, pass Lowe's ratio test and fit one similarity transform (RANSAC). ranking/verify.py decides
what the counts mean.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import cv2
import numpy as np
from PIL import Image

#: Identifies the features below: an index made with other ones is not verified by this code.
DESCRIPTOR = "sift-k128-s320-v1"
#: The most keypoints kept per photo (the strongest by SIFT's response): 16.5 KB a product in the index.
KEYPOINTS = 128
#: Photos are described with their longer side at most this many pixels (a catalog photo, a shopper's crop).
SIDE = 320
#: Lowe's ratio test: a match counts when its nearest descriptor is this much closer than the second (loose:
#: the matches must also be mutual, which removes more chance pairs than a strict ratio does).
RATIO = 0.9
#: A match is an inlier of the transform when it lands within this many pixels.
RANSAC_PIXELS = 5.0
#: Fewer matches than this cannot fix a transform worth counting.
MIN_MATCHES = 4
DESCRIPTOR_BYTES = 128

cv2.setNumThreads(1)  # one photo per thread: the gateway's and the build's own pools give the parallelism
_PER_THREAD = threading.local()


def _sift() -> cv2.SIFT:
    """This thread's SIFT detector (OpenCV does not promise one may serve several threads at once)."""
    if not hasattr(_PER_THREAD, "sift"):
        _PER_THREAD.sift = cv2.SIFT_create()
    return _PER_THREAD.sift


@dataclass(frozen=True)
class LocalFeatures:
    """One photo's keypoints: ``points`` (n, 2) float32 pixels, ``descriptors`` (n, 128) uint8, n ≤ KEYPOINTS."""

    points: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.points)


NONE = LocalFeatures(np.zeros((0, 2), np.float32), np.zeros((0, DESCRIPTOR_BYTES), np.uint8))


def extract(image: Image.Image) -> LocalFeatures:
    """The strongest ``KEYPOINTS`` SIFT keypoints of ``image`` (any mode), its longer side first brought down
    to ``SIDE``; none for a flat image."""
    grey = image.convert("L")
    size = described_size(*grey.size)
    if size != grey.size:
        grey = grey.resize(size, Image.BILINEAR)
    keypoints, descriptors = _sift().detectAndCompute(np.asarray(grey), None)
    if descriptors is None or not keypoints:
        return NONE
    order = np.argsort([-k.response for k in keypoints], kind="stable")[:KEYPOINTS]
    points = np.array([keypoints[i].pt for i in order], dtype=np.float32)
    return LocalFeatures(points, np.clip(descriptors[order], 0, 255).astype(np.uint8))


def described_size(width: int, height: int) -> tuple[int, int]:
    """The size a ``width`` × ``height`` photo is described at (``extract``): its longer side at most ``SIDE``;
    keypoints are pixels of that size."""
    longer = max(width, height)
    if longer <= SIDE:
        return width, height
    return max(1, round(width * SIDE / longer)), max(1, round(height * SIDE / longer))


def _root(descriptors: np.ndarray) -> np.ndarray:
    """RootSIFT (Arandjelović & Zisserman, 2012): each descriptor L1-normalised, then its square root, so that
    Euclidean distance compares them as the Hellinger kernel does (fewer false matches on strong bins)."""
    x = descriptors.astype(np.float32)
    return np.sqrt(x / np.maximum(x.sum(axis=1, keepdims=True), 1e-6))


def inliers(query: LocalFeatures, candidate: LocalFeatures) -> int:
    """How many of the query's keypoints match the candidate's and fit one similarity transform (rotation,
    scale, shift), compared as RootSIFT: the evidence that both photos show the same object."""
    return inliers_each(query, [candidate])[0]


def inliers_each(query: LocalFeatures, candidates: list[LocalFeatures]) -> list[int]:
    """``inliers`` of the query against each candidate, its descriptors compared with all of theirs at once
    (``_matches``)."""
    sizes = np.array([len(c) for c in candidates], dtype=np.int64)
    if len(query) < 2 or not (sizes >= 2).any():
        return [0] * len(candidates)
    good, nearest = _matches(query, candidates)
    return [_fitted(query, candidate, np.flatnonzero(good[i]), nearest[i]) if sizes[i] >= 2 else 0
            for i, candidate in enumerate(candidates)]


def _matches(query: LocalFeatures, candidates: list[LocalFeatures]) -> tuple[np.ndarray, np.ndarray]:
    """The query's matches with each candidate: (candidate, query keypoint) whether that keypoint's nearest in the
    candidate is a good match, and which keypoint it is. RootSIFT vectors have unit length, so distance² = 2 − 2 ·
    their dot product, and each query keypoint's two nearest in every candidate come from one matrix product
    (candidates padded to the longest with a vector no RootSIFT is near: a pad never matches). A match is good
    when it passes the ratio test and the query keypoint is its candidate keypoint's nearest too. Laid out (query
    keypoint, candidate, its keypoint): every reduction runs over contiguous memory or over the leading axis,
    which numpy vectorises."""
    width = max(len(c) for c in candidates)
    stacked = np.full((len(candidates), width, DESCRIPTOR_BYTES), -1.0, np.float32)  # RootSIFT is ≥ 0: a pad's
    for i, candidate in enumerate(candidates):  # similarity to any query keypoint is below every real one's
        stacked[i, :len(candidate)] = _root(candidate.descriptors)
    similarity = (_root(query.descriptors) @ stacked.reshape(-1, DESCRIPTOR_BYTES).T).reshape(
        len(query), len(candidates), width)
    nearest = similarity.argmax(axis=2)  # (query keypoint, candidate)
    first = np.take_along_axis(similarity, nearest[:, :, None], axis=2)[:, :, 0]
    # mutual: no other query keypoint is closer to that candidate keypoint (a tie counts for both)
    mutual = first >= similarity.max(axis=0)[np.arange(len(candidates))[None, :], nearest]
    np.put_along_axis(similarity, nearest[:, :, None], -np.inf, axis=2)
    second = similarity.max(axis=2)
    distance = np.sqrt(np.maximum(2.0 - 2.0 * np.stack([first, second]), 0.0))
    return ((distance[0] < RATIO * distance[1]) & mutual).T, nearest.T  # (candidate, query keypoint)


def _fitted(query: LocalFeatures, candidate: LocalFeatures, good: np.ndarray, nearest: np.ndarray) -> int:
    """How many of the ``good`` matches (query keypoints; ``nearest``: each one's nearest candidate keypoint)
    one similarity transform explains."""
    if len(good) < MIN_MATCHES:
        return 0
    source, target = query.points[good], candidate.points[nearest[good]]
    _, mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS)
    return 0 if mask is None else int(mask.sum())


@dataclass(frozen=True)
class Placement:
    """Where a candidate lies in the query: the similarity transform (2 × 3, candidate pixels → query pixels)
    that their matched keypoints fit, and how many of them fit it."""

    matrix: np.ndarray
    inliers: int

    def extent(self, points: np.ndarray) -> tuple[float, float, float, float]:
        """The box (left, top, right, bottom; query pixels) that the box around ``points`` (candidate pixels,
        e.g. all its keypoints: the product's own extent on a studio photo) covers, carried into the query."""
        (left, top), (right, bottom) = points.min(axis=0), points.max(axis=0)
        corners = np.array([[left, top], [right, top], [left, bottom], [right, bottom]])
        moved = corners @ self.matrix[:, :2].T + self.matrix[:, 2]
        (left, top), (right, bottom) = moved.min(axis=0), moved.max(axis=0)
        return float(left), float(top), float(right), float(bottom)


def placement(query: LocalFeatures, candidate: LocalFeatures) -> Placement | None:
    """Where ``candidate`` lies in ``query`` by their details (the matches ``inliers`` counts, fitted from the
    candidate's side); None when fewer than ``MIN_MATCHES`` match or no transform fits them."""
    if min(len(query), len(candidate)) < MIN_MATCHES:
        return None
    good, nearest = _matches(query, [candidate])
    chosen = np.flatnonzero(good[0])
    if len(chosen) < MIN_MATCHES:
        return None
    matrix, mask = cv2.estimateAffinePartial2D(candidate.points[nearest[0][chosen]], query.points[chosen],
                                               method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PIXELS)
    if matrix is None:  # OpenCV answers (None, None) when nothing fits
        return None
    return Placement(matrix, int(mask.sum()))
