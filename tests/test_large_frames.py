"""Large frames: the detection scale chosen from the smallest face that must be found, tiles with
overlap where that is still too large, and the merging of what the tiles find."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
from paths import PEOPLE

from lfr.messages import Detection
from lfr.vision.defaults import default_analyzer, default_detector
from lfr.vision.detect import YuNetDetector
from lfr.vision.models import BUNDLED_DETECTOR, resolve_model
from lfr.vision.tiling import (
    DETECTABLE_FACE_PX,
    Tile,
    cut_by_tile,
    merge,
    plan_detection,
    shrink,
)


def test_without_min_face_frames_are_shrunk_to_max_side_as_before():
    assert plan_detection(1920, 1080, None, 1920).scale == 1.0
    plan = plan_detection(3840, 2160, None, 1920)
    assert plan.scale == 0.5 and not plan.tiled


def test_the_scale_keeps_the_smallest_face_detectable():
    plan = plan_detection(3840, 2160, 80, 1920)
    assert not plan.tiled
    assert plan.scale * 80 == pytest.approx(DETECTABLE_FACE_PX)
    # Never enlarged: a 16 px face in a small frame runs at native size.
    assert plan_detection(640, 360, 16, 1920).scale == 1.0


def test_small_faces_in_4k_are_tiled_with_enough_overlap():
    plan = plan_detection(3840, 2160, 24, 1920)
    assert plan.tiled and plan.scale == 1.0 and plan.coarse_scale == 0.5
    covered = np.zeros((2160, 3840), bool)
    for tile in plan.tiles:
        assert tile.width <= 1920 and tile.height <= 1920
        covered[tile.y:tile.y + tile.height, tile.x:tile.x + tile.width] = True
    assert covered.all()
    # Faces under 48 px escape the coarse pass (24 px at half size): each neighbouring pair of
    # tiles shares room for the head of such a face.
    xs = sorted({t.x for t in plan.tiles})
    ys = sorted({t.y for t in plan.tiles})
    width, height = plan.tiles[0].width, plan.tiles[0].height
    assert all(xs[i] + width - xs[i + 1] >= 1.8 * 48 - 1 for i in range(len(xs) - 1))
    assert all(ys[i] + height - ys[i + 1] >= 1.8 * 48 - 1 for i in range(len(ys) - 1))


def _det(x, y, w, h, score=0.9):
    return Detection(box=(x, y, w, h), landmarks=((x, y),) * 5, score=score)


def test_merge_keeps_one_box_per_face():
    same_face_two_tiles = [_det(100, 100, 30, 30, 0.9), _det(101, 99, 30, 31, 0.8)]
    part_of_a_large_face = [_det(500, 500, 400, 400, 0.95), _det(600, 600, 60, 60, 0.7)]
    elsewhere = [_det(2000, 100, 30, 30, 0.75)]
    merged = merge(same_face_two_tiles + part_of_a_large_face + elsewhere, 0.3)
    assert [d.box for d in merged] == [(500, 500, 400, 400), (100, 100, 30, 30),
                                       (2000, 100, 30, 30)]


def test_a_face_cut_by_an_inner_tile_edge_is_dropped_not_one_at_the_frame_edge():
    tile = Tile(1800, 0, 1920, 1920)
    assert cut_by_tile((1799, 500, 40, 40), tile, 3840, 2160)  # across the tile's left edge
    assert cut_by_tile((3700, 1890, 40, 40), tile, 3840, 2160)  # across its bottom edge
    assert not cut_by_tile((2000, 500, 40, 40), tile, 3840, 2160)
    assert not cut_by_tile((0, 0, 40, 40), Tile(0, 0, 1920, 1920), 3840, 2160)  # frame edge


@pytest.fixture(scope="module")
def head():
    """A person's head cut from a demo still, and the face's width in it."""
    image = cv2.imread(str(sorted(PEOPLE.rglob("*.jpg"))[0]))
    face = default_analyzer(flip=False).detect(image)[0].detection
    x, y, w, h = face.box
    side = 1.8 * max(w, h)
    cx, cy = x + w / 2, y + h / 2
    x0, y0 = int(max(0, cx - side / 2)), int(max(0, cy - side / 2))
    crop = image[y0:int(cy + side / 2), x0:int(cx + side / 2)]
    return crop, w / crop.shape[1]


def _paste(frame, head, face_px, x, y):
    crop, share = head
    side = round(face_px / share)
    frame[y:y + side, x:x + side] = cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA)
    return (x + side / 2, y + side / 2)


def test_a_small_face_in_a_4k_frame_is_found_with_tiles(head):
    frame = np.full((2160, 3840, 3), 96, np.uint8)
    # 30 px wide (15 px at the 1920 px max_side alone would detect at), in the strip where the
    # first two tiles overlap: found whole by both, reported once.
    detector = YuNetDetector(resolve_model(None, BUNDLED_DETECTOR), min_face_px=24)
    first, second = detector.plan(3840, 2160).tiles[:2]
    assert second.x + 60 < first.x + first.width
    small = _paste(frame, head, 30, second.x + 2, 1300)
    large = _paste(frame, head, 300, 200, 200)
    assert detector.plan(3840, 2160).tiled
    found = detector.detect(frame)
    centres = [(x + w / 2, y + h / 2) for x, y, w, h in (d.box for d in found)]
    near_small = [c for c in centres if np.hypot(c[0] - small[0], c[1] - small[1]) < 20]
    near_large = [c for c in centres if np.hypot(c[0] - large[0], c[1] - large[1]) < 100]
    assert len(near_small) == 1 and len(near_large) == 1, found
    assert len(found) == 2, found


def test_a_call_can_ask_for_its_own_smallest_face(head):
    frame = np.full((1080, 1920, 3), 96, np.uint8)
    _paste(frame, head, 120, 800, 400)
    detector = default_detector()
    coarse = detector.plan(1920, 1080, min_face_px=120)
    assert coarse.scale == pytest.approx(0.2)
    assert len(detector.detect(frame, min_face_px=120)) == 1
    assert len(default_analyzer().detect(frame, min_face_px=120)) == 1


def test_shrink_gives_the_planned_size_and_keeps_the_picture():
    rng = np.random.default_rng(0)
    frame = rng.integers(0, 256, (2160, 3840, 3), dtype=np.uint8)
    frame[:1080] = 40  # a dark top half, a noisy bottom half
    for scale in (0.5, 0.462, 0.923, 0.25):
        small = shrink(frame, scale)
        assert small.shape == (round(2160 * scale), round(3840 * scale), 3)
        top, bottom = small[: small.shape[0] // 2 - 2], small[small.shape[0] // 2 + 2:]
        assert abs(float(top.mean()) - 40) < 1 and abs(float(bottom.mean()) - 127.5) < 2
