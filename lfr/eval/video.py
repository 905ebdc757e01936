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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from rich.table import Table

from lfr.messages import Alert


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
        raise TruthError(f"{path}: {exc}") from None
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
    truth_boxes: dict[int, list[tuple[int, tuple[float, ...]]]], alert: VideoAlert
) -> int | None:
    """Index of the passer whose face box at the evidence frame holds the alert box's centre."""
    x, y, w, h = alert.box
    cx, cy = x + w / 2, y + h / 2
    best, best_d = None, float("inf")
    for i, (bx, by, bw, bh) in truth_boxes.get(alert.frame_index, []):
        if bx <= cx <= bx + bw and by <= cy <= by + bh:
            d = (bx + bw / 2 - cx) ** 2 + (by + bh / 2 - cy) ** 2
            if d < best_d:
                best, best_d = i, d
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
    boxes: dict[int, list[tuple[int, tuple[float, ...]]]] = {}
    for i, p in enumerate(truth.passers):
        for frame, x, y, w, h, _visible in p.boxes:
            boxes.setdefault(frame, []).append((i, (x, y, w, h)))
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


def run_video(config: Any, truth: Truth, registry: Any) -> VideoReport:
    """Play the config's cameras once, offline, through a deployment; score its alerts."""
    import anyio

    from lfr.deployment import Deployment

    start = time.perf_counter()
    decided: dict[str, int] = {}
    raised: list[Alert] = []
    last_frame = [0]

    def on_frame(item: Any, results: Any, alerts: list[Alert]) -> None:
        last_frame[0] = max(last_frame[0], item.frame.index)
        for alert in alerts:
            decided[alert.id] = item.frame.index

    deployment = Deployment(
        config, registry, offline=True, once=True, on_alert=raised.append, on_frame=on_frame
    )
    summary = anyio.run(deployment.run, False)
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
    # What the matcher actually ran with (the deployment decides how tracks are configured).
    actor = deployment.matcher_actor
    fusion = actor.tracker.settings.fusion if actor is not None else "?"
    report = score_video(
        truth,
        alerts,
        frames=summary.frames,
        threshold=config.matching.threshold,
        fusion=fusion,
        min_face_px=config.quality.min_face_px,
    )
    return msgspec.structs.replace(report, seconds=round(time.perf_counter() - start, 1))


def render_video(r: VideoReport) -> Table:
    table = Table(
        title=f"Walk-past: {r.passers} passers, {r.watchlisted} on the watchlist "
        f"(threshold {r.threshold:.3f}, fusion {r.fusion})",
        show_header=False,
        title_justify="left",
    )
    table.add_column("", style="bold")
    table.add_column("", justify="right")
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
