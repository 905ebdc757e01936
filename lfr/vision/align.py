"""5-point similarity alignment to the ArcFace 112x112 template (as OpenCV's FaceRecognizerSF)."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

ARCFACE_TEMPLATE = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655],
     [70.7299, 92.2041]],
    dtype=np.float64,
)
ALIGNED_SIZE = 112


def similarity_transform(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation) mapping src to dst (Umeyama).

    Returns the 2x3 affine matrix.
    """
    src_mean, dst_mean = src.mean(axis=0), dst.mean(axis=0)
    src_c, dst_c = src - src_mean, dst - dst_mean
    cov = dst_c.T @ src_c / len(src)
    u, s, vt = np.linalg.svd(cov)
    d = np.ones(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        d[1] = -1
    rotation = u @ np.diag(d) @ vt
    var_src = (src_c**2).sum() / len(src)
    scale = float((s * d).sum() / var_src) if var_src > 0 else 1.0
    matrix = np.zeros((2, 3))
    matrix[:, :2] = scale * rotation
    matrix[:, 2] = dst_mean - scale * rotation @ src_mean
    return matrix


def align_face(image: np.ndarray, landmarks: Sequence[Sequence[float]]) -> np.ndarray:
    """The 112x112 aligned face (same channel order as ``image``)."""
    matrix = similarity_transform(np.asarray(landmarks, np.float64), ARCFACE_TEMPLATE)
    return cv2.warpAffine(image, matrix, (ALIGNED_SIZE, ALIGNED_SIZE), flags=cv2.INTER_LINEAR)
