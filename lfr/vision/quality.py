"""Face quality: pixel size, detector score and sharpness, with configurable minimums."""

from __future__ import annotations

import cv2
import msgspec
import numpy as np

from lfr.messages import Detection


def sharpness_of(aligned: np.ndarray) -> float:
    """Variance of the Laplacian of the aligned face in grey."""
    grey = cv2.cvtColor(aligned, cv2.COLOR_BGR2GRAY)
    return float(cv2.Laplacian(grey, cv2.CV_64F).var())


class QualityReport(msgspec.Struct, frozen=True):
    face_px: float  # inter-ocular-independent size: the shorter side of the box
    det_score: float
    sharpness: float  # variance of the Laplacian of the aligned grey face
    score: float  # 0..1 combined, used to weight a face against others of the same person
    passed: bool
    reason: str = ""  # why it failed, for enrolment outcomes


class QualityGate(msgspec.Struct, frozen=True):
    min_face_px: float = 24.0
    min_det_score: float = 0.0
    min_sharpness: float = 0.0

    def assess(self, detection: Detection, aligned: np.ndarray) -> QualityReport:
        return self.judge(detection, sharpness_of(aligned))

    def judge(self, detection: Detection, sharpness: float) -> QualityReport:
        """The report for a face whose sharpness is known (measured here, or stored offline by
        ``lfr.vision.replay``): the same rule either way."""
        face_px = float(min(detection.box[2], detection.box[3]))
        # Each term saturates: a 96 px, sharp, confident face is as good as it gets.
        score = (min(1.0, face_px / 96.0) * min(1.0, sharpness / 200.0) ** 0.5
                 * detection.score)
        reason = ""
        if face_px < self.min_face_px:
            reason = f"face too small ({face_px:.0f} px < {self.min_face_px:.0f} px)"
        elif detection.score < self.min_det_score:
            reason = f"detector score {detection.score:.2f} < {self.min_det_score:.2f}"
        elif sharpness < self.min_sharpness:
            reason = f"too blurred (sharpness {sharpness:.0f} < {self.min_sharpness:.0f})"
        return QualityReport(face_px=face_px, det_score=detection.score, sharpness=sharpness,
                             score=float(score), passed=not reason, reason=reason)
