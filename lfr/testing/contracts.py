"""Contract checks a backend runs against itself: what lfr relies on, one function per kind.

Each check raises ``ContractError`` (an AssertionError, so pytest shows it as a failure) naming
what was wrong, and returns a small report of what it measured.
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import anyio
import msgspec
import numpy as np

from lfr.api import Source, SourceStats
from lfr.messages import Alert, Detection, Frame
from lfr.notify.base import Notifier, NotifierActor
from lfr.notify.outbox import Outbox
from lfr.pipeline.camera import SourceActor
from lfr.plugins import BackendKind, missing_members
from lfr.runtime.channels import Receiver, Sender, open_channel
from lfr.testing.samples import clustered_embeddings, sample_alerts
from lfr.tracking import iou
from lfr.vision.analyzer import Detector, Embedder
from lfr.watchlist.index import IndexBackend


class ContractError(AssertionError):
    """A backend does not do what lfr relies on; the message says what and where."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ContractError(message)


def check_members(obj: object, kind: BackendKind) -> None:
    """``obj`` has every member of its kind's protocol (as lfr checks when it builds one)."""
    missing = missing_members(obj, kind)
    _require(not missing, f"{type(obj).__name__} is not a {kind}: it lacks {', '.join(missing)}")
    name = getattr(obj, "name", None)
    _require(
        isinstance(name, str) and bool(name), f"{kind}: name must be a non-empty str, got {name!r}"
    )


# -- index ------------------------------------------------------------------------------------


class IndexReport(msgspec.Struct, frozen=True):
    name: str
    rows: int
    queries: int
    k: int
    recall: float  # share of the exact top-k scores that the backend returned (within tolerance)
    recall_at_threshold: float  # the same among the exact top-k rows scoring >= the threshold
    max_score_error: float  # worst |returned score - exact cosine of the returned row|


def _search(
    index: IndexBackend, queries: np.ndarray, k: int, what: str
) -> tuple[np.ndarray, np.ndarray]:
    result = index.search(queries, k)
    _require(
        isinstance(result, tuple) and len(result) == 2,
        f"{what}: search() must return (scores, rows), got {type(result).__name__}",
    )
    scores, rows = np.asarray(result[0]), np.asarray(result[1])
    _require(
        scores.shape == rows.shape and scores.ndim == 2 and len(scores) == len(queries),
        f"{what}: search() gave scores {scores.shape} and rows {rows.shape} for "
        f"{len(queries)} queries (want Q x k' both)",
    )
    _require(
        np.issubdtype(rows.dtype, np.integer), f"{what}: rows must be integers, got {rows.dtype}"
    )
    return scores, rows


def check_index_backend(
    factory: Callable[[], IndexBackend],
    *,
    identities: int = 1000,
    per_identity: int = 2,
    dim: int = 128,
    k: int = 10,
    tolerance: float = 1e-4,
    min_recall: float = 1.0,
    threshold: float = 0.5,
    min_recall_at_threshold: float = 1.0,
    seed: int = 0,
) -> IndexReport:
    """An index returns the exact top-k (exact cosine scores, best first) within ``tolerance``,
    handles empty and one-row indexes and ``k`` above the row count, replaces its contents on
    ``build``, and rejects a query of the wrong dimension with a ValueError naming both.

    ``factory()`` returns a new, empty index. ``min_recall`` below 1 admits an approximate index
    that misses some of the exact top-k on clustered data, such as low-scoring runners-up;
    ``min_recall_at_threshold`` applies to the rows scoring at least ``threshold`` (each one
    missed there can be a missed alert), and stays 1 unless you mean to miss alerts.
    """
    index = factory()
    check_members(index, "index")
    name = index.name
    rng = np.random.default_rng(seed)
    probe = clustered_embeddings(
        identities=20, per_identity=1, dim=dim, probes=3, impostors=2, seed=seed + 1
    ).queries

    index.build(np.zeros((0, dim), np.float32))
    _require(len(index) == 0, f"{name}: len() of an empty index is {len(index)}")
    scores, rows = _search(index, probe, 5, f"{name} (empty)")
    _require(
        scores.shape == (len(probe), 0),
        f"{name}: an empty index must return Q x 0 results, got {scores.shape}",
    )

    one = probe[:1].copy()
    index.build(one)
    _require(len(index) == 1, f"{name}: len() after building one row is {len(index)}")
    scores, rows = _search(index, probe, 5, f"{name} (one row)")
    _require(
        scores.shape == (len(probe), 1),
        f"{name}: a one-row index asked for k=5 must return Q x 1, got {scores.shape}",
    )
    _require(bool(np.all(rows == 0)), f"{name}: a one-row index returned rows {rows.ravel()}")
    exact = probe @ one[0]
    _require(
        bool(np.allclose(scores[:, 0], exact, atol=tolerance)),
        f"{name}: one-row scores {scores[:, 0]} are not the exact cosines {exact}",
    )

    data = clustered_embeddings(
        identities=identities,
        per_identity=per_identity,
        dim=dim,
        probes=200,
        impostors=50,
        seed=seed,
    )
    gallery, queries = data.gallery, data.queries
    index.build(gallery)
    _require(
        len(index) == len(gallery),
        f"{name}: len() is {len(index)} after building {len(gallery)} rows",
    )
    scores, rows = _search(index, queries, k, name)
    kk = min(k, len(gallery))
    _require(
        scores.shape == (len(queries), kk),
        f"{name}: want {len(queries)} x {kk} results for k={k}, got {scores.shape}",
    )
    _require(bool(np.all((rows >= 0) & (rows < len(gallery)))), f"{name}: row index out of range")
    _require(
        all(len(set(r)) == len(r) for r in rows.tolist()),
        f"{name}: a row was returned twice for one query",
    )
    _require(
        bool(np.all(np.diff(scores, axis=1) <= tolerance)),
        f"{name}: scores are not in descending order",
    )
    true_scores = np.einsum("qd,qkd->qk", queries, gallery[rows])
    error = float(np.abs(true_scores - scores).max()) if scores.size else 0.0
    _require(
        error <= tolerance,
        f"{name}: returned scores differ from the exact cosine of the "
        f"returned rows by up to {error:.2e} (tolerance {tolerance:g}): lfr compares them "
        "with its threshold, so they must be exact cosines",
    )
    brute = np.sort(queries @ gallery.T, axis=1)[:, ::-1][:, :kk]
    found = np.abs(scores - brute) <= tolerance
    recall = float(found.mean()) if found.size else 1.0
    above = brute >= threshold
    recall_at_threshold = float(found[above].mean()) if above.any() else 1.0
    _require(
        recall_at_threshold >= min_recall_at_threshold,
        f"{name}: returned {recall_at_threshold:.4f} of the exact top-{kk} rows scoring >= "
        f"{threshold} (required {min_recall_at_threshold}); a missed row above the threshold "
        "is a missed alert",
    )
    _require(
        recall >= min_recall,
        f"{name}: returned {recall:.4f} of the exact top-{kk} (required {min_recall})",
    )

    few = gallery[:3]
    index.build(few)
    _require(
        len(index) == 3,
        f"{name}: build() must replace the contents: len() is {len(index)} after building 3 rows",
    )
    scores, rows = _search(index, queries[:4], 10, f"{name} (k > rows)")
    _require(
        scores.shape == (4, 3), f"{name}: k=10 on 3 rows must return 4 x 3, got {scores.shape}"
    )

    wrong = rng.standard_normal((2, dim + 1)).astype(np.float32)
    try:
        index.search(wrong / np.linalg.norm(wrong, axis=1, keepdims=True), 3)
    except ValueError as exc:
        text = str(exc)
        _require(
            str(dim) in text and str(dim + 1) in text,
            f"{name}: the wrong-dimension error should name both dimensions ({dim + 1} "
            f"given, {dim} indexed), got {text!r}",
        )
    except Exception as exc:
        raise ContractError(
            f"{name}: a query of the wrong dimension must raise ValueError, "
            f"got {type(exc).__name__}: {exc}"
        ) from exc
    else:
        raise ContractError(
            f"{name}: a query of dimension {dim + 1} against a {dim}-d index was accepted"
        )
    return IndexReport(
        name=name,
        rows=len(gallery),
        queries=len(queries),
        k=kk,
        recall=recall,
        recall_at_threshold=recall_at_threshold,
        max_score_error=error,
    )


# -- notifier ---------------------------------------------------------------------------------


class NotifierReport(msgspec.Struct, frozen=True):
    name: str
    alerts: int
    attempts: int  # deliver() calls lfr made (retries and the replay included)
    failed_attempts: int


Received = Callable[[], Sequence[str] | Awaitable[Sequence[str]]]


class _Counting:
    """Wraps a notifier: counts calls, and fails the first attempt of chosen alerts."""

    def __init__(self, inner: Notifier, fail_once: set[str]) -> None:
        self.inner = inner
        self.name = inner.name
        self.fail_once = set(fail_once)
        self.calls = 0
        self.failed = 0

    async def deliver(self, alert: Alert) -> None:
        self.calls += 1
        if alert.id in self.fail_once:
            self.fail_once.discard(alert.id)
            self.failed += 1
            raise ConnectionError("contract check: simulated failure of a first attempt")
        await self.inner.deliver(alert)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _drive(notifier: _Counting, outbox: Outbox, alerts: Sequence[Alert]) -> None:
    """One NotifierActor run: replays the outbox's backlog, then delivers ``alerts`` sent live."""
    send: Sender[Alert]
    recv: Receiver[Alert]
    send, recv = open_channel(f"alerts:{notifier.name}", max(1, len(alerts)))
    actor = NotifierActor(notifier, recv, outbox, backoff_initial_s=0.01, backoff_max_s=0.05)
    for alert in alerts:
        outbox.add_alert(alert, [notifier.name])
        send.send_nowait(alert)
    send.close()
    try:
        await actor.run()
    finally:
        await actor.finish()


async def check_notifier(
    factory: Callable[[], Notifier],
    received: Received,
    tmp_path: Path,
    *,
    alerts: int = 6,
    timeout_s: float = 60.0,
) -> NotifierReport:
    """Driven by lfr's ``NotifierActor`` from a real ``Outbox``, the notifier delivers every alert
    exactly once, keyed by ``alert.id``, through a failed first attempt (retried), a crash
    between delivering and recording (the alert is delivered again after the restart) and a
    restart with a backlog.

    ``factory()`` returns a new notifier (called once per simulated process); ``received()``
    returns the idempotency keys the destination holds after its own deduplication, in any
    order (a list, so a duplicate shows). Alert images are small real JPEGs.
    """
    probe = factory()
    check_members(probe, "notifier")
    name = probe.name
    for method in ("deliver", "aclose"):
        _require(
            inspect.iscoroutinefunction(getattr(probe, method)),
            f"{name}: {method}() must be a coroutine function (async def)",
        )
    await probe.aclose()
    batch = sample_alerts(alerts, seed=7)
    half = len(batch) // 2
    outbox = Outbox(tmp_path / f"contract-{name}")
    try:
        with anyio.fail_after(timeout_s):
            # First process: live alerts, the first attempt of one of them fails.
            first = _Counting(factory(), fail_once={batch[0].id})
            await _drive(first, outbox, batch[:half])
            # Crash between the notifier's delivery and the outbox recording it: the alert was
            # delivered, stays pending, and is delivered again after the restart.
            crashed = factory()
            outbox.add_alert(batch[half], [name])
            await crashed.deliver(batch[half])
            await crashed.aclose()
            # Alerts persisted but not sent before the crash: the backlog of the next process.
            for alert in batch[half + 1 :]:
                outbox.add_alert(alert, [name])
            second = _Counting(factory(), fail_once=set())
            await _drive(second, outbox, [])
        undelivered = [a.id for a in batch if not outbox.is_delivered(a.id, name)]
    finally:
        outbox.close()
    _require(not undelivered, f"{name}: alerts still undelivered in the outbox: {undelivered}")
    got = received()
    keys = list(await got if inspect.isawaitable(got) else got)
    counts = Counter(keys)
    ids = {a.id for a in batch}
    missing = sorted(ids - set(counts))
    extra = sorted(set(counts) - ids)
    twice = sorted(k for k, n in counts.items() if n > 1)
    _require(
        not extra,
        f"{name}: the destination holds keys that are no alert id: {extra} "
        "(use alert.id as the idempotency key)",
    )
    _require(not missing, f"{name}: alerts never arrived (by alert id): {missing}")
    _require(
        not twice,
        f"{name}: alerts held more than once: {twice} (delivery is at least "
        "once: the destination must deduplicate by alert.id)",
    )
    return NotifierReport(
        name=name,
        alerts=len(batch),
        attempts=first.calls + second.calls + 1,
        failed_attempts=first.failed + second.failed,
    )


# -- detector ---------------------------------------------------------------------------------


class DetectorReport(msgspec.Struct, frozen=True):
    name: str
    frames: int
    faces: int
    max_shift_error_px: float  # worst box or landmark offset error on the padded frames


def _check_detection(det: object, shape: tuple[int, ...], where: str) -> Detection:
    _require(
        isinstance(det, Detection),
        f"{where}: detect() must return lfr.api.Detection, got {type(det).__name__}",
    )
    assert isinstance(det, Detection)
    x, y, w, h = det.box
    _require(
        all(math.isfinite(v) for v in det.box) and w > 0 and h > 0,
        f"{where}: box {det.box} is not (x, y, width, height) with a positive size",
    )
    _require(
        len(det.landmarks) == 5 and all(len(p) == 2 for p in det.landmarks),
        f"{where}: want 5 landmarks (x, y), got {det.landmarks}",
    )
    _require(
        math.isfinite(det.score) and 0.0 <= det.score <= 1.0,
        f"{where}: score {det.score} is not within 0..1",
    )
    height, width = shape[:2]
    margin_x, margin_y = 0.3 * w, 0.3 * h
    _require(
        -margin_x <= x
        and x + w <= width + margin_x
        and -margin_y <= y
        and y + h <= height + margin_y,
        f"{where}: box {det.box} lies outside the {width}x{height} frame: boxes are in the "
        "frame's pixel coordinates (scale back if you resize)",
    )
    for px, py in det.landmarks:
        _require(
            x - margin_x <= px <= x + w + margin_x and y - margin_y <= py <= y + h + margin_y,
            f"{where}: landmark ({px:.1f}, {py:.1f}) lies outside its box {det.box}",
        )
    return det


def _check_landmark_order(det: Detection, where: str) -> None:
    """Upright faces: eyes (image-left first), nose, mouth corners (left first), as aligned."""
    (lex, ley), (rex, rey), (_nx, ny), (lmx, lmy), (rmx, rmy) = det.landmarks
    _require(
        lex < rex and lmx < rmx,
        f"{where}: landmarks must be ordered left eye, right eye, nose, left mouth corner, "
        f"right mouth corner (left = smaller x in the image), got {det.landmarks}",
    )
    _require(
        max(ley, rey) < ny < min(lmy, rmy) + 0.05 * det.box[3],
        f"{where}: on an upright face the eyes are above the nose and the nose above the "
        f"mouth corners, got {det.landmarks}",
    )


def _check_mirrored(
    detector: Detector,
    frame: np.ndarray,
    dets: list[Detection],
    where: str,
    box_tolerance: float,
    tolerance_px: float,
) -> float:
    """On the mirrored frame each strong face is found at the mirrored box: catches a constant
    offset (a crop or a margin not added back) that padding alone cannot see."""
    width = frame.shape[1]
    mirrored = [
        _check_detection(d, frame.shape, f"{where} (mirrored)")
        for d in detector.detect(np.ascontiguousarray(frame[:, ::-1]))
    ]
    strongest = max(d.score for d in dets)
    worst = 0.0
    for det in dets:
        if det.score < 0.8 * strongest:
            continue
        x, y, w, h = det.box
        flipped = (width - x - w, y, w, h)
        match = max(mirrored, key=lambda m: iou(m.box, flipped), default=None)
        _require(
            match is not None and iou(match.box, flipped) > 0.3,
            f"{where}: the face at {det.box} was not found at {flipped} in the mirrored frame: "
            "boxes must be in the frame's pixel coordinates",
        )
        assert match is not None
        error = max(abs(a - b) for a, b in zip(match.box, flipped, strict=True))
        allowed = max(tolerance_px, box_tolerance * max(w, h))
        _require(
            error <= allowed,
            f"{where}: in the mirrored frame the box {det.box} should be at {flipped}, found "
            f"{match.box} (error {error:.1f} px > {allowed:.1f}): boxes must be in the frame's "
            "pixel coordinates",
        )
        worst = max(worst, error)
    return worst


def check_detector(
    detector: Detector,
    frames: Sequence[np.ndarray],
    *,
    min_faces: int = 1,
    pad: tuple[int, int] = (37, 23),
    landmark_tolerance: float = 0.08,
    box_tolerance: float = 0.15,
    tolerance_px: float = 4.0,
    upright: bool = True,
) -> DetectorReport:
    """Boxes and 5 landmarks in the frame's pixel coordinates, best first, scores within 0..1:
    on the same frame padded by ``pad`` (x, y) pixels on the left and top, every strong face is
    found again shifted by exactly that much: its landmarks within ``landmark_tolerance`` of the
    box size (or ``tolerance_px``), its box within ``box_tolerance`` (boxes of sliding-window
    detectors jitter by a cell or so; landmarks, which alignment uses, must not); on the
    mirrored frame, at the mirrored box (which catches a constant offset). A higher
    ``score_threshold`` returns no more faces; a blank or tiny image returns a list; the input
    image is not modified. ``frames`` must hold at least ``min_faces`` faces in all
    (``sample_frames`` does when lfr's demo data is around). ``upright``: the faces in
    ``frames`` are upright, so the landmark order is checked too.
    """
    import cv2

    check_members(detector, "detector")
    name = detector.name
    total, worst = 0, 0.0
    dx, dy = pad
    for number, frame in enumerate(frames):
        where = f"{name}, frame {number}"
        before = frame.copy()
        dets = [_check_detection(d, frame.shape, where) for d in detector.detect(frame)]
        _require(bool(np.array_equal(before, frame)), f"{where}: detect() modified its input")
        scores = [d.score for d in dets]
        _require(
            scores == sorted(scores, reverse=True),
            f"{where}: detections are not best first: scores {scores}",
        )
        if upright:
            for det in dets:
                if det.score >= 0.8 * max(scores):
                    _check_landmark_order(det, where)
        total += len(dets)
        strict = detector.detect(frame, 0.99)
        _require(
            len(strict) <= len(dets),
            f"{where}: score_threshold=0.99 found {len(strict)} "
            f"faces, more than the default threshold's {len(dets)}",
        )
        if not dets:
            continue
        padded = cv2.copyMakeBorder(
            frame, dy, dy // 2, dx, dx // 3, cv2.BORDER_CONSTANT, value=(127, 127, 127)
        )
        moved = [
            _check_detection(d, padded.shape, f"{where} (padded)") for d in detector.detect(padded)
        ]
        for det in dets:
            if det.score < 0.8 * max(scores):
                continue  # faces near the threshold may come and go with the frame size
            shifted = (det.box[0] + dx, det.box[1] + dy, det.box[2], det.box[3])
            match = max(moved, key=lambda m: iou(m.box, shifted), default=None)
            _require(
                match is not None and iou(match.box, shifted) > 0.3,
                f"{where}: the face at {det.box} was not found again, moved by ({dx}, {dy}), "
                "in the frame padded by that much: boxes must be in the frame's pixel "
                "coordinates (scale back if you resize)",
            )
            assert match is not None
            size = max(det.box[2], det.box[3])
            allowed = max(tolerance_px, box_tolerance * size)
            error = max(
                abs(match.box[0] - shifted[0]),
                abs(match.box[1] - shifted[1]),
                abs(match.box[2] - det.box[2]),
                abs(match.box[3] - det.box[3]),
            )
            worst = max(worst, error)
            _require(
                error <= allowed,
                f"{where}: padding the frame by ({dx}, {dy}) moved the box "
                f"{det.box} to {match.box}, not by ({dx}, {dy}): boxes must be in the frame's "
                f"pixel coordinates (error {error:.1f} px > {allowed:.1f})",
            )
            allowed = max(tolerance_px, landmark_tolerance * size)
            for (px, py), (qx, qy) in zip(det.landmarks, match.landmarks, strict=True):
                worst = max(worst, abs(qx - px - dx), abs(qy - py - dy))
                _require(
                    abs(qx - px - dx) <= allowed and abs(qy - py - dy) <= allowed,
                    f"{where}: landmark ({px:.1f}, {py:.1f}) moved to ({qx:.1f}, {qy:.1f}) "
                    f"on the frame padded by ({dx}, {dy}): landmarks must be in the frame's "
                    "pixel coordinates",
                )
        worst = max(
            worst, _check_mirrored(detector, frame, dets, where, box_tolerance, tolerance_px)
        )
    _require(
        total >= min_faces,
        f"{name}: found {total} faces in {len(frames)} sample frames, "
        f"want at least {min_faces} (pass frames with faces: lfr's demo scenes, "
        "$LFR_DEMO_DATA)",
    )
    for shape in ((240, 320, 3), (16, 16, 3)):
        blank = np.full(shape, 127, np.uint8)
        result = detector.detect(blank)
        _require(
            isinstance(result, list),
            f"{name}: detect() on a blank {shape} image returned "
            f"{type(result).__name__}, want a list",
        )
        for det in result:
            _check_detection(det, shape, f"{name}, blank {shape}")
    return DetectorReport(name=name, frames=len(frames), faces=total, max_shift_error_px=worst)


# -- embedder ---------------------------------------------------------------------------------


class EmbedderReport(msgspec.Struct, frozen=True):
    name: str
    dim: int
    faces: int
    min_self_similarity: float  # cosine of each face with a slightly brightened copy


def aligned_faces(
    frames: Sequence[np.ndarray], detector: Detector | None = None
) -> list[np.ndarray]:
    """112x112 aligned faces of ``frames`` (lfr's default detector unless one is given)."""
    from lfr.vision.align import align_face

    if detector is None:
        from lfr.vision.defaults import default_detector

        detector = default_detector()  # the embedder is not needed: no model loaded for it
    return [align_face(frame, det.landmarks) for frame in frames for det in detector.detect(frame)]


def check_embedder(
    embedder: Embedder,
    faces: Sequence[np.ndarray],
    *,
    min_faces: int = 2,
    batch_tolerance: float = 1e-3,
    min_self_similarity: float = 0.8,
) -> EmbedderReport:
    """``embed`` maps N aligned 112x112 BGR faces to N x ``dim`` float32 L2-normalised rows; an
    empty batch gives 0 x dim; a batch equals the faces embedded one by one (cosine within
    ``batch_tolerance``); the same input gives the same output; the input is not modified; a
    slightly brightened face stays close to itself (cosine >= ``min_self_similarity``).
    """
    check_members(embedder, "embedder")
    name, dim = embedder.name, embedder.dim
    _require(isinstance(dim, int) and dim > 0, f"{name}: dim must be a positive int, got {dim!r}")
    _require(
        len(faces) >= min_faces,
        f"{name}: need at least {min_faces} aligned faces, got {len(faces)}",
    )
    for face in faces:
        _require(
            face.shape == (112, 112, 3) and face.dtype == np.uint8,
            "faces must be aligned 112x112x3 uint8 crops (see aligned_faces())",
        )

    def embed(batch: list[np.ndarray], what: str) -> np.ndarray:
        out = np.asarray(embedder.embed(batch))
        _require(
            out.shape == (len(batch), dim),
            f"{name}: embed() of {what} returned shape {out.shape}, want ({len(batch)}, {dim})",
        )
        _require(out.dtype == np.float32, f"{name}: embed() must return float32, got {out.dtype}")
        _require(bool(np.isfinite(out).all()), f"{name}: embed() returned NaN or inf")
        if len(out):
            norms = np.linalg.norm(out, axis=1)
            _require(
                bool(np.allclose(norms, 1.0, atol=1e-3)),
                f"{name}: rows must be L2-normalised, norms {norms.round(4).tolist()}",
            )
        return out

    embed([], "an empty batch")
    copies = [f.copy() for f in faces]
    batch = embed(list(faces), f"{len(faces)} faces")
    _require(
        all(np.array_equal(a, b) for a, b in zip(copies, faces, strict=True)),
        f"{name}: embed() modified its input",
    )
    again = embed(list(faces), "the same faces again")
    _require(
        bool(np.allclose(batch, again, atol=1e-5)),
        f"{name}: the same faces gave different embeddings",
    )
    for i, face in enumerate(faces):
        single = embed([face], f"face {i} alone")[0]
        cosine = float(single @ batch[i])
        _require(
            cosine >= 1 - batch_tolerance,
            f"{name}: face {i} alone and in a batch differ (cosine {cosine:.5f})",
        )
    brighter = [np.clip(f.astype(np.int16) + 12, 0, 255).astype(np.uint8) for f in faces]
    similarity = np.einsum("nd,nd->n", batch, embed(brighter, "brightened faces"))
    worst = float(similarity.min())
    _require(
        worst >= min_self_similarity,
        f"{name}: a face and the same face 12 levels brighter "
        f"have cosine {worst:.3f} < {min_self_similarity}",
    )
    return EmbedderReport(name=name, dim=dim, faces=len(faces), min_self_similarity=worst)


# -- source -----------------------------------------------------------------------------------


class SourceReport(msgspec.Struct, frozen=True):
    name: str
    frames: int
    width: int
    height: int


async def check_source(
    source: Source, *, min_frames: int = 3, stop_after: int | None = None, timeout_s: float = 30.0
) -> SourceReport:
    """Run through lfr's ``SourceActor``: the source yields ``Frame`` objects of its own camera
    name, H x W x 3 uint8 images, increasing indexes, non-decreasing monotonic times, at least
    ``min_frames`` of them; after ``stop_after`` frames (default: never) ``stop()`` ends it.
    ``frames()`` must end by itself (a file) or after ``stop()`` (a live source). A source with
    the optional ``statistics()`` must return a ``lfr.api.SourceStats``."""
    check_members(source, "source")
    name = source.name
    send: Sender[Frame]
    capacity = 4
    send, recv = open_channel(f"frames:{name}", capacity)
    actor = SourceActor(source, send)
    got: list[Frame] = []

    async def consume() -> None:
        with recv:
            async for frame in recv:
                got.append(frame)
                if stop_after is not None and len(got) == stop_after:
                    actor.stop()

    with anyio.fail_after(timeout_s):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            try:
                await actor.run()
            finally:
                await actor.finish()
    _require(len(got) >= min_frames, f"{name}: yielded {len(got)} frames, want >= {min_frames}")
    raw: Any
    for i, frame in enumerate(got):
        raw = frame
        _require(
            isinstance(raw, Frame),
            f"{name}: frame {i} is a {type(raw).__name__}, want lfr.api.Frame",
        )
        image = frame.image
        _require(
            image.ndim == 3 and image.shape[2] == 3 and image.dtype == np.uint8,
            f"{name}: frame {i} image is {image.shape} {image.dtype}, want H x W x 3 uint8",
        )
    _require(all(f.camera == name for f in got), f"{name}: Frame.camera must be the source's name")
    indexes = [f.index for f in got]
    _require(
        all(b > a for a, b in itertools.pairwise(indexes)),
        f"{name}: frame indexes must increase, got {indexes[:10]}...",
    )
    times = [f.mono_time for f in got]
    _require(all(b >= a for a, b in itertools.pairwise(times)), f"{name}: mono_time went backwards")
    if stop_after is not None:
        _require(
            len(got) <= stop_after + capacity + 1,  # what was queued, and one in flight
            f"{name}: {len(got)} frames arrived after stop() at frame {stop_after}",
        )
    statistics = getattr(source, "statistics", None)
    if statistics is not None:  # optional; what it returns is shown as the camera's figures
        reported = statistics()
        _require(isinstance(reported, SourceStats),
                 f"{name}: statistics() returned a {type(reported).__name__}, want "
                 "lfr.api.SourceStats")
    height, width = got[0].image.shape[:2]
    return SourceReport(name=name, frames=len(got), width=int(width), height=int(height))
