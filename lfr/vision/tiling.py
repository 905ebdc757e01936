"""Detection on large frames: the detection size chosen from the smallest face that must be found,
and tiles where even that size is too large to detect in one piece.

YuNet finds a face reliably from about ``DETECTABLE_FACE_PX`` wide (measured: pasted lfw-dev faces
on a plain background, found 27/40 at 16 px, 36/40 at 20 px, 39/40 at 24 px, 40/40 at 32 px). So a
camera whose smallest face of interest is ``min_face_px`` wide can be shrunk by
``DETECTABLE_FACE_PX / min_face_px`` before detection: a 4K camera that must find 48 px faces
detects at 1920x1080, one that must find 80 px faces at 1152x648.

When the shrunk frame is still larger than ``max_side`` (small faces in a 4K frame), it is cut into
overlapping tiles at that scale, and the whole frame is also detected once at ``max_side`` (the
coarse pass finds the large faces that no tile holds whole). The overlap is wide enough for every
face the coarse pass can miss, so each such face lies whole in some tile; a tile's detection that
touches an inner tile edge is a cut face and is dropped, and the rest are merged by non-maximum
suppression.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from lfr.messages import Detection

DETECTABLE_FACE_PX = 24.0
# A face's box is about 0.6 of the head it sits in: room for the head around the smallest face.
_HEAD_PER_FACE = 1.8
_EDGE_PX = 2.0  # a box this close to an inner tile edge was cut by it


@dataclass(frozen=True)
class Tile:
    """A window of the frame, in frame pixels: x, y, width, height."""

    x: int
    y: int
    width: int
    height: int


@dataclass(frozen=True)
class DetectionPlan:
    """How one frame size is detected: at ``scale`` in one piece (no tiles), or in ``tiles`` at
    ``scale`` plus a coarse pass of the whole frame at ``coarse_scale``."""

    scale: float
    tiles: tuple[Tile, ...] = ()
    coarse_scale: float = 1.0

    @property
    def tiled(self) -> bool:
        return bool(self.tiles)


def detection_scale(min_face_px: float | None, frame_side: int, max_side: int) -> float:
    """The factor a frame is shrunk by before detection: enough to keep a ``min_face_px`` face
    detectable, never enlarged; without ``min_face_px``, what fits ``max_side`` (the old rule)."""
    if min_face_px is None:
        return min(1.0, max_side / frame_side)
    return min(1.0, DETECTABLE_FACE_PX / min_face_px)


def plan_detection(width: int, height: int, min_face_px: float | None, max_side: int,
                   tile_side: int | None = None) -> DetectionPlan:
    """The plan for a ``width`` x ``height`` frame (see the module's docstring).

    ``tile_side``: a tile's side in detection pixels (default ``max_side``, so one tile costs
    about what a ``max_side`` frame does).
    """
    longest = max(width, height)
    scale = detection_scale(min_face_px, longest, max_side)
    if longest * scale <= max_side + 0.5:
        return DetectionPlan(scale=scale)
    coarse = max_side / longest
    # Faces the coarse pass misses are below DETECTABLE_FACE_PX / coarse frame pixels wide: the
    # overlap holds the whole head of the largest of them.
    overlap = math.ceil(_HEAD_PER_FACE * DETECTABLE_FACE_PX / coarse)
    side = math.ceil((tile_side or max_side) / scale)  # a tile's largest side in frame pixels
    overlap = min(overlap, side // 2)
    xs, tile_w = _spans(width, side, overlap)
    ys, tile_h = _spans(height, side, overlap)
    tiles = tuple(Tile(x, y, tile_w, tile_h) for y in ys for x in xs)
    return DetectionPlan(scale=scale, tiles=tiles, coarse_scale=coarse)


def _spans(length: int, side: int, overlap: int) -> tuple[list[int], int]:
    """(offsets, window length): the fewest windows of at most ``side`` that cover ``length``
    with ``overlap`` in common, each as short as that allows (a 1080 px high frame in windows of
    1040 is two of ~584, not two of 1040) and spread evenly, the last one ending at the edge."""
    if side >= length:
        return [0], length
    count = math.ceil((length - overlap) / (side - overlap))
    window = min(side, math.ceil((length + (count - 1) * overlap) / count))
    step = (length - window) / (count - 1)
    return [round(i * step) for i in range(count)], window


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


def shrink(image: np.ndarray, scale: float) -> np.ndarray:
    """``image`` resized by ``scale`` < 1: area averaging by the whole part of the reduction (its
    fast path in OpenCV), then bilinear for the rest. OpenCV's area resize at a fractional factor
    is slow (80 ms for 1080p to 0.92, 136 ms for 4K to 0.46, against ~11 and ~22 ms this way)."""
    height, width = image.shape[:2]
    target = (max(1, round(width * scale)), max(1, round(height * scale)))
    factor = int(1.0 / scale + 1e-9)
    if factor >= 2:
        image = cv2.resize(image, None, fx=1.0 / factor, fy=1.0 / factor,
                           interpolation=cv2.INTER_AREA)
    if (image.shape[1], image.shape[0]) != target:
        image = cv2.resize(image, target, interpolation=cv2.INTER_LINEAR)
    return image


def shift(detection: Detection, dx: float, dy: float) -> Detection:
    """The detection moved by (dx, dy): a tile's coordinates to the frame's."""
    x, y, w, h = detection.box
    return Detection(box=(x + dx, y + dy, w, h),
                     landmarks=tuple((px + dx, py + dy) for px, py in detection.landmarks),
                     score=detection.score)


def cut_by_tile(box: Sequence[float], tile: Tile, width: int, height: int) -> bool:
    """Whether ``box`` (frame pixels) touches an edge of ``tile`` that lies inside the frame."""
    x, y, w, h = box
    return ((tile.x > 0 and x <= tile.x + _EDGE_PX)
            or (tile.y > 0 and y <= tile.y + _EDGE_PX)
            or (tile.x + tile.width < width and x + w >= tile.x + tile.width - _EDGE_PX)
            or (tile.y + tile.height < height and y + h >= tile.y + tile.height - _EDGE_PX))


def merge(detections: Sequence[Detection], iou_threshold: float) -> list[Detection]:
    """One detection per face, best first: non-maximum suppression over all of them, and a box
    lying mostly inside a larger one dropped (a tile seeing part of a large face as a face)."""
    if not detections:
        return []
    boxes = np.array([d.box for d in detections], np.float32)
    scores = np.array([d.score for d in detections], np.float32)
    kept = [detections[i] for i in nms(boxes, scores, iou_threshold)]
    result: list[Detection] = []
    for det in sorted(kept, key=lambda d: -d.box[2] * d.box[3]):  # largest first
        if not any(_inside(det.box, big.box) for big in result):
            result.append(det)
    return sorted(result, key=lambda d: -d.score)


def _inside(small: Sequence[float], big: Sequence[float], share: float = 0.7) -> bool:
    """Whether ``share`` of ``small``'s area lies within ``big`` (at least twice as wide)."""
    sx, sy, sw, sh = small
    bx, by, bw, bh = big
    if bw < 2 * sw:
        return False
    w = max(0.0, min(sx + sw, bx + bw) - max(sx, bx))
    h = max(0.0, min(sy + sh, by + bh) - max(sy, by))
    return w * h >= share * sw * sh
