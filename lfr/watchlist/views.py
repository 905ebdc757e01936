"""Augmented views of an enrolment photo: the photo's face re-aligned with a little scale and shift
jitter, and a mildly blurred copy. Each view is embedded (the embedder's flip adds the mirrored
face); their mean is the entry's template, which then depends less on one crop of one photo."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from lfr.vision.align import align_face

SCALES = (0.94, 1.06)  # landmark spread: the aligned face 6 % larger or smaller
SHIFT = 0.06  # of the eye distance, in each of four directions
BLUR_SIGMA = 1.0  # pixels of the 112 px aligned face


def enrolment_views(image: np.ndarray, landmarks: Sequence[Sequence[float]]) -> list[np.ndarray]:
    """The aligned face first, then its jittered and blurred views (112 x 112, as ``image``)."""
    points = np.asarray(landmarks, np.float64)
    centre = points.mean(axis=0)
    eye_distance = float(np.linalg.norm(points[1] - points[0]))
    plain = align_face(image, points.tolist())
    views = [plain]
    views += [align_face(image, (centre + (points - centre) * s).tolist()) for s in SCALES]
    step = SHIFT * eye_distance
    views += [align_face(image, (points + offset).tolist())
              for offset in ((step, 0.0), (-step, 0.0), (0.0, step), (0.0, -step))]
    views.append(cv2.GaussianBlur(plain, (0, 0), BLUR_SIGMA))
    return views


def template(view_embeddings: np.ndarray) -> np.ndarray:
    """One L2-normalised row from the views' embeddings (their mean direction)."""
    mean = np.asarray(view_embeddings, np.float64).mean(axis=0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)
