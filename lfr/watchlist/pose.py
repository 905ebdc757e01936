"""Head pose from the detector's five landmarks: frontal or turned."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np


def yaw_ratio(landmarks: Sequence[Sequence[float]]) -> float:
    """How far the nose sits from the eyes' midline, along the eye line, in eye distances: about
    0 for a frontal face, 0.3 or more for a face turned well aside (sign: which way). Measured
    along the eye line, so a tilted head reads the same as an upright one."""
    points = np.asarray(landmarks, np.float64)
    if points.shape != (5, 2):
        raise ValueError(f"expected 5 (x, y) landmarks, got shape {points.shape}")
    left, right, nose = points[0], points[1], points[2]
    axis = right - left
    distance = float(np.linalg.norm(axis))
    if distance < 1e-6:
        return 0.0
    return float(np.dot(nose - (left + right) / 2, axis) / distance**2)
