"""The default vision stack: bundled YuNet + SFace (with flip), as the default config builds it."""

from __future__ import annotations

from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.detect import YuNetDetector
from lfr.vision.embed import OnnxEmbedder
from lfr.vision.models import BUNDLED_DETECTOR, BUNDLED_EMBEDDER, resolve_model
from lfr.vision.quality import QualityGate


def default_detector(score_threshold: float = 0.7, max_side: int = 1920) -> YuNetDetector:
    return YuNetDetector(resolve_model(None, BUNDLED_DETECTOR),
                         score_threshold=score_threshold, max_side=max_side)


def default_analyzer(score_threshold: float = 0.7, max_side: int = 1920,
                     gate: QualityGate | None = None, flip: bool = True) -> FaceAnalyzer:
    detector = default_detector(score_threshold, max_side)
    embedder = OnnxEmbedder(resolve_model(None, BUNDLED_EMBEDDER), flip=flip)
    return FaceAnalyzer(detector, embedder, gate)
