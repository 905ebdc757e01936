"""What the dashboard draws: a pure function of one `DashboardView` and the screen size.

Everything here is deterministic (no clocks, no I/O), so a fixed-size console renders the same
text every time. The layout gives every region a fixed number of lines that add up to the screen
height. With less room, pipeline rows go first (those in trouble stay), then the thumbnails
shrink and go; narrow screens stack the panels and leave out the events beside the pipeline.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import cv2
import msgspec
import numpy as np
from rich.color import Color
from rich.console import Console, ConsoleOptions, Group, RenderableType, RenderResult
from rich.layout import Layout
from rich.measure import Measurement
from rich.panel import Panel
from rich.segment import Segment
from rich.style import Style
from rich.table import Table
from rich.text import Text

from lfr.deployment import Snapshot
from lfr.messages import Alert
from lfr.runtime.actor import ActorStats
from lfr.runtime.channels import ChannelStats
from lfr.sources.base import CameraStats
from lfr.textsafe import plain, safe_text

# Keys and what they do, as the help line shows them.
HELP: tuple[tuple[str, str], ...] = (
    ("↑/↓ j/k", "select alert"),
    ("c", "confirmed"),
    ("f", "false alert"),
    ("n", "no action"),
    ("q", "quit"),
)
DECISION_LABELS = {"confirmed": "confirmed", "false_alert": "false alert", "no_action": "no action"}

WIDE = 120  # from this width: events beside the pipeline, the alert preview beside the list
PIPELINE_WIDTH = 96  # beside the events panel
ALERTS_MIN = 6  # lines: border, header and three alerts
THUMB_SIZES = (24, 16)  # pixels per side; each takes px columns and px / 2 lines


class CameraFlow(msgspec.Struct, frozen=True):
    """Per camera, measured where decisions are made (the matcher's statistics)."""

    faces_per_s: float
    latency_p50_ms: float | None  # capture to decision
    latency_p95_ms: float | None


class LogLine(msgspec.Struct, frozen=True):
    time: str  # ISO 8601 UTC, like supervisor events
    level: str
    message: str


class DashboardView(msgspec.Struct, frozen=True, kw_only=True):
    """One frame of the dashboard: statistics snapshots plus the operator's own state."""

    snapshot: Snapshot
    alerts: tuple[Alert, ...] = ()  # newest first
    decisions: dict[str, str] = msgspec.field(default_factory=dict)  # alert id -> decision
    # A node's alerts that joined another's open alert as a further sighting of the same person
    # (lfr.cluster.sightings): alert id -> the alert it joined. Shown as sightings, not decided.
    sightings: dict[str, str] = msgspec.field(default_factory=dict)
    selected: str | None = None  # alert id
    flows: dict[str, CameraFlow] = msgspec.field(default_factory=dict)  # camera -> flow
    log: tuple[LogLine, ...] = ()  # oldest first
    operator: str = ""
    status: str = ""  # the outcome of the last key, e.g. "confirmed: ... by alice"
    stopping: bool = False


# -- rows: what each panel shows, as plain values ---------------------------------------------


class CameraRow(msgspec.Struct, frozen=True):
    name: str
    state: str  # connecting, live, reconnecting, ended, failed, restarting
    reason: str  # why it is not live (last error), else ""
    fps_in: float | None
    fps_processed: float | None
    dropped: int | None
    faces_per_s: float | None
    latency_p50_ms: float | None
    latency_p95_ms: float | None


class StageRow(msgspec.Struct, frozen=True):
    name: str  # actor (or, for a queue nobody consumes, "")
    state: str
    restarts: int
    rate_per_s: float | None
    queue: ChannelStats | None  # the queue this actor reads


def camera_rows(view: DashboardView) -> list[CameraRow]:
    snap = view.snapshot
    channels = {c.name: c for c in snap.channels}
    reader = {a.reads: a for a in snap.actors if a.reads}
    rows = []
    for stats in snap.actors:
        if stats.kind != "camera":
            continue
        # The camera's frame channel, and whoever reads it (its detector).
        frames = channels.get(stats.writes[0]) if stats.writes else None
        detector = reader.get(frames.name) if frames else None
        flow = view.flows.get(stats.name)
        state, reason = _camera_state(stats)
        p50, p95 = (
            (flow.latency_p50_ms, flow.latency_p95_ms)
            if flow is not None
            # Without the matcher's view, capture to detection is the closest measure.
            else (detector.latency_p50_ms, detector.latency_p95_ms)
            if detector is not None
            else (None, None)
        )
        rows.append(
            CameraRow(
                name=stats.name,
                state=state,
                reason=reason,
                fps_in=stats.fps_in if isinstance(stats, CameraStats) else None,
                fps_processed=detector.rate_per_s if detector is not None else None,
                dropped=frames.dropped if frames is not None else None,
                faces_per_s=flow.faces_per_s if flow is not None else None,
                latency_p50_ms=p50,
                latency_p95_ms=p95,
            )
        )
    return rows


def _camera_state(stats: ActorStats) -> tuple[str, str]:
    # The actor's own trouble (crashed, restarting, given up) outranks the stream's state.
    if stats.state in ("failed", "restarting"):
        return stats.state, stats.last_error
    if isinstance(stats, CameraStats):
        state = stats.source_state
        return state, short_reason(stats) if state in ("reconnecting", "failed") else ""
    return ("ended" if stats.state == "stopped" else "live"), ""


def short_reason(stats: CameraStats) -> str:
    """The last error without the camera's name and URL, which its row already shows:
    "door: cannot open 'rtsp://...': Connection refused" -> "cannot open: Connection refused"."""
    reason = stats.last_error.removeprefix(f"{stats.name}: ")
    url = repr(stats.url)
    return reason.removeprefix(f"{url}: ").replace(f" {url}:", ":")


def stage_rows(snapshot: Snapshot) -> list[StageRow]:
    channels = {c.name: c for c in snapshot.channels}
    rows, used = [], set()
    for a in snapshot.actors:
        queue = channels.get(a.reads or "")
        if queue is not None:
            used.add(queue.name)
        rows.append(StageRow(a.name, a.state, a.restarts, a.rate_per_s, queue))
    rows += [StageRow("", "", 0, None, c) for c in snapshot.channels if c.name not in used]
    return rows


def _stage_trouble(row: StageRow) -> int:
    """Higher first when rows must be left out: failed, restarting, restarted, full queues."""
    queue_full = row.queue is not None and row.queue.depth >= row.queue.capacity
    return 3 * (row.state in ("failed", "restarting")) + 2 * (row.restarts > 0) + int(queue_full)


# -- small formatting helpers -------------------------------------------------------------------


def hms(seconds: float) -> str:
    s = max(int(seconds), 0)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}"


def _num(value: float | None, fmt: str = "{:.1f}") -> str:
    return "–" if value is None else fmt.format(value)


def _latency(p50: float | None, p95: float | None) -> str:
    if p50 is None or p95 is None:
        return "–"
    return f"{p50:.0f}/{p95:.0f}"


def _clock(alert: Alert) -> str:
    """HH:MM:SS of the alert's UTC time, as the audit log records it."""
    return alert.time[11:19]


STATE_STYLES = {
    "live": "bold green",
    "running": "green",
    "connecting": "yellow",
    "reconnecting": "bold yellow",
    "restarting": "bold yellow",
    "starting": "yellow",
    "failed": "bold red",
    "ended": "dim",
    "stopped": "dim",
}
DECISION_STYLES = {
    "pending": "bold yellow",
    "confirmed": "bold red",
    "false_alert": "green",
    "no_action": "dim",
    "sighting": "cyan",
}


def pack(items: Sequence[Text], width: int, sep: str = "   ") -> list[Text]:
    """Items on as few lines as fit in width (an item longer than a line is cropped)."""
    lines: list[Text] = []
    line = Text()
    for item in items:
        if line.cell_len and line.cell_len + len(sep) + item.cell_len > width:
            lines.append(line)
            line = Text()
        if line.cell_len:
            line.append(sep)
        line.append_text(item)
    if line.cell_len or not lines:
        lines.append(line)
    for text in lines:
        text.truncate(width, overflow="ellipsis")
    return lines


def _pair(label: str, value: str, value_style: str = "bold") -> Text:
    return Text.assemble((label + " ", "dim"), (value, value_style))


def _decision_of(view: DashboardView, alert: Alert) -> tuple[str, str]:
    """(style key, label) of an alert's decision cell: its decision, pending, or, for a
    sighting, the alert it joined (decided there)."""
    into = view.sightings.get(alert.id)
    if into is not None:
        return "sighting", f"sighting of {into[:8]}"
    decision = view.decisions.get(alert.id, "pending")
    return decision, DECISION_LABELS.get(decision, decision)


def counter_items(view: DashboardView) -> list[Text]:
    snap, c = view.snapshot, view.snapshot.counters
    # A sighting waits for no decision here: the alert it joined is decided.
    sightings = sum(1 for a in view.sightings if a not in view.decisions)
    pending = max(0, c.pending - sightings)
    return [
        _pair("faces", f"{c.faces:,}"),
        _pair("alerts", f"{c.alerts - sightings:,}"),
        *([_pair("sightings", f"{sightings:,}", "bold cyan")] if sightings else []),
        _pair("confirmed", f"{c.confirmed:,}", "bold red"),
        _pair("false alerts", f"{c.false_alerts:,}"),
        _pair("no action", f"{c.no_action:,}"),
        _pair("pending", f"{pending:,}", "bold yellow" if pending else "bold"),
        _pair("false alerts per 1,000 faces", f"{c.false_alerts_per_1000_faces:.2f}"),
        _pair("watchlist", f"{snap.watchlist_size:,}" + (
            f" (v{snap.watchlist_version})" if snap.watchlist_version is not None else "")),
        _pair("threshold", f"{snap.threshold:.3f}"),
    ]


def help_items(view: DashboardView) -> list[Text]:
    items = [Text.assemble((key, "bold cyan"), " ", what) for key, what in HELP]
    if view.status:
        items.append(safe_text(view.status, style="italic"))
    return items


# -- half-block thumbnails --------------------------------------------------------------------


@functools.lru_cache(maxsize=256)
def thumbnail_lines(jpeg: bytes, px: int) -> tuple[tuple[Segment, ...], ...] | None:
    """A JPEG as px / 2 lines of px '▀' cells (top pixel in the foreground, bottom in the
    background); None if it cannot be decoded. Cached: alerts are drawn every refresh."""
    if not jpeg:
        return None
    image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
    if image is None or image.size == 0:
        return None
    h, w = image.shape[:2]
    side = min(h, w)  # the middle square: crops are centred on the face
    top, left = (h - side) // 2, (w - side) // 2
    square = image[top : top + side, left : left + side]
    small = cv2.resize(square, (px, px), interpolation=cv2.INTER_AREA)
    rgb = small[:, :, ::-1].tolist()
    lines = []
    for y in range(0, px - px % 2, 2):
        lines.append(
            tuple(
                Segment(
                    "▀",
                    Style(color=Color.from_rgb(*rgb[y][x]), bgcolor=Color.from_rgb(*rgb[y + 1][x])),
                )
                for x in range(px)
            )
        )
    return tuple(lines)


class Thumbnail:
    """A renderable picture px cells wide and px / 2 lines tall, or a blank box if unreadable."""

    def __init__(self, jpeg: bytes, px: int) -> None:
        self.jpeg, self.px = jpeg, px

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        lines = thumbnail_lines(self.jpeg, self.px)
        if lines is None:
            blank = Text("no image".center(self.px), style="dim")
            for row in range(self.px // 2):
                yield blank if row == self.px // 4 else Text(" " * self.px)
            return
        for line in lines:
            yield from line
            yield Segment.line()

    def __rich_measure__(self, console: Console, options: ConsoleOptions) -> Measurement:
        return Measurement(self.px, self.px)


# -- panels ---------------------------------------------------------------------------------


def _panel(body: RenderableType, title: str, border: str = "blue") -> Panel:
    return Panel(body, title=title, title_align="left", border_style=border, padding=(0, 1))


def _table(compact: bool) -> Table:
    return Table(
        box=None,
        pad_edge=False,
        padding=(0, 1 if compact else 2),
        expand=True,
        header_style="bold",
        show_edge=False,
    )


def cameras_panel(view: DashboardView, width: int, lines: int) -> Panel:
    compact = width < WIDE
    table = _table(compact)
    table.add_column("camera", no_wrap=True, overflow="ellipsis", max_width=20)
    table.add_column("state", no_wrap=True)
    table.add_column("in" if compact else "in fps", justify="right", no_wrap=True)
    table.add_column("proc" if compact else "proc fps", justify="right", no_wrap=True)
    table.add_column("drop" if compact else "dropped", justify="right", no_wrap=True)
    table.add_column("faces/s", justify="right", no_wrap=True)
    table.add_column(
        "p50/p95 ms" if compact else "latency p50/p95 ms", justify="right", no_wrap=True
    )
    table.add_column("reason", no_wrap=True, overflow="ellipsis", ratio=1, style="yellow")
    rows = camera_rows(view)
    room = max(lines - 3, 0)
    shown = rows if len(rows) <= room else rows[: max(room - 1, 0)]
    for row in shown:
        table.add_row(
            safe_text(row.name),
            Text(row.state, style=STATE_STYLES.get(row.state, "")),
            _num(row.fps_in),
            _num(row.fps_processed),
            _num(row.dropped, "{:,}"),
            _num(row.faces_per_s),
            _latency(row.latency_p50_ms, row.latency_p95_ms),
            safe_text(row.reason),
        )
    if len(shown) < len(rows):
        table.add_row(Text(f"… {len(rows) - len(shown)} more", style="dim"))
    body: RenderableType = table if rows else Text("no cameras", style="dim")
    return _panel(body, f"Cameras ({len(rows)})")


def _queue_bar(queue: ChannelStats, cells: int) -> Text:
    # Rounded up: one queued item already shows.
    filled = math.ceil(cells * min(queue.depth / queue.capacity, 1.0)) if queue.capacity else 0
    ratio = queue.depth / queue.capacity if queue.capacity else 0.0
    style = "red" if ratio >= 0.9 else "yellow" if ratio >= 0.5 else "green"
    return Text.assemble(
        ("█" * filled, style), ("░" * (cells - filled), "dim"), f" {queue.depth}/{queue.capacity}"
    )


def pipeline_panel(view: DashboardView, width: int, lines: int) -> Panel:
    compact = width < 90
    rows = stage_rows(view.snapshot)
    room = max(lines - 3, 0)
    if len(rows) > room:  # keep the rows in trouble, in pipeline order
        keep = sorted(range(len(rows)), key=lambda i: -_stage_trouble(rows[i]))[: max(room - 1, 0)]
        shown = [rows[i] for i in sorted(keep)]
    else:
        shown = rows
    table = _table(True)
    table.add_column("actor", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("state", no_wrap=True)
    table.add_column("restarts", justify="right", no_wrap=True)
    table.add_column("items/s", justify="right", no_wrap=True)
    if not compact:
        table.add_column("input queue", no_wrap=True, overflow="ellipsis")
    table.add_column("depth/capacity", no_wrap=True)
    table.add_column("dropped", justify="right", no_wrap=True)
    for row in shown:
        cells: list[RenderableType] = [
            safe_text(row.name) if row.name else Text("(no reader)", style="dim"),
            Text(row.state, style=STATE_STYLES.get(row.state, "")),
            Text(str(row.restarts), style="bold yellow" if row.restarts else ""),
            _num(row.rate_per_s),
        ]
        if not compact:
            cells.append(safe_text(row.queue.name) if row.queue else "")
        cells += [
            _queue_bar(row.queue, 6 if compact else 10) if row.queue else Text(""),
            _num(row.queue.dropped, "{:,}") if row.queue else "",
        ]
        table.add_row(*cells)
    if len(shown) < len(rows):
        table.add_row(Text(f"… {len(rows) - len(shown)} more", style="dim"))
    return _panel(table, "Pipeline")


def event_lines(view: DashboardView) -> list[Text]:
    """Supervisor events and log lines, newest first."""
    merged: list[tuple[str, Text]] = []
    for e in view.snapshot.events:
        style = {"crashed": "red", "stuck": "red", "failed": "bold red",
                 "restarted": "yellow"}.get(e.event, "dim")
        merged.append(
            (
                e.time,
                Text.assemble(
                    (e.time[11:19] + " ", "dim"),
                    (plain(e.actor) + " ", "bold"),
                    (e.event, style),
                    (f": {plain(e.error, newlines=True)}" if e.error else "", style),
                ),
            )
        )
    for line in view.log:
        style = {"warning": "yellow", "error": "red", "critical": "bold red"}.get(line.level, "")
        merged.append(
            (line.time, Text.assemble((line.time[11:19] + " ", "dim"),
                                      (plain(line.message, newlines=True), style)))
        )
    merged.sort(key=lambda item: item[0], reverse=True)
    return [text for _, text in merged]


def events_panel(view: DashboardView, lines: int) -> Panel:
    # Long errors wrap; the oldest lines fall off the bottom of the panel.
    events = event_lines(view)[: max(lines - 2, 0)]
    body: RenderableType = Group(*events) if events else Text("no events", style="dim")
    return _panel(body, "Events")


def _selected_index(view: DashboardView) -> int | None:
    for i, alert in enumerate(view.alerts):
        if alert.id == view.selected:
            return i
    return None


def alerts_table(view: DashboardView, width: int, rows: int) -> RenderableType:
    """Up to `rows` alerts (below the header), scrolled to keep the selection in view."""
    if not view.alerts:
        return Text("no alerts yet", style="dim")
    compact = width < 70
    table = _table(True)
    table.add_column("", no_wrap=True, width=1)
    table.add_column("time", no_wrap=True)
    table.add_column("camera", no_wrap=True, overflow="ellipsis", max_width=16)
    table.add_column("person", no_wrap=True, overflow="ellipsis", ratio=1)
    table.add_column("score", justify="right", no_wrap=True)
    table.add_column("decision", no_wrap=True)
    room = max(rows, 1)
    selected = _selected_index(view)
    start = 0 if selected is None else max(0, selected - room + 1)  # keep the selection in view
    for i, alert in enumerate(view.alerts[start : start + room], start):
        decision, label = _decision_of(view, alert)
        person = alert.name or alert.person_id
        if not compact and alert.name and alert.name != alert.person_id:
            person = f"{alert.name} ({alert.person_id})"
        table.add_row(
            "▶" if i == selected else "",
            _clock(alert),
            safe_text(alert.camera),
            safe_text(person),
            f"{alert.score:.3f}",
            Text(label, style=DECISION_STYLES.get(decision, "")),
            style="reverse" if i == selected else "",
        )
    return table


def preview(alert: Alert, decision: str, px: int | None, label: str | None = None
            ) -> RenderableType:
    """The selected alert: the camera crop beside the watchlist picture, then its details;
    ``label``: what its decision cell says (default: the decision's label)."""
    parts: list[RenderableType] = []
    if px:
        grid = Table.grid(padding=(0, 2))
        grid.add_column(width=px)
        grid.add_column(width=px)
        grid.add_row(Text("camera", style="dim"), Text("watchlist", style="dim"))
        grid.add_row(Thumbnail(alert.crop_jpeg, px), Thumbnail(alert.watchlist_jpeg, px))
        parts.append(grid)
    parts.append(
        Text.assemble(
            (plain(alert.name or alert.person_id), "bold"),
            f"  {plain(alert.person_id)}",
            (f"  {plain(alert.category)}" if alert.category else "", "dim"),
            no_wrap=True,
            overflow="ellipsis",
        )
    )
    parts.append(
        Text.assemble(
            ("score ", "dim"),
            (f"{alert.score:.3f}", "bold"),
            (f" ≥ {alert.threshold:.3f}  ", "dim"),
            plain(alert.camera),
            f" {_clock(alert)}  ",
            (plain(label) if label is not None else DECISION_LABELS.get(decision, decision),
             DECISION_STYLES.get(decision, "")),
            no_wrap=True,
            overflow="ellipsis",
        )
    )
    return Group(*parts)


def preview_lines(px: int | None) -> int:
    """Lines a preview panel takes: border, captions, picture, two lines of details."""
    return 2 + 2 + (1 + px // 2 if px else 0)


def preview_width(px: int) -> int:
    return 2 * px + 2 + 4  # two pictures, the gap, border and padding


# -- the screen ---------------------------------------------------------------------------


class _Fixed:
    """Renders its content at exactly this size, whatever the console's own size."""

    def __init__(self, content: RenderableType, width: int, height: int) -> None:
        self.content, self.width, self.height = content, width, height

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        width = min(self.width, options.max_width)
        lines = console.render_lines(
            self.content, options.update_dimensions(width, self.height), pad=True
        )
        for line in lines[: self.height]:
            yield from line
            yield Segment.line()


def _header(view: DashboardView) -> Table:
    snap = view.snapshot
    grid = Table.grid(expand=True)
    grid.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    grid.add_column(no_wrap=True, justify="right")
    left = Text.assemble(("LFR ", "bold white on blue"), " ", (plain(snap.name), "bold"))
    if snap.location:
        left.append(f"  {plain(snap.location)}", style="dim")
    right = Text.assemble(
        ("operator ", "dim"),
        (plain(view.operator or snap.operator), "bold"),
        ("   running ", "dim"),
        (hms(snap.running_s), "bold"),
    )
    if view.stopping:
        right = Text.assemble(
            (" STOPPING: draining the pipeline ", "bold white on red"), "  ", right
        )
    grid.add_row(left, right)
    return grid


def render(view: DashboardView, width: int, height: int) -> RenderableType:
    """The whole screen for `view`: exactly `height` lines of `width` cells."""
    width, height = max(width, 20), max(height, 3)
    counters = pack(counter_items(view), width)
    footer = pack(help_items(view), width)
    top_h = 1 + len(counters)
    body = height - top_h - len(footer)
    root = Layout()
    if body < 3:  # too small for panels: counters and keys only
        root.split_column(Layout(_header(view), size=1), Layout(Group(*counters, *footer)))
        return _Fixed(root, width, height)

    n_cams = sum(1 for a in view.snapshot.actors if a.kind == "camera")
    cams_h = min(max(n_cams, 1) + 3, max(4, body // 3))
    remaining = body - cams_h
    stages = stage_rows(view.snapshot)
    wide = width >= WIDE
    # Room the alerts want before the pipeline gets more: the preview beside them, or a few rows.
    want_alerts = ALERTS_MIN
    if view.alerts:
        want_alerts = preview_lines(THUMB_SIZES[0]) if wide else min(10, len(view.alerts) + 3)
    pipe_h = min(len(stages) + 3, max(remaining - want_alerts, body // 3), remaining - ALERTS_MIN)
    if pipe_h < 4:
        pipe_h = 0
    alerts_h = remaining - pipe_h

    sections = [
        Layout(_header(view), size=1),
        Layout(Group(*counters), size=len(counters)),
        Layout(cameras_panel(view, width, cams_h), size=cams_h),
    ]
    if pipe_h:
        pipeline = Layout(size=pipe_h)
        if wide:
            pipe_w = min(PIPELINE_WIDTH, width * 3 // 5)  # the table needs no more
            pipeline.split_row(
                Layout(pipeline_panel(view, pipe_w, pipe_h), size=pipe_w),
                Layout(events_panel(view, pipe_h)),
            )
        else:
            pipeline.update(pipeline_panel(view, width, pipe_h))
        sections.append(pipeline)
    sections.append(_alerts_section(view, width, alerts_h))
    sections.append(Layout(Group(*footer), size=len(footer)))
    root.split_column(*sections)
    return _Fixed(root, width, height)


def _alerts_section(view: DashboardView, width: int, lines: int) -> Layout:
    title = f"Alerts ({len(view.alerts)}, newest first)"
    selected = _selected_index(view)
    alert = view.alerts[selected] if selected is not None else None
    section = Layout(size=lines)
    if alert is None:
        section.update(_panel(alerts_table(view, width, lines - 3), title, "red"))
        return section
    decision, label = _decision_of(view, alert)
    side = width >= WIDE
    # Beside the list the preview may use the full height; below it, the list keeps ALERTS_MIN.
    room = lines if side else lines - ALERTS_MIN
    px = next(
        (
            p
            for p in THUMB_SIZES
            if preview_lines(p) <= room and preview_width(p) <= (width - 60 if side else width)
        ),
        None,
    )
    prev_h = preview_lines(px)
    if not side and prev_h > room:
        section.update(_panel(alerts_table(view, width, lines - 3), title, "red"))
        return section
    what = "sighting" if alert.id in view.sightings else "alert"
    prev = _panel(preview(alert, decision, px, label), f"Selected {what} {alert.id[:8]}", "red")
    if side:
        prev_w = preview_width(px) if px else 50
        list_panel = _panel(alerts_table(view, width - prev_w, lines - 3), title, "red")
        section.split_row(Layout(list_panel), Layout(Group(prev), size=prev_w))
    else:
        list_h = lines - prev_h
        section.split_column(
            Layout(_panel(alerts_table(view, width, list_h - 3), title, "red"), size=list_h),
            Layout(prev, size=prev_h),
        )
    return section
