"""Detect, align, assess and embed: one vision path, used live, for enrolment and in evaluation."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import numpy as np

from lfr.api import Detector, Embedder  # the protocols, re-exported here
from lfr.messages import Detection
from lfr.vision.align import align_face
from lfr.vision.quality import QualityGate, QualityReport


class AnalyzedFace(msgspec.Struct, frozen=True):
    detection: Detection
    aligned: np.ndarray  # 112 x 112 BGR
    quality: QualityReport
    embedding: np.ndarray | None = None  # None when the quality gate rejected the face


class FaceAnalyzer:
    """Ties a detector, the aligner, a quality gate and an embedder together."""

    def __init__(self, detector: Detector, embedder: Embedder,
                 gate: QualityGate | None = None) -> None:
        self.detector = detector
        self.embedder = embedder
        self.gate = gate or QualityGate()

    def detect(self, image: np.ndarray, score_threshold: float | None = None,
               min_face_px: float | None = None) -> list[AnalyzedFace]:
        """Detect, align and assess every face (no embedding yet). ``min_face_px``: a camera's
        smallest face that must be found, for detectors that say ``takes_min_face_px`` (YuNet:
        lfr.vision.tiling); None: the detector's own setting."""
        if min_face_px is not None and getattr(self.detector, "takes_min_face_px", False):
            found = cast(Any, self.detector).detect(image, score_threshold, min_face_px)
        else:
            found = self.detector.detect(image, score_threshold)
        faces = []
        for det in found:
            aligned = align_face(image, det.landmarks)
            faces.append(AnalyzedFace(detection=det, aligned=aligned,
                                      quality=self.gate.assess(det, aligned)))
        return faces

    def embed(self, faces: list[AnalyzedFace]) -> list[AnalyzedFace]:
        """Embed the faces that passed the quality gate (one batched call); others pass through."""
        good = [i for i, f in enumerate(faces) if f.quality.passed]
        vectors = self.embedder.embed([faces[i].aligned for i in good])
        out = list(faces)
        for row, i in enumerate(good):
            out[i] = msgspec.structs.replace(faces[i], embedding=vectors[row])
        return out

    def analyze(self, image: np.ndarray, score_threshold: float | None = None
                ) -> list[AnalyzedFace]:
        return self.embed(self.detect(image, score_threshold))
