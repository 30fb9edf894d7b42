"""The colour descriptor of a photo: two colour histograms (hue × saturation × value, plus greys) of its
foreground, the background being the colour of the border: a fine one of the whole foreground, and a coarse one
of its centre without skin (where a worn product is, without the wearer). Computed where the photo is decoded
anyway: by the model's handler for the index build (the vector and the descriptor from one decode), and by the
gateway for a query. ranking/appearance.py turns it into the appearance vector that orders products inside a
category (docs/QUALITY.md point 11 has what each part adds).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Identifies the descriptor below: an index built with another one is not re-ranked by this code.
DESCRIPTOR = "hsv-fg224-centre112-v2"
HUE_BINS, SAT_BINS, VAL_BINS, GREY_BINS = 12, 3, 3, 4
#: The coarse histogram's bins (the centre's, and the whole foreground's summed from the fine one).
COARSE_SIZE = HUE_BINS * SAT_BINS * VAL_BINS + GREY_BINS
#: The fine histogram has twice the hues and twice the greys: each coarse bin is the sum of two fine ones.
FINE_SIZE = 2 * HUE_BINS * SAT_BINS * VAL_BINS + 2 * GREY_BINS
#: The descriptor: the fine histogram of the foreground, then the coarse one of its centre without skin.
HIST_SIZE = FINE_SIZE + COARSE_SIZE
#: Photos are described at this size (colour needs no detail).
SIDE = 64
#: A pixel is foreground when a channel differs from the border's median colour by more than this.
FOREGROUND = 0.12
#: Below this share of foreground pixels the whole photo is described (no clear background).
MIN_FOREGROUND = 0.05
#: The centre: the middle half of each side.
CENTRE = slice(SIDE // 4, SIDE - SIDE // 4)
#: Below this many foreground pixels without skin in the centre, the centre histogram is the foreground's.
MIN_CENTRE = 20


def histogram_of(img: Image.Image) -> np.ndarray:
    """The colour descriptor (``HIST_SIZE`` floats: two histograms, each summing to 1) of an RGB image.

    Worked on colour planes (3 × pixels) rather than pixels × 3: numpy's reductions over a last axis of 3 are
    slow, and a query pays this while its vector is computed."""
    small = (img if img.mode == "RGB" else img.convert("RGB")).resize((SIDE, SIDE), Image.BILINEAR)
    x = np.ascontiguousarray(np.asarray(small, dtype=np.float32).transpose(2, 0, 1)) / 255
    border = np.concatenate([x[:, 0], x[:, -1], x[:, :, 0], x[:, :, -1]], axis=1)
    off = np.abs(x - np.median(border, axis=1)[:, None, None])
    fg = np.maximum(np.maximum(off[0], off[1]), off[2]) > FOREGROUND
    if fg.mean() < MIN_FOREGROUND:
        fg[:] = True
    hue, sat, val = _hsv(x.reshape(3, -1))
    fine = _binned(hue, sat, val, 2 * HUE_BINS, 2 * GREY_BINS)
    centre = np.zeros_like(fg)
    centre[CENTRE, CENTRE] = True
    worn = (fg & centre & ~_skin(x)).ravel()
    whole = fg.ravel()
    parts = (_counts(fine[whole], FINE_SIZE),
             _counts(_COARSE_BIN[fine[worn] if worn.sum() >= MIN_CENTRE else fine[whole]], COARSE_SIZE))
    return np.concatenate(parts).astype(np.float32)


def _coarse_bins() -> np.ndarray:
    """The coarse bin of each fine bin (two hues, or two greys, make one)."""
    chroma = HUE_BINS * SAT_BINS * VAL_BINS
    fine = np.arange(FINE_SIZE)
    return np.where(fine < 2 * chroma, (fine // (2 * SAT_BINS * VAL_BINS)) * SAT_BINS * VAL_BINS
                    + fine % (SAT_BINS * VAL_BINS), chroma + (fine - 2 * chroma) // 2)


#: Made once: the coarse bin of each fine bin, and the same as a (fine × coarse) 0/1 matrix.
_COARSE_BIN = _coarse_bins()
_TO_COARSE = np.eye(COARSE_SIZE, dtype=np.float32)[_COARSE_BIN]


def coarse_of(descriptors: np.ndarray) -> np.ndarray:
    """The coarse histogram of the whole foreground (rows) from descriptors' fine histograms (rows): each fine bin
    added to its coarse one."""
    return np.atleast_2d(descriptors)[:, :FINE_SIZE] @ _TO_COARSE


def centre_of(descriptors: np.ndarray) -> np.ndarray:
    """The centre's histogram (rows) of descriptors (rows)."""
    return np.atleast_2d(descriptors)[:, FINE_SIZE:HIST_SIZE]


def _binned(hue: np.ndarray, sat: np.ndarray, val: np.ndarray, hues: int, greys: int) -> np.ndarray:
    """Each pixel's bin of a histogram with ``hues`` hues (× ``SAT_BINS`` × ``VAL_BINS``) and ``greys`` greys."""
    chroma = (sat > 0.2) & (val > 0.2)
    hi = np.minimum((hue * hues).astype(int), hues - 1)
    si = np.minimum(((sat - 0.2) / 0.8 * SAT_BINS).astype(int), SAT_BINS - 1)
    vi = np.minimum(((val - 0.2) / 0.8 * VAL_BINS).astype(int), VAL_BINS - 1)
    gi = np.minimum((val * greys).astype(int), greys - 1)
    return np.where(chroma, hi * SAT_BINS * VAL_BINS + si * VAL_BINS + vi, hues * SAT_BINS * VAL_BINS + gi)


def _counts(bins: np.ndarray, size: int) -> np.ndarray:
    """The histogram of ``bins`` (never empty: the foreground has at least ``MIN_FOREGROUND`` of the photo and the
    centre at least ``MIN_CENTRE`` pixels)."""
    return np.bincount(bins, minlength=size) / bins.size


def _skin(x: np.ndarray) -> np.ndarray:
    """Pixels of skin tones of the colour planes ``x`` (0–1): Kovač et al.'s rule for daylight photos (its
    |r − g| > 15 and r > g are r − g > 15 here, and its max − min > 15 follows from them)."""
    r, g, b = x * 255
    return (r > 95) & (g > 40) & (b > 20) & (r - g > 15) & (r > b)


def _hsv(planes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Hue (0–1, 0 for greys), saturation and value of each pixel of ``planes`` (red, green, blue rows)."""
    r, g, b = planes
    top = np.maximum(np.maximum(r, g), b)
    spread = top - np.minimum(np.minimum(r, g), b)
    coloured = spread > 1e-6
    safe = np.where(coloured, spread, 1.0)
    hue = np.where(r == top, (g - b) / safe, np.where(g == top, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.where(coloured, (hue / 6.0) % 1.0, 0.0)
    lit = top > 1e-6
    sat = np.where(lit, spread / np.where(lit, top, 1.0), 0.0)
    return hue, sat, top
