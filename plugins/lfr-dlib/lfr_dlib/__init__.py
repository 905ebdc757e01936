"""lfr-dlib: dlib's face detector (HOG, or the CNN "mmod" model) and ResNet face embedder.

The models are dlib's, packaged by ``face_recognition_models`` (CC0): the same ones the
``face_recognition`` library uses. Landmarks come from dlib's 68-point shape predictor, reduced to
the 5 points lfr aligns with (eye centres, nose tip, mouth corners). lfr hands embedders faces
aligned to the 112x112 ArcFace template; the embedder maps them into dlib's own 150x150 chip
geometry (``DLIB_CHIP_TEMPLATE``, measured on lfw-dev) before computing the 128-d descriptor, and
L2-normalises it so that lfr's cosine scores apply.
"""

from __future__ import annotations

import math
import threading
from typing import Annotated, Any, Literal

import numpy as np
from lfr.api import BackendSettings, BuildContext, Detection, Register, hookimpl
from msgspec import Meta

LFR_PLUGIN_API = 1
__version__ = "0.1.0"

Score = Annotated[float, Meta(gt=0.0, lt=1.0)]

# Where dlib.get_face_chip(size=150, padding=0.25) puts the eye centres, nose tip and mouth
# corners (68-point landmarks, mean over 185 lfw-dev faces; spread ~1.5 px at the eyes).
DLIB_CHIP_TEMPLATE = np.array(
    [[47.1, 46.3], [100.6, 46.5], [74.3, 75.1], [49.9, 104.7], [98.2, 104.9]], np.float64
)
CHIP_SIZE = 150


def _models() -> Any:
    import face_recognition_models

    return face_recognition_models


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def _sigmoid(x: float) -> float:
    return 1 / (1 + math.exp(-x))


class DlibDetectorSettings(BackendSettings, frozen=True, tag="dlib"):
    model: Literal["hog", "cnn"] = "hog"  # cnn: more accurate, far slower on a CPU
    upsample: Annotated[int, Meta(ge=0, le=3)] = 1  # each doubles the image: finds smaller faces
    score_threshold: Score = 0.5  # on sigmoid(dlib score); 0.5 is dlib's own default
    max_side: Annotated[int, Meta(ge=64)] = 1280  # larger frames are shrunk first


class DlibEmbedderSettings(BackendSettings, frozen=True, tag="dlib"):
    jitters: Annotated[int, Meta(ge=0, le=100)] = 0  # re-sample each face N times (slower)


class DlibDetector:
    """``lfr.api.Detector``: dlib detection + 68-point landmarks, reduced to lfr's 5 points.

    Scores are sigmoid(dlib's detection score), so ``score_threshold`` 0.5 is dlib's threshold 0.
    """

    def __init__(
        self,
        model: str = "hog",
        upsample: int = 1,
        score_threshold: float = 0.5,
        max_side: int = 1280,
    ) -> None:
        import dlib

        if model not in ("hog", "cnn"):
            raise ValueError(f"model must be 'hog' or 'cnn', got {model!r}")
        models = _models()
        self.name = f"dlib-{model}"
        self.model = model
        self.upsample = upsample
        self.score_threshold = score_threshold
        self.max_side = max_side
        self._hog = dlib.get_frontal_face_detector() if model == "hog" else None
        self._cnn = (
            dlib.cnn_face_detection_model_v1(models.cnn_face_detector_model_location())
            if model == "cnn"
            else None
        )
        self._shape = dlib.shape_predictor(models.pose_predictor_model_location())
        self._lock = threading.Lock()  # dlib objects are not documented as thread-safe

    def detect(self, image: np.ndarray, score_threshold: float | None = None) -> list[Detection]:
        import cv2
        import dlib

        threshold = self.score_threshold if score_threshold is None else score_threshold
        threshold = min(max(threshold, 1e-6), 1 - 1e-6)
        scale = min(1.0, self.max_side / max(image.shape[:2]))
        small = (
            image
            if scale == 1.0
            else cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        )
        rgb = np.ascontiguousarray(small[:, :, ::-1])
        with self._lock:
            if self._hog is not None:
                rects, raw, _ = self._hog.run(rgb, self.upsample, _logit(threshold))
                found = list(zip(rects, raw, strict=True))
            else:
                assert self._cnn is not None
                found = [
                    (d.rect, d.confidence)
                    for d in self._cnn(rgb, self.upsample)
                    if d.confidence >= _logit(threshold)
                ]
            shapes = [
                self._shape(rgb, dlib.rectangle(r.left(), r.top(), r.right(), r.bottom()))
                for r, _ in found
            ]
        out = []
        for (rect, raw_score), shape in zip(found, shapes, strict=True):
            p = np.array([[shape.part(i).x, shape.part(i).y] for i in range(68)], np.float64)
            five = np.array([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]]) / scale
            left, top = rect.left() / scale, rect.top() / scale
            width, height = rect.width() / scale, rect.height() / scale
            out.append(
                Detection(
                    box=(float(left), float(top), float(width), float(height)),
                    landmarks=tuple((float(x), float(y)) for x, y in five),
                    score=float(_sigmoid(float(raw_score))),
                )
            )
        out.sort(key=lambda d: d.score, reverse=True)
        return out


class DlibEmbedder:
    """``lfr.api.Embedder``: dlib's ResNet descriptor (128-d), L2-normalised."""

    dim = 128

    def __init__(self, jitters: int = 0) -> None:
        import dlib
        from lfr.vision.align import ARCFACE_TEMPLATE, similarity_transform

        self.name = "dlib-resnet" + (f"-j{jitters}" if jitters else "")
        self.jitters = jitters
        self._model = dlib.face_recognition_model_v1(_models().face_recognition_model_location())
        # ArcFace 112x112 crop -> dlib's 150x150 chip: one fixed similarity.
        self._to_chip = similarity_transform(ARCFACE_TEMPLATE, DLIB_CHIP_TEMPLATE)
        self._lock = threading.Lock()

    def chip(self, aligned_bgr: np.ndarray) -> np.ndarray:
        """dlib's 150x150 RGB chip from lfr's aligned face (the strip below the chin that the
        112x112 crop lacks is filled by replicating its edge)."""
        import cv2

        chip = cv2.warpAffine(
            aligned_bgr,
            self._to_chip,
            (CHIP_SIZE, CHIP_SIZE),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )
        return np.ascontiguousarray(chip[:, :, ::-1])

    def embed(self, aligned_bgr: list[np.ndarray]) -> np.ndarray:
        if not aligned_bgr:
            return np.zeros((0, self.dim), np.float32)
        chips = [self.chip(face) for face in aligned_bgr]
        with self._lock:
            vectors = np.array(self._model.compute_face_descriptor(chips, self.jitters), np.float32)
        vectors = vectors.reshape(len(chips), self.dim)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        out: np.ndarray = (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
        return out


@hookimpl
def lfr_register_detectors(register: Register) -> None:
    def build(settings: DlibDetectorSettings, context: BuildContext) -> DlibDetector:
        return DlibDetector(
            settings.model, settings.upsample, settings.score_threshold, settings.max_side
        )

    register("dlib", build, settings=DlibDetectorSettings)


@hookimpl
def lfr_register_embedders(register: Register) -> None:
    def build(settings: DlibEmbedderSettings, context: BuildContext) -> DlibEmbedder:
        return DlibEmbedder(settings.jitters)

    register("dlib", build, settings=DlibEmbedderSettings)
