"""Obscuring faces that are not on the watchlist: in viewers, and in the context of alert crops."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import cv2
import numpy as np

Box = tuple[float, float, float, float]  # x, y, width, height
BLUR_PAD = 0.25  # share of the face box added on each side before obscuring (hair, ears)


def padded_box(box: Box, shape: tuple[int, ...], pad: float = BLUR_PAD
               ) -> tuple[int, int, int, int]:
    """The box grown by ``pad`` on each side, clipped to the image: x0, y0, x1, y1."""
    x, y, w, h = box
    height, width = shape[:2]
    x0 = max(0, math.floor(x - w * pad))
    y0 = max(0, math.floor(y - h * pad))
    x1 = min(width, math.ceil(x + w * (1 + pad)))
    y1 = min(height, math.ceil(y + h * (1 + pad)))
    return x0, y0, max(x0, x1), max(y0, y1)


def obscure(image: np.ndarray, box: Box) -> None:
    """Pixelate (about 6 cells across) then smooth the padded face box, in place.

    Pixelation removes identity for good; the smoothing only hides the cell edges.
    """
    x0, y0, x1, y1 = padded_box(box, image.shape)
    w, h = x1 - x0, y1 - y0
    if w < 2 or h < 2:
        return
    region = image[y0:y1, x0:x1]
    side = max(w, h)
    small = cv2.resize(region, (max(1, round(6 * w / side)), max(1, round(6 * h / side))),
                       interpolation=cv2.INTER_AREA)
    coarse = cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST)
    k = max(3, (min(w, h) // 6) | 1)
    region[...] = cv2.GaussianBlur(coarse, (k, k), 0)


def context_crop(image: np.ndarray, box: Sequence[float], others: Iterable[Box] = (),
                 margin: float = 0.4, max_side: int = 192) -> np.ndarray:
    """The face with some context around it, for the officer to compare (kept only on a match).

    Other faces that fall inside the context (``others``: every other detection of the frame)
    are obscured: an alert must not carry a bystander's face.
    """
    x, y, w, h = box
    cx, cy, side = x + w / 2, y + h / 2, max(w, h) * (1 + 2 * margin)
    x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))
    x1 = min(image.shape[1], max(int(cx + side / 2), x0 + 1))
    y1 = min(image.shape[0], max(int(cy + side / 2), y0 + 1))
    crop = image[y0:y1, x0:x1].copy()
    for ox, oy, ow, oh in others:
        if ox < x1 and oy < y1 and ox + ow > x0 and oy + oh > y0:
            obscure(crop, (ox - x0, oy - y0, ow, oh))
    longest = max(crop.shape[:2])
    if longest > max_side:
        factor = max_side / longest
        crop = cv2.resize(crop, (max(1, round(crop.shape[1] * factor)),
                                 max(1, round(crop.shape[0] * factor))),
                          interpolation=cv2.INTER_AREA)
    return np.ascontiguousarray(crop)
