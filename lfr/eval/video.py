"""Person-level accuracy on a video with ground truth (``lfr eval video``).

The video plays through a real deployment (offline: every frame is processed), and each alert is
checked against the ground truth (``tools/make_walkpast.py`` writes both):

- an alert belongs to the passer whose face box, in the frame of the alert's evidence (its best
  face), contains the centre of the alert's box;
- a watchlisted passer is *identified* when an alert naming them fires while they are in view
  (decided no later than their last frame); an alert naming them after they left is *late*;
- an alert naming anyone else, or on no passer at all, is a *false alert*;
- a second alert for the same passer is a *duplicate* (tracking should prevent it);
- time to alert runs from the passer's first frame in view (and from the first frame where their
  face reaches the configured minimum size, below which lfr does not even try).

Truth file (JSON): ``{"video", "fps", "frames", "passers": [{"id", "person", "image",
"watchlist_id" (or null), "first_frame", "last_frame", "boxes": [[frame, x, y, w, h, visible],
...]}], "watchlist": {person: [enrolment photos]}}``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from rich.table import Table

from lfr.api import validation_message
from lfr.eval.tables import metric_table
from lfr.matching import configured_matcher, configured_watchlist
from lfr.messages import Face
from lfr.policy import AlertPolicy
from lfr.tracking import Search, TrackerSettings, Verdict, iou


class TruthError(ValueError):
    """The truth file cannot be used (names the file and the field)."""


class TruthPasser(msgspec.Struct, frozen=True):
    id: str
    person: str
    watchlist_id: str | None
    first_frame: int
    last_frame: int
    boxes: list[tuple[int, float, float, float, float, int]]
    image: str = ""


class Truth(msgspec.Struct, frozen=True):
    video: str
    fps: float
    frames: int
    passers: list[TruthPasser]
    watchlist: dict[str, list[str]] = msgspec.field(default_factory=dict)


def load_truth(path: Path) -> Truth:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise TruthError(f"{path}: cannot read truth file: {exc.strerror or exc}") from None
    try:
        truth = msgspec.json.decode(data, type=Truth)
    except msgspec.ValidationError as exc:
        raise TruthError(validation_message(exc, f"{path}: $")) from None
    except msgspec.DecodeError as exc:
        raise TruthError(f"{path}: not valid JSON: {exc}") from None
    if truth.fps <= 0:
        raise TruthError(f"{path}: $.fps: must be > 0, got {truth.fps}")
    for i, p in enumerate(truth.passers):
        if p.last_frame < p.first_frame:
            raise TruthError(
                f"{path}: $.passers[{i}]: last_frame {p.last_frame} is before "
                f"first_frame {p.first_frame}"
            )
    return truth


class VideoAlert(msgspec.Struct, frozen=True):
    """What scoring needs of an alert: who, where (the evidence frame and box), when decided."""

    person_id: str
    score: float
    frame_index: int  # the evidence (best face) frame
    box: tuple[float, float, float, float]
    decided_frame: int  # the frame whose processing raised it (end of video: frames)


class Delay(msgspec.Struct, frozen=True):
    mean: float | None
    median: float | None
    p90: float | None
    max: float | None


class FalseAlert(msgspec.Struct, frozen=True):
    person_id: str  # whom the alert named
    passer: str | None  # whom the truth shows there (None: no passer)
    frame: int
    score: float


class VideoReport(msgspec.Struct, frozen=True, kw_only=True):
    tpir: float  # watchlisted passers identified while in view
    identified: int
    watchlisted: int
    false_alerts: int
    false_alerts_per_1000_passers: float
    passers: int
    alerts: int
    duplicate_alerts: int  # alerts beyond the first for a passer
    late_alerts: int  # right person, decided after they left the view
    time_to_alert_s: Delay  # from the first frame in view
    time_to_alert_from_min_face_s: Delay  # from the first frame with a face of min_face_px
    missed: list[str]  # watchlisted passers (person) with no alert in view
    false: list[FalseAlert]
    frames: int
    fps: float
    threshold: float
    fusion: str
    seconds: float = 0.0


def _delay(values: Sequence[float]) -> Delay:
    if not values:
        return Delay(None, None, None, None)
    a = np.asarray(values, np.float64)
    return Delay(
        mean=round(float(a.mean()), 3),
        median=round(float(np.median(a)), 3),
        p90=round(float(np.percentile(a, 90)), 3),
        max=round(float(a.max()), 3),
    )


def _owner(
    truth_boxes: dict[int, list[tuple[int, tuple[float, ...], bool]]], alert: VideoAlert
) -> int | None:
    """Index of the passer whose face the alert's evidence box shows: of the face boxes at the
    evidence frame that hold the box's centre, a visible face before a hidden one (a face
    behind someone closer is not what the detector saw), then the one it overlaps most."""
    x, y, w, h = alert.box
    cx, cy = x + w / 2, y + h / 2
    best, best_key = None, (False, -1.0)
    for i, (bx, by, bw, bh), visible in truth_boxes.get(alert.frame_index, []):
        if bx <= cx <= bx + bw and by <= cy <= by + bh:
            key = (visible, iou((bx, by, bw, bh), (x, y, w, h)))
            if key > best_key:
                best, best_key = i, key
    return best


def score_video(
    truth: Truth,
    alerts: Sequence[VideoAlert],
    *,
    frames: int,
    threshold: float,
    fusion: str,
    min_face_px: float = 24.0,
) -> VideoReport:
    """Person-level figures of these alerts against the truth (see the module docstring)."""
    boxes: dict[int, list[tuple[int, tuple[float, ...], bool]]] = {}
    for i, p in enumerate(truth.passers):
        for frame, x, y, w, h, visible in p.boxes:
            boxes.setdefault(frame, []).append((i, (x, y, w, h), bool(visible)))
    listed = [i for i, p in enumerate(truth.passers) if p.watchlist_id]
    hits: dict[int, list[VideoAlert]] = {}
    false: list[FalseAlert] = []
    late = 0
    for alert in sorted(alerts, key=lambda a: a.decided_frame):
        owner = _owner(boxes, alert)
        passer = truth.passers[owner] if owner is not None else None
        if passer is None or passer.watchlist_id != alert.person_id:
            false.append(
                FalseAlert(
                    person_id=alert.person_id,
                    passer=passer.person if passer else None,
                    frame=alert.decided_frame,
                    score=round(alert.score, 4),
                )
            )
            continue
        assert owner is not None
        if alert.decided_frame > passer.last_frame:
            late += 1
            continue
        hits.setdefault(owner, []).append(alert)
    delays, delays_min_face = [], []
    for owner, found in hits.items():
        passer = truth.passers[owner]
        decided = found[0].decided_frame
        delays.append((decided - passer.first_frame) / truth.fps)
        sized = [b[0] for b in passer.boxes if b[5] and min(b[3], b[4]) >= min_face_px]
        if sized:
            delays_min_face.append(max(0, decided - sized[0]) / truth.fps)
    passers = len(truth.passers)
    return VideoReport(
        tpir=len(hits) / len(listed) if listed else float("nan"),
        identified=len(hits),
        watchlisted=len(listed),
        false_alerts=len(false),
        false_alerts_per_1000_passers=1000.0 * len(false) / passers if passers else 0.0,
        passers=passers,
        alerts=len(alerts),
        duplicate_alerts=sum(len(found) - 1 for found in hits.values()),
        late_alerts=late,
        time_to_alert_s=_delay(delays),
        time_to_alert_from_min_face_s=_delay(delays_min_face),
        missed=sorted(truth.passers[i].person for i in listed if i not in hits),
        false=false,
        frames=frames,
        fps=truth.fps,
        threshold=threshold,
        fusion=fusion,
    )


class RecordedFrame(msgspec.Struct, frozen=True):
    """A processed frame's faces as the matcher received them (crops dropped), for replays."""

    camera: str
    index: int
    mono_time: float  # its capture time, as the matcher's policy saw it
    faces: tuple[Face, ...]


class Recording(msgspec.Struct):
    frames: list[RecordedFrame]
    search: Search  # the config's watchlist search
    cooldown_s: float
    tracking: TrackerSettings
    alerts: list[VideoAlert]  # what the deployment raised, in order


_NO_CROP = np.zeros((1, 1, 3), np.uint8)


def run_video(
    config: Any,
    truth: Truth,
    registry: Any,
    *,
    analyzer: Any | None = None,
    record: bool = False,
    progress: Callable[[int], None] | None = None,
) -> tuple[VideoReport, Recording | None]:
    """Play the config's cameras once, offline, through a deployment; score its alerts. With
    ``record``, also keep every frame's faces (in memory) so `replay_video` can try other track
    settings and thresholds on the same detections. ``progress`` gets each frame's index;
    ``analyzer``: the config's, when the caller has built it already."""
    from lfr.deployment import Deployment, run_following

    start = time.perf_counter()
    decided: dict[str, int] = {}
    last_frame = [0]
    frames: list[RecordedFrame] = []

    def on_frame(report: Any) -> None:
        item = report.faces
        last_frame[0] = max(last_frame[0], item.frame.index)
        for alert in report.alerts:
            decided[alert.id] = item.frame.index
        if record:
            faces = tuple(msgspec.structs.replace(f, crop=_NO_CROP) for f in item.faces)
            frames.append(RecordedFrame(item.frame.camera, item.frame.index, item.frame.mono_time,
                                        faces))
        if progress is not None:
            progress(item.frame.index)

    def on_frames(reports: list[Any]) -> None:
        for report in reports:
            on_frame(report)

    deployment = Deployment(config, registry, offline=True, once=True, analyzer=analyzer)

    # The reports' images are dropped as they come: memory stays flat over a long video.
    summary, raised = run_following(deployment, on_frames)
    alerts = [
        VideoAlert(
            person_id=a.person_id,
            score=a.score,
            frame_index=a.frame_index,
            box=a.box,
            decided_frame=decided.get(a.id, last_frame[0] + 1),
        )
        for a in raised
    ]
    matching = config.matching
    report = score_video(
        truth,
        alerts,
        frames=summary.frames,
        threshold=matching.threshold,
        fusion=matching.tracking.fusion,
        min_face_px=config.quality.min_face_px,
    )
    recording = None
    if record:
        # The same search the deployment built from this config (bundle and index backend).
        matcher = configured_matcher(config, registry, configured_watchlist(config))
        recording = Recording(frames, matcher.rank, matching.cooldown_s, matching.tracking,
                              alerts)
    report = msgspec.structs.replace(report, seconds=round(time.perf_counter() - start, 1))
    return report, recording


def replay_alerts(
    recording: Recording, settings: TrackerSettings, threshold: float
) -> list[VideoAlert]:
    """The alerts the matcher would have raised on the recorded faces with these track settings
    and this threshold: the recorded frames go through `AlertPolicy.observe`, as in the
    deployment's matcher actor, and the policy is flushed at the end of the input as it is."""
    policy = AlertPolicy(recording.search, threshold, settings, recording.cooldown_s)
    alerts: list[VideoAlert] = []

    def add(verdicts: list[Verdict], frame: int) -> None:
        alerts.extend(
            VideoAlert(person_id=v.person_id, score=v.score, frame_index=v.face.frame_index,
                       box=v.face.detection.box, decided_frame=frame)
            for v in verdicts
        )

    for f in recording.frames:
        add(policy.observe(f.camera, f.faces, f.mono_time).verdicts, f.index)
    if recording.frames:
        last = recording.frames[-1]
        add(policy.flush(last.mono_time), last.index + 1)
    return alerts


def replay_video(
    recording: Recording,
    truth: Truth,
    settings: TrackerSettings,
    threshold: float,
    min_face_px: float = 24.0,
) -> VideoReport:
    """`replay_alerts`, scored."""
    alerts = replay_alerts(recording, settings, threshold)
    return score_video(truth, alerts, frames=len(recording.frames), threshold=threshold,
                       fusion=settings.fusion, min_face_px=min_face_px)


class Variant(msgspec.Struct, frozen=True):
    """One way of turning faces into alerts, for `lfr eval video --compare`."""

    name: str
    settings: TrackerSettings


def variants(configured: TrackerSettings) -> list[Variant]:
    """Per-frame decisions (lfr before tracking), Frigate's weighted track score (the anchor),
    lfr's fused embedding without and with its confirmation and size gate (as configured)."""
    bare = msgspec.structs.replace(configured, confirm=1, decision_px=0.0)
    return [
        Variant("frame: any face", msgspec.structs.replace(bare, fusion="frame", min_frames=1)),
        Variant("frigate: weighted score", msgspec.structs.replace(bare, fusion="frigate")),
        Variant("score: weighted mean", msgspec.structs.replace(bare, fusion="score")),
        Variant("embedding: fused", msgspec.structs.replace(bare, fusion="embedding")),
        Variant("as configured", configured),
    ]


class CompareRow(msgspec.Struct, frozen=True):
    variant: str
    fusion: str
    threshold: float
    identified: int
    watchlisted: int
    false_alerts: int
    duplicate_alerts: int
    late_alerts: int
    time_to_alert_median_s: float | None


def compare(
    recording: Recording, truth: Truth, thresholds: Sequence[float], min_face_px: float = 24.0
) -> list[CompareRow]:
    rows = []
    for variant in variants(recording.tracking):
        for t in thresholds:
            r = replay_video(recording, truth, variant.settings, t, min_face_px)
            rows.append(CompareRow(variant=variant.name, fusion=variant.settings.fusion,
                                   threshold=t, identified=r.identified,
                                   watchlisted=r.watchlisted, false_alerts=r.false_alerts,
                                   duplicate_alerts=r.duplicate_alerts, late_alerts=r.late_alerts,
                                   time_to_alert_median_s=r.time_to_alert_s.median))
    return rows


def render_compare(rows: Sequence[CompareRow]) -> Table:
    thresholds = sorted({r.threshold for r in rows})
    table = Table(title="Same detections, other decisions: identified / false alerts "
                  "(duplicates) · median time to alert", title_justify="left")
    table.add_column("decision")
    for t in thresholds:
        table.add_column(f"threshold {t:.3f}", justify="right")
    for name in dict.fromkeys(r.variant for r in rows):
        cells = {r.threshold: r for r in rows if r.variant == name}
        table.add_row(name, *(
            f"{c.identified}/{c.watchlisted}, {c.false_alerts} FA"
            + (f" ({c.duplicate_alerts} dup)" if c.duplicate_alerts else "")
            + (f" · {c.time_to_alert_median_s:.1f} s" if c.time_to_alert_median_s is not None
               else "")
            for c in (cells[t] for t in thresholds)))
    return table


def render_video(r: VideoReport) -> Table:
    table = metric_table(
        f"Walk-past: {r.passers} passers, {r.watchlisted} on the watchlist "
        f"(threshold {r.threshold:.3f}, fusion {r.fusion})"
    )
    table.add_row("TPIR (person level)", f"{r.tpir:.3f} ({r.identified} of {r.watchlisted})")
    table.add_row(
        "false alerts",
        f"{r.false_alerts} ({r.false_alerts_per_1000_passers:.2f} per 1,000 passers)",
    )
    table.add_row("alerts", f"{r.alerts} ({r.duplicate_alerts} duplicates, {r.late_alerts} late)")
    d = r.time_to_alert_s
    if d.median is not None:
        table.add_row(
            "time to alert", f"median {d.median:.2f} s, p90 {d.p90:.2f} s from first appearance"
        )
    m = r.time_to_alert_from_min_face_s
    if m.median is not None:
        table.add_row("", f"median {m.median:.2f} s, p90 {m.p90:.2f} s from a usable face")
    if r.missed:
        table.add_row("missed", ", ".join(r.missed[:8]) + (" ..." if len(r.missed) > 8 else ""))
    for f in r.false[:5]:
        table.add_row(
            "false alert",
            f"{f.person_id} on {f.passer or 'no passer'} (frame {f.frame}, {f.score:.3f})",
        )
    table.add_row("frames", f"{r.frames} at {r.fps:g} fps, {r.seconds:.0f} s")
    return table
