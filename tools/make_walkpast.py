"""Compose a "walk past the camera" video from a folder-per-person dataset, with ground truth.

Each passer-by is one photo of one person, cropped around its central face first (LFW photos show
other people in the background, whom the ground truth would not know: other faces are cut off or
blurred away). People enter far away (the face about 20 px), approach and grow to about 150 px,
sway and turn (small rotations, perspective warps for yaw, some are mirrored), blur with motion,
under changing light, several at once, over a synthetic background; the frames are H.264-encoded.

Some passers are on a watchlist: their enrolment photos are copied to ``watchlist/<person>/`` and
are never the photo that walks in the video. The output folder gets:

- ``walkpast.mp4``: the video;
- ``truth.json``: per passer the person, photo, watchlist id (or null), frames in view and the
  face box per frame (see ``lfr.eval.video``);
- ``watchlist/``: enrolment photos (cropped around the face like the passers), one folder per
  listed person;
- ``walkpast.toml``: a config that plays the video once and builds the watchlist on first run.

    .venv/bin/python tools/make_walkpast.py --dataset ../shared/data/lfw-dev --out /tmp/walk \\
        --passers 1000 --watchlisted 50 --seed 1
    .venv/bin/lfr eval video --config /tmp/walk/walkpast.toml --truth /tmp/walk/truth.json

The same arguments give the same video, truth and watchlist.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import av
import cv2
import numpy as np

from lfr.eval.dataset import choose_face
from lfr.eval.identify import list_people
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.defaults import default_analyzer

TRUTH_VERSION = 1


@dataclass
class Sprite:
    """A passer's photo, cropped around the face, with a soft oval alpha."""

    image: np.ndarray  # BGR, square
    alpha: np.ndarray  # float32 0..1, same size
    face: tuple[float, float, float, float]  # face box in sprite pixels


@dataclass
class Passer:
    id: str
    person: str
    image: str
    watchlist_id: str | None
    sprite: Sprite
    start: float  # seconds
    duration: float
    x0: float
    x1: float
    max_face: float
    mirrored: bool
    tilt: float  # degrees
    sway: float  # degrees of rotation swing
    yaw0: float
    yaw_swing: float
    phase: float
    gain: float
    boxes: list[list[float]] = field(default_factory=list)  # [frame, x, y, w, h, visible]


def crop_sprite(
    image: np.ndarray, analyzer: FaceAnalyzer, side_factor: float = 2.0
) -> Sprite | None:
    """The central face with head and shoulders; other faces cut off or blurred; None: no face."""
    faces = analyzer.detect(image, 0.5) or analyzer.detect(image, 0.3)
    if not faces:
        return None
    main = choose_face(faces, image.shape)
    x, y, w, h = main.detection.box
    cx, cy = x + w / 2, y + h / 2 + 0.1 * h
    others = [f.detection.box for f in faces if f is not main]
    size = max(w, h)
    side = side_factor * size
    # Shrink the crop until no other face is inside it (down to 1.3 face widths).
    while side > 1.3 * size and any(_overlaps(b, cx, cy, side) for b in others):
        side *= 0.9
    height, width = image.shape[:2]
    half = side / 2
    pad = math.ceil(max(0.0, half - cx, half - cy, cx + half - width, cy + half - height))
    padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    x0, y0 = round(cx - half) + pad, round(cy - half) + pad
    n = round(side)
    crop = padded[y0 : y0 + n, x0 : x0 + n].copy()
    for b in others:  # what is left of other faces is blurred beyond recognition
        bx0, by0 = int(b[0] + pad - x0), int(b[1] + pad - y0)
        bx1, by1 = int(bx0 + b[2]), int(by0 + b[3])
        bx0, by0, bx1, by1 = max(bx0, 0), max(by0, 0), min(bx1, n), min(by1, n)
        if bx1 > bx0 and by1 > by0:
            crop[by0:by1, bx0:bx1] = cv2.blur(crop[by0:by1, bx0:bx1], (25, 25))
    face = (x + pad - x0, y + pad - y0, w, h)
    # A soft oval (head and shoulders) that never cuts into the face, and soft square edges.
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32)
    fcx, fcy = face[0] + w / 2, face[1] + h / 2
    rx, ry = max(0.46 * n, 0.95 * w), max(0.5 * n, 1.1 * h)
    r = np.sqrt(((xx - fcx) / rx) ** 2 + ((yy - fcy) / ry) ** 2)
    oval = np.clip((1.0 - r) / 0.12, 0.0, 1.0)
    edge = np.minimum(np.minimum(xx, n - 1 - xx), np.minimum(yy, n - 1 - yy)) / (0.06 * n)
    alpha = np.minimum(oval, np.clip(edge, 0.0, 1.0)).astype(np.float32)
    return Sprite(image=crop, alpha=alpha, face=face)


def _overlaps(box: tuple[float, float, float, float], cx: float, cy: float, side: float) -> bool:
    half = side / 2
    return not (
        box[0] + box[2] < cx - half
        or box[0] > cx + half
        or box[1] + box[3] < cy - half
        or box[1] > cy + half
    )


def background(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A street-like scene: wall, floor, a few shapes and texture."""
    img = np.zeros((height, width, 3), np.float32)
    horizon = int(0.45 * height)
    wall = rng.uniform(90, 160, 3)
    floor = rng.uniform(60, 120, 3)
    img[:horizon] = wall
    ramp = np.linspace(0.8, 1.2, height - horizon)[:, None, None]
    img[horizon:] = floor * ramp
    for _ in range(12):
        x0, y0 = int(rng.uniform(0, width)), int(rng.uniform(0, horizon))
        x1, y1 = x0 + int(rng.uniform(20, 120)), y0 + int(rng.uniform(20, 100))
        cv2.rectangle(img, (x0, y0), (x1, y1), rng.uniform(40, 220, 3).tolist(), -1)
    img += rng.normal(0, 6, img.shape)
    return np.clip(cv2.GaussianBlur(img, (3, 3), 0), 0, 255).astype(np.uint8)


APPROACH = 0.7  # share of the walk spent approaching; the rest passes by the camera, sideways


def _pose(p: Passer, u: float, t: float, width: int, height: int) -> tuple[float, float, float]:
    """Face size and face centre at walk progress ``u`` (0..1), time ``t``."""
    s0, s1 = 20.0, p.max_face
    a = min(u / APPROACH, 1.0)
    size = 1.0 / (1.0 / s0 + (1.0 / s1 - 1.0 / s0) * a)  # walking at constant speed: 1/size linear
    x = p.x0 + (p.x1 - p.x0) * a
    if u > APPROACH:  # passing the camera: out through the nearer side
        b = (u - APPROACH) / (1.0 - APPROACH)
        size *= 1.0 + 0.15 * b
        edge = -0.6 * size if p.x1 < width / 2 else width + 0.6 * size
        x += (edge - p.x1) * b * b
    y = height * (0.28 + 0.32 * (min(size, s1) - s0) / (s1 - s0)) + 0.04 * size * math.sin(
        2 * math.pi * 1.8 * t
    )
    return size, x, y


def _homography(p: Passer, u: float, t: float, width: int, height: int) -> tuple[np.ndarray, float]:
    """Sprite -> frame transform at walk progress ``u`` (0..1), time ``t``; and the face size."""
    size, x, y = _pose(p, u, t, width, height)
    sp = p.sprite
    fx, fy, fw, fh = sp.face
    scale = size / max(fw, fh)
    n = sp.image.shape[0]
    # Yaw: one side of the photo shrinks (a head turning), as a perspective warp in sprite space.
    yaw = p.yaw0 + p.yaw_swing * math.sin(2 * math.pi * 0.4 * t + p.phase)
    k = 0.35 * yaw
    src = np.array([[0, 0], [n, 0], [n, n], [0, n]], np.float32)
    dst = np.array(
        [
            [n * max(k, 0) * 0.5, n * max(k, 0) * 0.5],
            [n - n * max(-k, 0) * 0.5, n * max(-k, 0) * 0.5],
            [n - n * max(-k, 0) * 0.5, n - n * max(-k, 0) * 0.5],
            [n * max(k, 0) * 0.5, n - n * max(k, 0) * 0.5],
        ],
        np.float32,
    )
    warp = cv2.getPerspectiveTransform(src, dst).astype(np.float64)
    mirror = np.array([[-1, 0, n], [0, 1, 0], [0, 0, 1]], np.float64) if p.mirrored else np.eye(3)
    face_c = np.array([fx + fw / 2, fy + fh / 2, 1.0])
    fc = warp @ mirror @ face_c
    fc = fc[:2] / fc[2]
    angle = math.radians(p.tilt + p.sway * math.sin(2 * math.pi * 0.9 * t + p.phase))
    cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
    place = np.array(
        [
            [cos, -sin, x - cos * fc[0] + sin * fc[1]],
            [sin, cos, y - sin * fc[0] - cos * fc[1]],
            [0, 0, 1],
        ],
        np.float64,
    )
    return place @ warp @ mirror, size


def _apply(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    q = np.c_[pts, np.ones(len(pts))] @ h.T
    return q[:, :2] / q[:, 2:3]


def render_frame(
    bg: np.ndarray,
    passers: list[Passer],
    t: float,
    frame_no: int,
    fps: float,
    rng: np.random.Generator,
    noise: np.ndarray,
) -> np.ndarray:
    height, width = bg.shape[:2]
    light = 1.0 + 0.25 * math.sin(2 * math.pi * t / 23.0) + 0.1 * math.sin(2 * math.pi * t / 7.0)
    frame = bg.astype(np.float32) * light
    active = [p for p in passers if p.start <= t < p.start + p.duration]
    drawn: list[tuple[Passer, int, int, np.ndarray, tuple[float, float, float, float]]] = []
    placed = []
    for p in active:
        u = (t - p.start) / p.duration
        h, size = _homography(p, u, t, width, height)
        placed.append((size, p, h, u))
    placed.sort(key=lambda item: item[0])  # far (small) first, near last
    for _size, p, h, u in placed:
        n = p.sprite.image.shape[0]
        corners = _apply(h, np.array([[0, 0], [n, 0], [n, n], [0, n]], np.float64))
        x0, y0 = np.floor(corners.min(axis=0)).astype(int) - 2
        x1, y1 = np.ceil(corners.max(axis=0)).astype(int) + 2
        cx0, cy0, cx1, cy1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
        if cx1 <= cx0 or cy1 <= cy0:
            continue
        shift = np.array([[1, 0, -cx0], [0, 1, -cy0], [0, 0, 1]], np.float64) @ h
        roi = (cx1 - cx0, cy1 - cy0)
        img = cv2.warpPerspective(
            p.sprite.image, shift, roi, flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        ).astype(np.float32)
        alpha = cv2.warpPerspective(p.sprite.alpha, shift, roi, flags=cv2.INTER_LINEAR)
        # Motion blur along the walk, longer when close (faster in pixels).
        u2 = min(1.0, u + 1.0 / (fps * p.duration))
        h2, _ = _homography(p, u2, t + 1.0 / fps, width, height)
        c1 = _apply(h, np.array([[n / 2, n / 2]], np.float64))[0]
        c2 = _apply(h2, np.array([[n / 2, n / 2]], np.float64))[0]
        # Exposure: a fifth of the frame time (CCTV shutters are far shorter than 1/fps).
        length = round(0.2 * float(np.hypot(*(c2 - c1))) + rng.uniform(0, 2.0))
        if length >= 2:
            kernel = np.zeros((length, length), np.float32)
            d = (c2 - c1) / (np.hypot(*(c2 - c1)) + 1e-6)
            c = (length - 1) / 2
            cv2.line(
                kernel,
                (round(c - d[0] * c), round(c - d[1] * c)),
                (round(c + d[0] * c), round(c + d[1] * c)),
                1.0,
                1,
            )
            kernel /= max(kernel.sum(), 1e-6)
            img = np.asarray(cv2.filter2D(img, -1, kernel), np.float32)
            alpha = np.asarray(cv2.filter2D(alpha, -1, kernel), np.float32)
        img *= p.gain * light
        a = alpha[..., None]
        region = frame[cy0:cy1, cx0:cx1]
        region[:] = region * (1 - a) + img * a
        fx, fy, fw, fh = p.sprite.face
        fc = _apply(
            h, np.array([[fx, fy], [fx + fw, fy], [fx + fw, fy + fh], [fx, fy + fh]], np.float64)
        )
        bx0, by0 = fc.min(axis=0)
        bx1, by1 = fc.max(axis=0)
        drawn.append(
            (p, cx0, cy0, alpha, (float(bx0), float(by0), float(bx1 - bx0), float(by1 - by0)))
        )
    for i, (p, _, _, _, box) in enumerate(drawn):
        p.boxes.append(
            [
                frame_no,
                *(round(v, 1) for v in box),
                int(_visible(box, drawn[i + 1 :], width, height)),
            ]
        )
    frame += noise[frame_no % len(noise)]
    return np.clip(frame, 0, 255).astype(np.uint8)


def _visible(
    box: tuple[float, float, float, float],
    later: list[tuple[Passer, int, int, np.ndarray, tuple[float, float, float, float]]],
    width: int,
    height: int,
) -> bool:
    """At least half the face inside the frame and not hidden by someone closer."""
    x, y, w, h = box
    x0, y0, x1, y1 = int(max(x, 0)), int(max(y, 0)), int(min(x + w, width)), int(min(y + h, height))
    if x1 <= x0 or y1 <= y0 or (x1 - x0) * (y1 - y0) < 0.5 * w * h:
        return False
    cover = np.zeros((y1 - y0, x1 - x0), np.float32)
    for _, ox, oy, alpha, _ in later:
        ax0, ay0 = max(x0, ox), max(y0, oy)
        ax1, ay1 = min(x1, ox + alpha.shape[1]), min(y1, oy + alpha.shape[0])
        if ax1 > ax0 and ay1 > ay0:
            sub = alpha[ay0 - oy : ay1 - oy, ax0 - ox : ax1 - ox]
            view = cover[ay0 - y0 : ay1 - y0, ax0 - x0 : ax1 - x0]
            np.maximum(view, sub, out=view)
    return float(cover.mean()) < 0.5


def _lane(
    rng: np.random.Generator, people: list[Passer], start: float, width: int
) -> tuple[float, float]:
    """Where a new passer walks: of a few random paths, the one farthest from the people in view
    at the same time (pedestrians keep their distance; nobody walks through anyone)."""
    others = [(p.x0 + p.x1) / 2 for p in people if p.start + p.duration > start]
    best: tuple[float, float] = (0.0, 0.0)
    best_gap = -1.0
    for _ in range(6):
        x0 = float(rng.uniform(0.15, 0.85)) * width
        x1 = float(np.clip(x0 + rng.uniform(-0.3, 0.3) * width, 0.12 * width, 0.88 * width))
        gap = min((abs((x0 + x1) / 2 - o) for o in others), default=float(width))
        if gap > best_gap:
            best, best_gap = (x0, x1), gap
    return best


def plan(
    dataset: Path, passers: int, watchlisted: int, enrol_images: int, seed: int
) -> tuple[list[tuple[str, str, bool]], dict[str, list[str]]]:
    """(person, video photo, listed) per passer in walking order, and the enrolment photos."""
    people = list_people(dataset)
    rng = np.random.default_rng(seed)
    eligible = sorted(n for n, imgs in people.items() if len(imgs) >= enrol_images + 1)
    if watchlisted > len(eligible):
        raise SystemExit(
            f"{dataset}: only {len(eligible)} people have {enrol_images + 1} or more "
            f"photos; {watchlisted} listed asked for"
        )
    listed = sorted(str(n) for n in rng.choice(eligible, watchlisted, replace=False))
    rest = [n for n in sorted(people) if n not in set(listed)]
    if passers - watchlisted > len(rest):
        raise SystemExit(
            f"{dataset}: {len(rest)} people left for {passers - watchlisted} unlisted passers"
        )
    unlisted = [str(n) for n in rng.choice(rest, passers - watchlisted, replace=False)]
    enrol: dict[str, list[str]] = {}
    walking: list[tuple[str, str, bool]] = []
    for name in listed:
        photos = people[name]
        chosen = sorted(str(p) for p in rng.choice(photos, enrol_images, replace=False))
        enrol[name] = chosen
        walking.append((name, str(rng.choice([p for p in photos if p not in chosen])), True))
    for name in unlisted:
        walking.append((name, str(rng.choice(people[name])), False))
    order = rng.permutation(len(walking))
    return [walking[i] for i in order], enrol


def make_walkpast(
    dataset: Path,
    out: Path,
    *,
    passers: int = 1000,
    watchlisted: int = 50,
    enrol_images: int = 1,
    seed: int = 1,
    fps: float = 10.0,
    width: int = 640,
    height: int = 360,
    concurrency: float = 3.0,
    duration: tuple[float, float] = (2.5, 4.0),
    max_face: tuple[float, float] = (110.0, 150.0),
    threshold: float | None = None,
    log: bool = True,
) -> dict[str, Any]:
    start_clock = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    walking, enrol = plan(dataset, passers, watchlisted, enrol_images, seed)
    rng = np.random.default_rng([seed, 2])
    analyzer = default_analyzer(score_threshold=0.5)
    mean_duration = sum(duration) / 2
    gap = mean_duration / concurrency  # mean time between arrivals
    t = 0.5
    people: list[Passer] = []
    skipped: list[str] = []
    for i, (name, photo, listed) in enumerate(walking):
        image = cv2.imread(str(dataset / photo))
        sprite = crop_sprite(image, analyzer) if image is not None else None
        if sprite is None:
            skipped.append(photo)
            continue
        duration_s = float(rng.uniform(*duration))
        x0, x1 = _lane(rng, people, t, width)
        people.append(
            Passer(
                id=f"p{i + 1:04d}",
                person=name,
                image=photo,
                watchlist_id=name if listed else None,
                sprite=sprite,
                start=t,
                duration=duration_s,
                x0=x0,
                x1=x1,
                max_face=float(min(rng.uniform(*max_face), 0.7 * height)),
                mirrored=bool(rng.random() < 0.5),
                tilt=float(rng.uniform(-6, 6)),
                sway=float(rng.uniform(2, 8)),
                yaw0=float(rng.uniform(-0.5, 0.5)),
                yaw_swing=float(rng.uniform(0.1, 0.4)),
                phase=float(rng.uniform(0, 2 * math.pi)),
                gain=float(rng.uniform(0.65, 1.25)),
            )
        )
        t += float(rng.exponential(gap))
    end = max(p.start + p.duration for p in people) + 0.5
    frames = math.ceil(end * fps)
    bg = background(width, height, np.random.default_rng([seed, 3]))
    noise_rng = np.random.default_rng([seed, 4])
    noise = noise_rng.normal(0, 2.5, (7, height, width, 3)).astype(np.float32)  # sensor noise
    video = out / "walkpast.mp4"
    with av.open(str(video), "w") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "20", "preset": "veryfast"}
        for n in range(frames):
            image = render_frame(bg, people, n / fps, n, fps, rng, noise)
            frame = av.VideoFrame.from_ndarray(image.astype(np.uint8), format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
            if log and n % 500 == 0:
                print(f"frame {n}/{frames}", file=sys.stderr)
        for packet in stream.encode():
            container.mux(packet)
    wl = out / "watchlist"
    if wl.exists():
        shutil.rmtree(wl)
    unusable: list[str] = []
    for name, photos in enrol.items():
        (wl / name).mkdir(parents=True)
        for photo in photos:
            # Cropped like the passers: an enrolment photo shows one face (a custody photo would).
            image = cv2.imread(str(dataset / photo))
            sprite = crop_sprite(image, analyzer, side_factor=2.2) if image is not None else None
            if sprite is None:
                unusable.append(photo)
                continue
            cv2.imwrite(str(wl / name / Path(photo).name), sprite.image)
    passers_out = [
        {
            "id": p.id,
            "person": p.person,
            "image": p.image,
            "watchlist_id": p.watchlist_id,
            "first_frame": p.boxes[0][0],
            "last_frame": p.boxes[-1][0],
            "boxes": p.boxes,
        }
        for p in people
        if p.boxes
    ]
    truth = {
        "version": TRUTH_VERSION,
        "video": video.name,
        "fps": fps,
        "width": width,
        "height": height,
        "frames": frames,
        "seed": seed,
        "dataset": str(dataset),
        "enrol_images": enrol_images,
        "watchlist": enrol,
        "passers": passers_out,
        "skipped": skipped,
        "unusable_enrolment": unusable,
    }
    (out / "truth.json").write_text(json.dumps(truth, separators=(",", ":")))
    matching = f"\n[matching]\nthreshold = {threshold}\n" if threshold is not None else ""
    (out / "walkpast.toml").write_text(
        "# Written by tools/make_walkpast.py: plays walkpast.mp4 once, every frame.\n"
        'name = "walkpast"\ndata_dir = "data"\n\n'
        '[watchlist]\nbundle = "bundle"\nsource = "watchlist"\n\n'
        '[[cameras]]\nname = "walkpast"\nurl = "walkpast.mp4"\n\n'
        '[[notifiers]]\nkind = "jsonl"\n' + matching
    )
    summary = {
        "video": str(video),
        "frames": frames,
        "seconds": round(end, 1),
        "passers": len(passers_out),
        "watchlisted": len(enrol),
        "skipped": skipped,
        "took_s": round(time.perf_counter() - start_clock, 1),
    }
    if log:
        print(json.dumps(summary), file=sys.stderr)
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", type=Path, required=True, help="<person>/<image> folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--passers", type=int, default=1000)
    parser.add_argument("--watchlisted", type=int, default=50)
    parser.add_argument("--enrol-images", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT")
    parser.add_argument(
        "--concurrency", type=float, default=3.0, help="people in view at once, on average"
    )
    parser.add_argument(
        "--max-face",
        type=float,
        nargs=2,
        default=(110.0, 150.0),
        metavar=("LOW", "HIGH"),
        help="face size (px) when closest",
    )
    parser.add_argument(
        "--duration",
        type=float,
        nargs=2,
        default=(2.5, 4.0),
        metavar=("LOW", "HIGH"),
        help="seconds each passer is in view",
    )
    parser.add_argument("--threshold", type=float, help="matching.threshold for the config")
    args = parser.parse_args(argv)
    width, height = (int(v) for v in args.size.lower().split("x"))
    make_walkpast(
        args.dataset,
        args.out,
        passers=args.passers,
        watchlisted=args.watchlisted,
        enrol_images=args.enrol_images,
        seed=args.seed,
        fps=args.fps,
        width=width,
        height=height,
        concurrency=args.concurrency,
        duration=tuple(args.duration),
        max_face=tuple(args.max_face),
        threshold=args.threshold,
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
