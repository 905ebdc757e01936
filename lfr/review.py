"""Review of recorded footage (``lfr review``): every appearance of a listed person in video files.

The files play through a real deployment (``Deployment(offline=True, once=True)``, each file a
camera read as fast as it decodes), so a review follows the rules of a live run: every frame goes
through detection, alerts are written to the outbox and the audit log of the review's data
directory before anything else sees them, and faces that match no one are forgotten in the
matcher. The review reads the matcher's frame broadcast only for numbers (per face, its track id,
its box and the person its track decided on), keeps them in memory while the track may still
alert and forgets a track of nobody on the list once it has ended; it never keeps an image of a
face that matched no one, and writes nothing about it.

An *appearance* is one alert and the person track behind it: the deployment raises one alert per
(file, person) per ``matching.cooldown_s``, and the appearance runs from the first to the last
frame of that alert's track. A later track of the same person in the same file that the cooldown
kept from alerting (the person left the view and came back) extends the appearance it was folded
into; a track that decided for a person without any alert is not reported (every finding is an
audited alert). Times are seconds from the file's first frame, from the container's presentation
timestamps; frame indices count decoded frames from 0 (``Alert.frame_index``).

What a review writes in its output folder:

- ``data/`` (unless told otherwise): the deployment's outbox and audit log, as a live run's;
- ``crops/<alert id>.jpg`` and ``crops/<alert id>-watchlist.jpg``: each appearance's best crop and
  the person's watchlist photo (alert images: delete them with the case, retention does not);
- ``contact_sheet.html`` and ``contact_sheet.png``: the crops beside the watchlist photos, for the
  reviewing officer;
- ``review.json``: the `ReviewReport` (``lfr review --json`` prints the same object).
"""

from __future__ import annotations

import html
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import av
import av.error
import cv2
import msgspec
import numpy as np

from lfr.config import Config, default_config, parse_config
from lfr.messages import Alert
from lfr.pipeline.matcher import FrameReport
from lfr.plugins import Registry
from lfr.vision.analyzer import FaceAnalyzer


class ReviewError(ValueError):
    """A video that cannot be reviewed (names the file)."""


class Video(msgspec.Struct, frozen=True):
    """One reviewed file."""

    file: str
    camera: str  # the file's camera name in the deployment's records
    frames: int  # in the container (its packets)
    processed: int  # frames that went through detection
    duration_s: float


class Appearance(msgspec.Struct, frozen=True, kw_only=True):
    """A listed person's appearance in one file (see the module docstring)."""

    file: str
    camera: str
    person_id: str
    name: str
    first_s: float  # seconds from the file's first frame
    last_s: float
    first_frame: int
    last_frame: int
    best_score: float  # the best alert's fused score
    best_frame: int  # the best alert's evidence frame
    alerts: list[str]  # alert ids, in the outbox and the audit log
    crop: str  # the best crop, relative to the output folder
    watchlist_photo: str  # relative to the output folder


class ReviewReport(msgspec.Struct, frozen=True, kw_only=True):
    videos: list[Video]
    appearances: list[Appearance]  # by file, then first frame
    watchlist_size: int
    threshold: float
    frames: int  # processed, every file
    faces: int
    alerts: int
    seconds: float  # wall time of the review
    data_dir: str
    contact_sheet: str  # the HTML page
    failures: list[str] = msgspec.field(default_factory=list)  # as `lfr run`'s summary


# -- the files --------------------------------------------------------------------------------


def frame_times(path: Path) -> list[float]:
    """Seconds from the first frame, of every frame of the file's first video stream in
    presentation order, from its packets' timestamps (nothing is decoded). A stream without
    timestamps is timed by its frame rate."""
    try:
        container = av.open(str(path))
    except (av.error.FFmpegError, OSError) as exc:
        raise ReviewError(f"{path}: cannot open the video: {exc}") from None
    with container:
        if not container.streams.video:
            raise ReviewError(f"{path}: no video stream")
        stream = container.streams.video[0]
        try:
            stamps = [p.pts for p in container.demux(stream) if p.size]
        except av.error.FFmpegError as exc:
            raise ReviewError(f"{path}: cannot read the video: {exc}") from None
        if not stamps:
            raise ReviewError(f"{path}: no video frames")
        if any(pts is None for pts in stamps) or stream.time_base is None:
            rate = float(stream.average_rate or stream.guessed_rate or 25)
            return [n / rate for n in range(len(stamps))]
        ordered = sorted(int(pts) for pts in stamps if pts is not None)
        start = stream.start_time if stream.start_time is not None else ordered[0]
        base = float(stream.time_base)
        return [max(0.0, (pts - start) * base) for pts in ordered]


def camera_names(videos: Sequence[Path]) -> list[str]:
    """A distinct camera name per file, from its name: ``door``, ``door-2``, ..."""
    names: list[str] = []
    for video in videos:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", video.stem) or "video"
        name, n = stem, 1
        while name in names:
            n += 1
            name = f"{stem}-{n}"
        names.append(name)
    return names


def review_config(videos: Sequence[Path], cameras: Sequence[str], bundle: Path, data_dir: Path,
                  base: Config | None = None) -> Config:
    """``base`` (models, threshold, tracking, quality, privacy, audit; lfr's defaults without
    one) with the videos as its cameras, read as fast as they decode, once; ``bundle`` as its
    watchlist; no notifier (the review's report is its delivery)."""
    base = base or default_config("review")
    data = msgspec.to_builtins(base)
    data.update(
        cameras=[{"name": name, "url": str(video.resolve()), "realtime": False, "loop": False}
                 for video, name in zip(videos, cameras, strict=True)],
        plugin_cameras=[],
        watchlist={"bundle": str(bundle.resolve())},
        data_dir=str(data_dir.resolve()),
        notifiers=[],
    )
    return parse_config(data, base.source_file or "<review>")


# -- following the deployment -------------------------------------------------------------------


@dataclass
class _Track:
    camera: str
    first: int
    last: int
    person: str | None = None
    # (frame index, box) of its faces while it may still raise an alert: an alert names its
    # evidence face by frame and box, not by track. Dropped once the track has ended.
    faces: set[tuple[int, tuple[float, ...]]] | None = field(default_factory=set)


class _Follower:
    """Reads the matcher's frame reports as they come: track spans (numbers only), which track
    each alert came from, and the frames processed."""

    def __init__(self, max_missed: int, total: int,
                 progress: Callable[[int, int], None] | None) -> None:
        # A track ends at most max_missed frames of its camera after its last face; twice that
        # is a margin against off-by-ones.
        self._horizon = 2 * (max_missed + 1)
        self._progress, self.total, self.done = progress, total, 0
        self.tracks: dict[int, _Track] = {}
        self.alert_tracks: dict[str, int] = {}  # alert id -> track id
        self._alerted: set[int] = set()
        self._open: dict[str, set[int]] = {}  # camera -> tracks that may still alert

    def take(self, reports: list[FrameReport]) -> None:
        for report in reports:
            self._frame(report)
        self.done += len(reports)
        if self._progress is not None and reports:
            self._progress(self.done, self.total)

    def _frame(self, report: FrameReport) -> None:
        frame = report.faces.frame
        camera, index = frame.camera, frame.index
        open_tracks = self._open.setdefault(camera, set())
        for face, track_id, person in zip(report.faces.faces, report.track_ids, report.persons,
                                          strict=True):
            track = self.tracks.get(track_id)
            if track is None:
                track = self.tracks[track_id] = _Track(camera, index, index)
                open_tracks.add(track_id)
            track.last = index
            if track.faces is not None:
                track.faces.add((face.frame_index, face.detection.box))
            if person is not None:
                track.person = person.person_id
        for alert in report.alerts:
            self.place(alert)
        for track_id in [t for t in open_tracks if index - self.tracks[t].last > self._horizon]:
            open_tracks.discard(track_id)
            track = self.tracks[track_id]
            if track.person is None and track_id not in self._alerted:
                del self.tracks[track_id]  # nobody on the list: not even its span is kept
            else:
                track.faces = None

    def place(self, alert: Alert) -> None:
        """Which track raised ``alert``: the one holding its evidence face."""
        if alert.id in self.alert_tracks:
            return
        key = (alert.frame_index, tuple(alert.box))
        for track_id in self._open.get(alert.camera, ()):
            faces = self.tracks[track_id].faces
            if faces is not None and key in faces:
                self.alert_tracks[alert.id] = track_id
                self._alerted.add(track_id)
                return


@dataclass
class _Span:
    alerts: list[Alert]
    first: int
    last: int


def _appearances(alerts: Sequence[Alert], follower: _Follower) -> list[_Span]:
    """Each alert with the span of its track, extended by the tracks the cooldown folded in."""
    by_key: dict[tuple[str, str], list[_Span]] = {}
    for alert in sorted(alerts, key=lambda a: a.frame_index):
        track_id = follower.alert_tracks.get(alert.id)
        track = follower.tracks.get(track_id) if track_id is not None else None
        first, last = (track.first, track.last) if track else (alert.frame_index,) * 2
        by_key.setdefault((alert.camera, alert.person_id), []).append(_Span([alert], first, last))
    # Tracks that decided for a listed person without an alert of their own (the cooldown):
    # they extend the latest appearance of that person in that file that began before them.
    alerted = set(follower.alert_tracks.values())
    for track_id, track in follower.tracks.items():
        if track.person is None or track_id in alerted:
            continue
        earlier = [s for s in by_key.get((track.camera, track.person), [])
                   if s.first <= track.first]
        if earlier:
            earlier[-1].last = max(earlier[-1].last, track.last)
    return [span for spans in by_key.values() for span in spans]


# -- the review ---------------------------------------------------------------------------------


def review(videos: Sequence[Path], bundle: Path, out: Path, registry: Registry, *,
           config: Config | None = None, data_dir: Path | None = None,
           analyzer: FaceAnalyzer | None = None,
           progress: Callable[[int, int], None] | None = None) -> ReviewReport:
    """Every appearance of a person of ``bundle`` in ``videos`` (see the module docstring);
    writes the output folder ``out`` and returns the report. ``config``: models and matching
    (lfr's defaults without one); ``progress`` gets the frames processed so far and the
    frames of every file (from their containers). ReviewError for a file that cannot be read;
    the deployment's own errors (ConfigError, WatchlistError) for a bundle it cannot use."""
    from lfr.deployment import Deployment, run_following

    started = time.perf_counter()
    if not videos:
        raise ReviewError("no video to review")
    times = {video: frame_times(video) for video in videos}
    cameras = camera_names(videos)
    data_dir = data_dir or out / "data"
    settings = review_config(videos, cameras, bundle, data_dir, config)
    deployment = Deployment(settings, registry, offline=True, once=True, analyzer=analyzer)
    total = sum(len(stamps) for stamps in times.values())
    follower = _Follower(settings.matching.tracking.max_missed, total, progress)

    # Reports are dropped as they come (their frames hold images): only spans are kept.
    summary, raised = run_following(deployment, follower.take)
    for alert in raised:  # those raised when the files ended (no frame report)
        follower.place(alert)

    by_camera = dict(zip(cameras, videos, strict=True))
    crops = out / "crops"
    crops.mkdir(parents=True, exist_ok=True)
    appearances = []
    for span in _appearances(raised, follower):
        best, first, last = max(span.alerts, key=lambda a: a.score), span.first, span.last
        video = by_camera[best.camera]
        stamps = times[video]

        def at(index: int, stamps: list[float] = stamps) -> float:
            return round(stamps[min(index, len(stamps) - 1)], 3)

        crop, photo = f"crops/{best.id}.jpg", f"crops/{best.id}-watchlist.jpg"
        (out / crop).write_bytes(best.crop_jpeg)
        (out / photo).write_bytes(best.watchlist_jpeg)
        appearances.append(Appearance(
            file=str(video), camera=best.camera, person_id=best.person_id, name=best.name,
            first_s=at(first), last_s=at(last), first_frame=first, last_frame=last,
            best_score=round(best.score, 4), best_frame=best.frame_index,
            alerts=[a.id for a in span.alerts], crop=crop, watchlist_photo=photo))
    order = {camera: i for i, camera in enumerate(cameras)}
    appearances.sort(key=lambda a: (order[a.camera], a.first_frame, a.person_id))
    videos_out = [
        Video(file=str(video), camera=camera, frames=len(times[video]),
              processed=int(summary.cameras.get(camera, {}).get("frames_emitted", 0)),
              duration_s=round(times[video][-1], 3))
        for video, camera in zip(videos, cameras, strict=True)]
    sheet = out / "contact_sheet.html"
    report = ReviewReport(
        videos=videos_out, appearances=appearances,
        watchlist_size=len(deployment.watchlist.persons) if deployment.watchlist else 0,
        threshold=settings.matching.threshold, frames=summary.frames, faces=summary.faces,
        alerts=summary.alerts, seconds=round(time.perf_counter() - started, 2),
        data_dir=str(settings.resolved_data_dir()), contact_sheet=str(sheet),
        failures=list(summary.failures))
    sheet.write_text(contact_sheet_html(report), encoding="utf-8")
    write_contact_sheet_png(report, out, out / "contact_sheet.png")
    (out / "review.json").write_bytes(msgspec.json.format(msgspec.json.encode(report)))
    return report


# -- the contact sheet --------------------------------------------------------------------------


def _clock(seconds: float) -> str:
    minutes, rest = divmod(seconds, 60)
    hours, minutes = divmod(int(minutes), 60)
    return f"{hours:d}:{minutes:02d}:{rest:06.3f}"


def contact_sheet_html(report: ReviewReport) -> str:
    """One row per appearance: the best crop beside the watchlist photo, who, where and when.
    Paths are relative: the page goes with its ``crops/`` folder."""
    e = html.escape
    rows = "\n".join(
        f"<tr><td><img src=\"{e(a.crop)}\" alt=\"crop\"></td>"
        f"<td><img src=\"{e(a.watchlist_photo)}\" alt=\"watchlist photo\"></td>"
        f"<td><b>{e(a.name)}</b> ({e(a.person_id)})<br>{e(a.file)}<br>"
        f"{_clock(a.first_s)} to {_clock(a.last_s)} (frames {a.first_frame}-{a.last_frame})<br>"
        f"best score {a.best_score:.3f} (frame {a.best_frame}); alerts {e(', '.join(a.alerts))}"
        "</td></tr>"
        for a in report.appearances)
    files = "".join(f"<li>{e(v.file)}: {v.processed} of {v.frames} frames, "
                    f"{_clock(v.duration_s)}</li>" for v in report.videos)
    return (
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>lfr review</title>\n"
        "<style>body{font-family:sans-serif}td{vertical-align:top;padding:4px}"
        "img{height:160px}</style></head><body>\n"
        f"<h1>{len(report.appearances)} appearances of listed people</h1>\n"
        f"<p>Watchlist of {report.watchlist_size} people, threshold {report.threshold:.3f}. "
        f"Records (outbox, audit log): {e(report.data_dir)}. Every appearance is an alert: "
        "confirm or reject it there (<code>lfr report</code>).</p>\n"
        f"<ul>{files}</ul>\n<table>\n<tr><th>camera crop</th><th>watchlist</th><th></th></tr>\n"
        f"{rows}\n</table></body></html>\n")


_ROW_PX = 160


def _fit(jpeg: bytes) -> np.ndarray:
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR) if jpeg else None
    if image is None:  # an image purged or missing: a grey square keeps the row readable
        return np.full((_ROW_PX, _ROW_PX, 3), 128, np.uint8)
    width = max(1, round(image.shape[1] * _ROW_PX / image.shape[0]))
    return cv2.resize(image, (width, _ROW_PX), interpolation=cv2.INTER_AREA)


def write_contact_sheet_png(report: ReviewReport, out: Path, path: Path) -> None:
    """The same rows as one PNG (crop, watchlist photo, text), for printing."""
    rows = []
    for a in report.appearances:
        pictures = [_fit((out / a.crop).read_bytes()), _fit((out / a.watchlist_photo).read_bytes())]
        text = np.full((_ROW_PX, 560, 3), 255, np.uint8)
        lines = [f"{a.name} ({a.person_id})", Path(a.file).name,
                 f"{_clock(a.first_s)} - {_clock(a.last_s)}",
                 f"frames {a.first_frame}-{a.last_frame}, best {a.best_score:.3f}"]
        for n, line in enumerate(lines):
            printable = line.encode("ascii", "replace").decode()  # cv2 draws ASCII only
            cv2.putText(text, printable[:48], (10, 30 + 34 * n), cv2.FONT_HERSHEY_SIMPLEX, 0.6,
                        (0, 0, 0), 1, cv2.LINE_AA)
        rows.append(np.hstack([*pictures, text]))
    if not rows:
        sheet = np.full((60, 560, 3), 255, np.uint8)
        cv2.putText(sheet, "no appearance of a listed person", (10, 35),
                    cv2.FONT_HERSHEY_SIMPLEX, 0.6, (0, 0, 0), 1, cv2.LINE_AA)
    else:
        width = max(r.shape[1] for r in rows)
        sheet = np.vstack([np.pad(r, ((0, 4), (0, width - r.shape[1]), (0, 0)),
                                  constant_values=255) for r in rows])
    if not cv2.imwrite(str(path), sheet):
        raise OSError(f"{path}: cannot write the contact sheet")
