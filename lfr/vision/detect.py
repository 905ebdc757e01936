"""YuNet face detection on frames of any size: resize, pad to a multiple of 32, decode, NMS."""

from __future__ import annotations

import threading
from pathlib import Path

import cv2
import numpy as np

from lfr.messages import Detection
from lfr.vision.onnx import create_session

_STRIDES = (8, 16, 32)


def nms(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> list[int]:
    """Greedy non-maximum suppression over x, y, w, h boxes; indices of kept boxes, best first."""
    x1, y1 = boxes[:, 0], boxes[:, 1]
    x2, y2 = x1 + boxes[:, 2], y1 + boxes[:, 3]
    areas = np.maximum(boxes[:, 2], 0) * np.maximum(boxes[:, 3], 0)
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    while order.size:
        i = int(order[0])
        keep.append(i)
        rest = order[1:]
        w = np.maximum(0.0, np.minimum(x2[i], x2[rest]) - np.maximum(x1[i], x1[rest]))
        h = np.maximum(0.0, np.minimum(y2[i], y2[rest]) - np.maximum(y1[i], y1[rest]))
        inter = w * h
        iou = inter / np.maximum(areas[i] + areas[rest] - inter, 1e-9)
        order = rest[iou <= iou_threshold]
    return keep


class YuNetDetector:
    """YuNet (2023mar) with a symbolic input size, so frames run at (up to) their native size.

    YuNet takes BGR float 0..255 without normalisation. Frames whose longer side exceeds
    ``max_side`` are shrunk first (keeping the aspect ratio); the rest run natively, because
    shrinking 1080p to 640 makes faces three times smaller.
    """

    name = "yunet"

    def __init__(self, model_path: Path, score_threshold: float = 0.7,
                 nms_threshold: float = 0.3, max_side: int = 1920, top_k: int = 500,
                 threads: int = 1) -> None:
        self.session = create_session(model_path, threads)
        self.input_name = self.session.get_inputs()[0].name
        self.score_threshold = score_threshold
        self.nms_threshold = nms_threshold
        self.max_side = max_side
        self.top_k = top_k
        self._lock = threading.Lock()

    def detect(self, image: np.ndarray, score_threshold: float | None = None) -> list[Detection]:
        """Faces in a BGR uint8 image, best first, in the image's own pixel coordinates."""
        threshold = self.score_threshold if score_threshold is None else score_threshold
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        if scale < 1.0:
            image = cv2.resize(image, (max(1, round(width * scale)), max(1, round(height * scale))),
                               interpolation=cv2.INTER_AREA)
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
