"""The colour descriptor of a photo: a foreground colour histogram (hue × saturation × value, plus greys; the
background is the colour of the border). Computed where the photo is decoded anyway: by the model's handler
for the index build (the vector and the histogram from one decode), and by the gateway for a query.
ranking/appearance.py turns it into the appearance vector that orders products inside a category.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

#: Identifies the histogram below: an index built with another one is not re-ranked by this code.
DESCRIPTOR = "hsv-fg-112-v1"
HUE_BINS, SAT_BINS, VAL_BINS, GREY_BINS = 12, 3, 3, 4
HIST_SIZE = HUE_BINS * SAT_BINS * VAL_BINS + GREY_BINS
#: Photos are described at this size (colour needs no detail).
SIDE = 64
#: A pixel is foreground when a channel differs from the border's median colour by more than this.
FOREGROUND = 0.12
#: Below this share of foreground pixels the whole photo is described (no clear background).
MIN_FOREGROUND = 0.05


def histogram_of(img: Image.Image) -> np.ndarray:
    """Foreground colour histogram (``HIST_SIZE`` bins summing to 1) of an RGB image."""
    x = np.asarray(img.convert("RGB").resize((SIDE, SIDE), Image.BILINEAR), dtype=np.float32) / 255
    border = np.concatenate([x[0], x[-1], x[:, 0], x[:, -1]])
    fg = np.abs(x - np.median(border, axis=0)).max(axis=-1) > FOREGROUND
    pixels = x[fg] if fg.mean() >= MIN_FOREGROUND else x.reshape(-1, 3)
    hue, sat, val = _hsv(pixels)
    chroma = (sat > 0.2) & (val > 0.2)
    hist = np.zeros(HIST_SIZE, np.float64)
    hi = np.minimum((hue * HUE_BINS).astype(int), HUE_BINS - 1)
    si = np.minimum(((sat - 0.2) / 0.8 * SAT_BINS).astype(int), SAT_BINS - 1)
    vi = np.minimum(((val - 0.2) / 0.8 * VAL_BINS).astype(int), VAL_BINS - 1)
    np.add.at(hist, (hi * SAT_BINS * VAL_BINS + si * VAL_BINS + vi)[chroma], 1)
    gi = np.minimum((val * GREY_BINS).astype(int), GREY_BINS - 1)
    np.add.at(hist, HUE_BINS * SAT_BINS * VAL_BINS + gi[~chroma], 1)
    return (hist / max(hist.sum(), 1)).astype(np.float32)


def _hsv(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    r, g, b = rgb[:, 0], rgb[:, 1], rgb[:, 2]
    top, spread = rgb.max(axis=1), rgb.max(axis=1) - rgb.min(axis=1)
    safe = np.where(spread > 1e-6, spread, 1.0)
    hue = np.where(r == top, (g - b) / safe, np.where(g == top, 2.0 + (b - r) / safe, 4.0 + (r - g) / safe))
    hue = np.where(spread > 1e-6, (hue / 6.0) % 1.0, 0.0)
    sat = np.where(top > 1e-6, spread / np.where(top > 1e-6, top, 1.0), 0.0)
    return hue, sat, top
