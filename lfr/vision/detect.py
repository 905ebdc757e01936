"""YuNet face detection on frames of any size: resize, pad to a multiple of 32, decode, NMS."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from lfr.messages import Detection
from lfr.vision.onnx import GraphOptimization, create_session
from lfr.vision.tiling import DetectionPlan, cut_by_tile, merge, nms, plan_detection, shift, shrink

_STRIDES = (8, 16, 32)
__all__ = ["YuNetDetector", "nms"]


class YuNetDetector:
    """YuNet (2023mar) with a symbolic input size, so frames run at (up to) their native size.

    YuNet takes BGR float 0..255 without normalisation. Without ``min_face_px``, frames whose
    longer side exceeds ``max_side`` are shrunk first (keeping the aspect ratio); the rest run
    natively, because shrinking 1080p to 640 makes faces three times smaller. With
    ``min_face_px`` (the smallest face that must be found, in frame pixels) the frame is shrunk as
    far as keeps such a face detectable, and cut into tiles of ``tile_side`` (default
    ``max_side``) when that is still larger than ``max_side`` (lfr.vision.tiling).
    """

    name = "yunet"
    # detect() takes a camera's own min_face_px (lfr.vision.analyzer asks, through any wrapper).
    takes_min_face_px = True

    def __init__(self, model_path: Path, score_threshold: float = 0.7,
                 nms_threshold: float = 0.3, max_side: int = 1920, top_k: int = 500,
                 threads: int = 1, *, min_face_px: float | None = None,
                 tile_side: int | None = None, providers: Sequence[str] | None = None,
                 optimization: GraphOptimization = "all") -> None:
        self.session = create_session(model_path, threads, providers, optimization)
        self.min_face_px, self.tile_side = min_face_px, tile_side
        self._plans: dict[tuple[int, int, float | None], DetectionPlan] = {}
        self.input_name = self.session.get_inputs()[0].name
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side
        self.top_k = top_k

    def plan(self, width: int, height: int, min_face_px: float | None = None) -> DetectionPlan:
        """How a frame of this size is detected (``min_face_px``: this camera's, else the
        detector's); plans are kept per frame size, as a camera's size rarely changes."""
        face = self.min_face_px if min_face_px is None else min_face_px
        key = (width, height, face)
        plan = self._plans.get(key)
        if plan is None:
            plan = plan_detection(width, height, face, self.max_side, self.tile_side)
            if len(self._plans) > 64:  # frames of ever new sizes: stills of an enrolment
                self._plans.clear()
            self._plans[key] = plan
        return plan

    def detect(self, image: np.ndarray, score_threshold: float | None = None,
               min_face_px: float | None = None) -> list[Detection]:
        """Faces in a BGR uint8 image, best first, in the image's own pixel coordinates.

        ``min_face_px``: the smallest face (box width, frame pixels) that must be found, for this
        call (a camera's own setting); None: the detector's ``min_face_px``.
        """
        threshold = self.score_threshold if score_threshold is None else score_threshold
        height, width = image.shape[:2]
        plan = self.plan(width, height, min_face_px)
        if not plan.tiled:
            return self._detect_scaled(image, plan.scale, threshold)[: self.top_k]
        found = self._detect_scaled(image, plan.coarse_scale, threshold)
        for tile in plan.tiles:
            window = image[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width]
            for det in self._detect_scaled(window, plan.scale, threshold):
                moved = shift(det, tile.x, tile.y)
                if not cut_by_tile(moved.box, tile, width, height):
                    found.append(moved)
        return merge(found, self.nms_threshold)[: self.top_k]

    def _detect_scaled(self, image: np.ndarray, scale: float, threshold: float
                       ) -> list[Detection]:
        """Detections in ``image`` shrunk by ``scale`` (<= 1), in ``image``'s coordinates."""
        if scale < 1.0:
            image = shrink(image, scale)
        h, w = image.shape[:2]
        pad_h, pad_w = -(-h // 32) * 32, -(-w // 32) * 32
        blob = np.zeros((1, 3, pad_h, pad_w), np.float32)
        blob[0, :, :h, :w] = image.transpose(2, 0, 1)
        outputs = self.session.run(None, {self.input_name: blob})
        boxes, landmarks, scores = self._decode(outputs, pad_h, pad_w, threshold)
        if not len(scores):
            return []
        keep = nms(boxes, scores, self.nms_threshold)[: self.top_k]
        inv = 1.0 / scale
        result = []
        for i in keep:
            x, y, bw, bh = (boxes[i] * inv).tolist()
            points = tuple((float(px), float(py)) for px, py in landmarks[i] * inv)
            result.append(Detection(box=(x, y, bw, bh), landmarks=points, score=float(scores[i])))
        return result

    @staticmethod
    def _decode(outputs: list[np.ndarray], pad_h: int, pad_w: int, threshold: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Anchor-free decoding as in OpenCV's FaceDetectorYN (score = sqrt(cls * obj))."""
        all_boxes, all_points, all_scores = [], [], []
        n = len(_STRIDES)
        for i, stride in enumerate(_STRIDES):
            cols, rows = pad_w // stride, pad_h // stride
            cls = np.clip(outputs[i].reshape(-1), 0, 1)
            obj = np.clip(outputs[i + n].reshape(-1), 0, 1)
            score = np.sqrt(cls * obj)
            idx = np.nonzero(score >= threshold)[0]
            if not idx.size:
                continue
            bbox = outputs[i + 2 * n].reshape(-1, 4)[idx]
            kps = outputs[i + 3 * n].reshape(-1, 10)[idx]
            c = (idx % cols).astype(np.float32)
            r = (idx // cols).astype(np.float32)
            cx, cy = (c + bbox[:, 0]) * stride, (r + bbox[:, 1]) * stride
            bw, bh = np.exp(bbox[:, 2]) * stride, np.exp(bbox[:, 3]) * stride
            all_boxes.append(np.stack([cx - bw / 2, cy - bh / 2, bw, bh], axis=1))
            pts = kps.reshape(-1, 5, 2).copy()
            pts[:, :, 0] = (pts[:, :, 0] + c[:, None]) * stride
            pts[:, :, 1] = (pts[:, :, 1] + r[:, None]) * stride
            all_points.append(pts)
            all_scores.append(score[idx])
            del rows
        if not all_scores:
            empty = np.zeros((0,), np.float32)
            return empty.reshape(0, 4), empty.reshape(0, 5, 2), empty
        return np.concatenate(all_boxes), np.concatenate(all_points), np.concatenate(all_scores)
