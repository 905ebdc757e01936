"""Detect, align, assess and embed: one vision path, used live, for enrolment and in evaluation."""

from __future__ import annotations

from typing import Any, cast

import msgspec
import numpy as np

from lfr.api import Detector, Embedder  # the protocols, re-exported here
from lfr.messages import Detection
from lfr.vision.align import align_face
from lfr.vision.quality import QualityGate, QualityReport
from lfr.vision.replay import StoredFace

# A replayed face's aligned picture: it arrives embedded (or rejected by the gate on its stored
# sharpness), so it is never aligned; aligning it on a blank replay frame was most of a replayed
# frame's cost. Shared and read-only.
_NOT_ALIGNED = np.zeros((112, 112, 3), np.uint8)
_NOT_ALIGNED.flags.writeable = False


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
        # A replay detector's faces are a table lookup (about 0.1 ms a frame), not a model run.
        self.replays = getattr(detector, "replayed", None) is not None

    def detect(self, image: np.ndarray, score_threshold: float | None = None,
               min_face_px: float | None = None) -> list[AnalyzedFace]:
        """Detect, align and assess every face (no embedding yet, except for a replay
        detector's faces: they come embedded, computed offline by the real models).
        ``min_face_px``: a camera's smallest face that must be found, for detectors that say
        ``takes_min_face_px`` (YuNet: lfr.vision.tiling); None: the detector's own setting."""
        replayed = getattr(self.detector, "replayed", None)
        if replayed is not None:
            return [self._stored(face) for face in replayed(image, score_threshold)]
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

    def _stored(self, face: StoredFace) -> AnalyzedFace:
        quality = self.gate.judge(face.detection, face.sharpness)
        return AnalyzedFace(detection=face.detection, aligned=_NOT_ALIGNED, quality=quality,
                            embedding=face.embedding if quality.passed else None)

    def embed(self, faces: list[AnalyzedFace]) -> list[AnalyzedFace]:
        """Embed the faces that passed the quality gate (one batched call); others pass through,
        as do faces that came embedded (replayed)."""
        good = [i for i, f in enumerate(faces) if f.quality.passed and f.embedding is None]
        if not good:
            return list(faces)
        vectors = self.embedder.embed([faces[i].aligned for i in good])
        out = list(faces)
        for row, i in enumerate(good):
            out[i] = msgspec.structs.replace(faces[i], embedding=vectors[row])
        return out

    def analyze(self, image: np.ndarray, score_threshold: float | None = None
                ) -> list[AnalyzedFace]:
        return self.embed(self.detect(image, score_threshold))
