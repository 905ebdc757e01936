"""The deployment report, built from the audit log alone: the figures published per deployment.

Location, start and end, watchlist size and hash, threshold, faces processed, alerts, confirmed and
false alerts, false alerts per 1,000 faces, and each camera's uptime. Every figure comes from a
record of the hash-chained log, so the report can be checked against it (its head hash is quoted).

A data directory may hold several runs (a restart after a crash appends a new
``deployment_start``). A run that ended without a ``deployment_stop`` record (killed) is reported
with the counts of its last ``checkpoint`` record (every ``pipeline.checkpoint_s``): a lower
bound, marked ``complete: false``; without a checkpoint its faces are unknown (None), not guessed.

Alerts left undelivered come from the outbox beside the log (alerts that one of their notifiers
has not delivered yet: they are sent at the next start), and per run from its stop record.

Camera uptime is the footage a camera delivered (decoded frames / the stream's frame rate) over
the run's length, capped at 100%: a camera that was down or reconnecting delivered no footage.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec
from rich.console import Group
from rich.table import Table

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from lfr.audit import AuditError, AuditRecord, Kind, VerifyResult, audit_records, verify
from lfr.notify.outbox import undelivered_in
from lfr.textsafe import safe_text


class WatchlistUse(msgspec.Struct, frozen=True):
    digest: str
    persons: int
    images: int
    threshold: float | None


class RunReport(msgspec.Struct, frozen=True):
    start: str
    end: str  # the stop record's time, or the last record of the run when it has none
    seconds: float
    complete: bool  # ended with a deployment_stop record
    name: str
    location: str
    operator: str
    watchlist_digest: str | None
    watchlist_size: int | None
    threshold: float | None
    faces: int | None  # killed runs: up to the last checkpoint; None without one
    alerts: int
    undelivered: int | None = None  # left in the outbox at its stop; None: not recorded


class CameraUptime(msgspec.Struct, frozen=True):
    name: str
    run_seconds: float  # length of the runs that reported this camera
    footage_s: float  # seconds of video delivered (decoded frames / source frame rate)
    uptime_pct: float | None  # footage over run length, capped at 100; None when unknown
    frames_decoded: int
    frames_dropped: int  # emitted but dropped before detection (overload)
    reconnects: int


class AuditStatus(msgspec.Struct, frozen=True):
    ok: bool
    records: int
    head_hash: str  # hash of the last record read: quote it to anchor the log
    reason: str = ""
    first_bad_seq: int | None = None
    first_bad_line: int | None = None


class DeploymentReport(msgspec.Struct, frozen=True):
    data_dir: str
    name: str
    location: str
    start: str | None
    end: str | None
    runs: list[RunReport]
    watchlists: list[WatchlistUse]
    thresholds: list[float]
    faces: int
    faces_complete: bool  # False when a run ended without a stop record (faces: a lower bound)
    alerts: int
    confirmed: int
    false_alerts: int
    no_action: int
    undecided: int
    false_alerts_per_1000_faces: float | None  # None without faces
    cameras: list[CameraUptime]
    privacy_settings: list[dict[str, Any]]  # every privacy_setting record (time + values)
    watchlists_destroyed: list[dict[str, Any]]
    audit: AuditStatus
    # Alerts in the outbox now that a notifier has not delivered; None without an outbox.
    undelivered: int | None = None


def camera_stop_fields(cameras: Mapping[str, Mapping[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per-camera figures for the deployment_stop record, from the run summary's camera stats."""
    out: dict[str, dict[str, Any]] = {}
    for name, stats in cameras.items():
        if "source_state" not in stats:
            continue  # not a video source (the demo's still photos)
        decoded = int(stats.get("frames_decoded") or 0)
        fps = stats.get("source_fps")
        out[name] = {
            "frames_decoded": decoded,
            "frames_emitted": int(stats.get("frames_emitted") or 0),
            "frames_dropped": int(stats.get("dropped_frames") or 0),
            "source_fps": fps,
            "footage_s": round(decoded / fps, 3) if fps else None,
            "reconnects": int(stats.get("reconnects") or 0),
            "source_state": stats.get("source_state"),
        }
    return out


def _seconds_between(start: str, end: str) -> float:
    return max(0.0, (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds())


class _Run:
    def __init__(self, rec: AuditRecord) -> None:
        self.start = rec.time
        self.end = rec.time
        self.data = rec.data
        # Every list the run decided on, in order: a running deployment may switch lists.
        self.watchlists: list[dict[str, Any]] = []
        self.stop: dict[str, Any] | None = None
        self.checkpoint: dict[str, Any] | None = None  # the latest, for a run killed before stop
        self.alerts = 0

    @property
    def watchlist(self) -> dict[str, Any] | None:
        """The list in use at the end of the run."""
        return self.watchlists[-1] if self.watchlists else None

    @property
    def counts(self) -> dict[str, Any]:
        return self.stop or self.checkpoint or {}


def _runs(records: Iterable[AuditRecord], sink: dict[str, Any]) -> list[_Run]:
    """Group records into runs; alerts, decisions and other records go into ``sink``."""
    runs: list[_Run] = []
    current: _Run | None = None
    for rec in records:
        if rec.kind == Kind.DEPLOYMENT_START:
            current = _Run(rec)
            runs.append(current)
            continue
        if current is not None and current.stop is None:
            current.end = rec.time
        if rec.kind == Kind.DEPLOYMENT_STOP and current is not None:
            current.stop = rec.data
            current = None
        elif rec.kind == Kind.CHECKPOINT and current is not None:
            current.checkpoint = rec.data
        elif rec.kind == Kind.WATCHLIST_LOADED and current is not None:
            current.watchlists.append(rec.data)
        elif rec.kind == Kind.ALERT:
            sink["alerts"].add(str(rec.data.get("id")))
            if current is not None:
                current.alerts += 1
        elif rec.kind == Kind.ADJUDICATION:
            sink["decisions"][str(rec.data.get("alert_id"))] = rec.data.get("decision")
        elif rec.kind == Kind.PRIVACY_SETTING:
            sink["privacy"].append({"time": rec.time, **rec.data})
        elif rec.kind == Kind.WATCHLIST_DESTROYED:
            sink["destroyed"].append({"time": rec.time, **rec.data})
    return runs


def _run_report(run: _Run) -> RunReport:
    wl = run.watchlist or {}
    stop = run.counts
    threshold = wl.get("threshold")
    faces = stop.get("faces")
    seconds = stop.get("seconds")
    undelivered = (run.stop or {}).get("undelivered")
    return RunReport(
        start=run.start,
        end=run.end,
        seconds=(float(seconds) if seconds is not None and run.stop is not None
                 else _seconds_between(run.start, run.end)),
        complete=run.stop is not None,
        name=str(run.data.get("name", "")),
        location=str(run.data.get("location", "")),
        operator=str(run.data.get("operator", "")),
        watchlist_digest=wl.get("digest"),
        watchlist_size=wl.get("persons"),
        threshold=float(threshold) if threshold is not None else None,
        faces=int(faces) if faces is not None else None,
        alerts=run.alerts,
        undelivered=int(undelivered) if undelivered is not None else None,
    )


def _cameras(runs: list[_Run], reports: list[RunReport]) -> list[CameraUptime]:
    totals: dict[str, dict[str, float]] = {}
    for run, rep in zip(runs, reports, strict=True):
        cameras = run.counts.get("cameras") or {}
        for name, cam in cameras.items():
            t = totals.setdefault(
                name, {"run": 0.0, "footage": 0.0, "decoded": 0, "dropped": 0, "reconnects": 0}
            )
            t["run"] += rep.seconds
            t["footage"] += float(cam.get("footage_s") or 0.0)
            t["decoded"] += int(cam.get("frames_decoded") or 0)
            t["dropped"] += int(cam.get("frames_dropped") or 0)
            t["reconnects"] += int(cam.get("reconnects") or 0)
    return [
        CameraUptime(
            name=name,
            run_seconds=round(t["run"], 3),
            footage_s=round(t["footage"], 3),
            uptime_pct=round(min(100.0, 100.0 * t["footage"] / t["run"]), 1) if t["run"] else None,
            frames_decoded=int(t["decoded"]),
            frames_dropped=int(t["dropped"]),
            reconnects=int(t["reconnects"]),
        )
        for name, t in sorted(totals.items())
    ]


def _distinct(values: Iterable[Any]) -> list[Any]:
    seen: list[Any] = []
    for v in values:
        if v not in seen:
            seen.append(v)
    return seen


def build_report(
    records: Iterable[AuditRecord], audit: AuditStatus, data_dir: str = ""
) -> DeploymentReport:
    """The report of the records of one audit log (in file order)."""
    sink: dict[str, Any] = {"alerts": set(), "decisions": {}, "privacy": [], "destroyed": []}
    runs = _runs(records, sink)
    reports = [_run_report(r) for r in runs]
    alerts: set[str] = sink["alerts"]
    decisions = [d for a, d in sink["decisions"].items() if a in alerts]
    faces = sum(r.faces or 0 for r in reports)
    false_alerts = decisions.count("false_alert")
    watchlists = _distinct(
        WatchlistUse(
            digest=str(w.get("digest", "")),
            persons=int(w.get("persons") or 0),
            images=int(w.get("images") or 0),
            threshold=w.get("threshold"),
        )
        for r in runs
        for w in r.watchlists
    )
    return DeploymentReport(
        data_dir=data_dir,
        name=", ".join(_distinct(r.name for r in reports if r.name)),
        location=" / ".join(_distinct(r.location for r in reports if r.location)),
        start=reports[0].start if reports else None,
        end=reports[-1].end if reports else None,
        runs=reports,
        watchlists=watchlists,
        thresholds=_distinct(r.threshold for r in reports if r.threshold is not None),
        faces=faces,
        faces_complete=all(r.complete for r in reports),
        alerts=len(alerts),
        confirmed=decisions.count("confirmed"),
        false_alerts=false_alerts,
        no_action=decisions.count("no_action"),
        undecided=len(alerts) - len(decisions),
        false_alerts_per_1000_faces=round(1000.0 * false_alerts / faces, 4) if faces else None,
        cameras=_cameras(runs, reports),
        privacy_settings=sink["privacy"],
        watchlists_destroyed=sink["destroyed"],
        audit=audit,
    )


def _readable(path: Path, upto_line: int | None) -> Iterator[AuditRecord]:
    """Records before ``upto_line`` (all when None); stops quietly at an unreadable line."""
    try:
        for number, rec in enumerate(audit_records(path), 1):
            if upto_line is not None and number >= upto_line:
                return
            yield rec
    except AuditError:
        return


def report_for(data_dir: Path, public_key: Ed25519PublicKey | None = None) -> DeploymentReport:
    """Verify the data directory's audit log and report from the records that verify.

    Raises FileNotFoundError when there is no audit log. A log that fails verification still gets
    a report of the records before the first bad one, with ``audit.ok`` False: ``lfr report``
    publishes none of it (it refuses such a log); this is for diagnosis.
    """
    from lfr.audit import LOG_NAME

    log_file = data_dir / LOG_NAME
    if not log_file.is_file():
        raise FileNotFoundError(f"{data_dir}: no audit log ({LOG_NAME}) here")
    result: VerifyResult = verify(log_file, public_key)
    upto = result.first_bad_line if not result.ok else None
    records = list(_readable(log_file, upto))
    status = AuditStatus(
        ok=result.ok,
        records=len(records),
        head_hash=records[-1].hash if records else "",
        reason=result.reason,
        first_bad_seq=result.first_bad_seq,
        first_bad_line=result.first_bad_line,
    )
    report = build_report(records, status, str(data_dir))
    return msgspec.structs.replace(report, undelivered=undelivered_in(data_dir))


def _pct(value: float | None) -> str:
    return "unknown" if value is None else f"{value:.1f}%"


def render_report(report: DeploymentReport) -> Group:
    """Rich tables: the headline figures, the runs, the cameras."""
    head = Table(
        show_header=False, title=f"deployment report {report.data_dir}", title_justify="left"
    )
    head.add_column("figure")
    head.add_column("value", overflow="fold")  # hashes are quoted whole
    wl = (
        "; ".join(
            f"{w.persons} people ({w.images} images), sha256 {w.digest}" for w in report.watchlists
        )
        or "none loaded"
    )
    faces = f"{report.faces}" + (
        "" if report.faces_complete
        else " (at least: a run ended without a stop record; counted to its last checkpoint)"
    )
    per_1000 = report.false_alerts_per_1000_faces
    rows = [
        ("deployment", report.name),
        ("location", report.location),
        ("start", report.start or "-"),
        ("end", report.end or "-"),
        ("runs", str(len(report.runs))),
        ("watchlist", wl),
        ("threshold", ", ".join(f"{t:g}" for t in report.thresholds) or "-"),
        ("faces processed", faces),
        ("alerts", str(report.alerts)),
        ("confirmed", str(report.confirmed)),
        ("false alerts", str(report.false_alerts)),
        ("no action", str(report.no_action)),
        ("undecided", str(report.undecided)),
        ("undelivered alerts", "-" if report.undelivered is None else (
            f"{report.undelivered}" + (" (kept in the outbox, sent at the next start)"
                                        if report.undelivered else ""))),
        ("false alerts per 1,000 faces", "-" if per_1000 is None else f"{per_1000:g}"),
        (
            "audit log",
            ("verified" if report.audit.ok else f"FAILS: {report.audit.reason}")
            + f", {report.audit.records} records, head {report.audit.head_hash}",
        ),
    ]
    for key, value in rows:
        head.add_row(key, safe_text(value))  # names and places come from the config: not markup
    runs = Table(title="runs", title_justify="left")
    for column in ("start", "end", "seconds", "operator", "faces", "alerts", "undelivered",
                   "complete"):
        runs.add_column(column, overflow="fold")
    for r in report.runs:
        runs.add_row(
            r.start,
            r.end,
            f"{r.seconds:.0f}",
            safe_text(r.operator),
            "unknown" if r.faces is None else str(r.faces),
            str(r.alerts),
            "-" if r.undelivered is None else str(r.undelivered),
            "yes" if r.complete else "no (no stop record)",
        )
    cams = Table(title="cameras", title_justify="left")
    for column in ("camera", "uptime", "footage s", "run s", "reconnects", "dropped frames"):
        cams.add_column(column, overflow="fold")
    for c in report.cameras:
        cams.add_row(
            safe_text(c.name),
            _pct(c.uptime_pct),
            f"{c.footage_s:.0f}",
            f"{c.run_seconds:.0f}",
            str(c.reconnects),
            str(c.frames_dropped),
        )
    return Group(head, runs, cams)
