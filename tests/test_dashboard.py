"""The operator's dashboard: rendering from synthetic snapshots on fixed-size consoles (text
compared), keys, the terminal plumbing, and real deployments driven by injected keys."""

from __future__ import annotations

import io
import logging
import os
import termios
from collections import deque
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, cast

import anyio
import av
import cv2
import msgspec
import numpy as np
import pytest
from aiohttp import web
from paths import CLIP, PEOPLE
from rich.console import Console

from lfr.audit import audit_records
from lfr.config import parse_config
from lfr.dashboard import CameraFlow, DashboardService, DashboardView, flows, render
from lfr.dashboard.render import thumbnail_lines
from lfr.dashboard.terminal import LogCapture, cbreak, parse_keys, terminal_keys
from lfr.deployment import Counters, Deployment, DeploymentView, Snapshot
from lfr.messages import Adjudication, Alert, Decision
from lfr.notify.base import NotifierStats
from lfr.notify.console import ConsoleNotifier, terminal_owned
from lfr.pipeline.detector import DetectorStats
from lfr.pipeline.matcher import CameraDecisions, LatencyMs, MatcherStats
from lfr.plugins import load_plugins
from lfr.runtime.actor import ActorStats
from lfr.runtime.channels import ChannelStats
from lfr.runtime.supervisor import SupervisorEvent
from lfr.sources.base import CameraStats
from lfr.users import Principal
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

REFUSED = "door: cannot open 'http://10.0.0.7/door': Connection refused"

# -- synthetic snapshots -----------------------------------------------------------------------

OPERATOR = Principal("olive", "operator")  # who the dashboard authenticated at start


def base(name: str, kind: str, **kw: Any) -> dict[str, Any]:
    fields: dict[str, Any] = {
        "name": name,
        "kind": kind,
        "state": "running",
        "restarts": 0,
        "processed": 100,
        "errors": 0,
        "last_error": "",
        "rate_per_s": 5.0,
        "latency_p50_ms": 40.0,
        "latency_p95_ms": 90.0,
    }
    return fields | kw


def camera(name: str, source_state: str, fps_in: float, **kw: object) -> CameraStats:
    return CameraStats(
        **base(name, "camera", writes=(f"frames:{name}",), **kw),
        url=f"http://10.0.0.7/{name}",
        source_state=source_state,
        fps_in=fps_in,
        fps_out=fps_in,
        frames_decoded=10,
        frames_skipped=0,
        frames_emitted=10,
        reconnects=0,
        width=640,
        height=360,
        source_fps=25.0,
    )


def detector(camera_name: str, rate: float, **kw: object) -> DetectorStats:
    return DetectorStats(
        **base(f"detect:{camera_name}", "detector", rate_per_s=rate,
               reads=f"frames:{camera_name}", writes=("faces",), **kw),
        frames=100,
        faces=50,
        embedded=20,
        rejected=3,
    )


def channel(name: str, capacity: int, depth: int = 0, dropped: int = 0) -> ChannelStats:
    return ChannelStats(
        name,
        "drop_oldest" if name.startswith("frames:") else "block",
        capacity,
        depth,
        depth,
        100,
        100 - dropped,
        dropped,
    )


def snapshot(
    *,
    counters: Counters | None = None,
    actors: tuple[ActorStats, ...] | None = None,
    channels: tuple[ChannelStats, ...] | None = None,
    events: tuple[SupervisorEvent, ...] = (),
) -> Snapshot:
    if actors is None:
        actors = (
            camera("door", "reconnecting", 0.0, last_error=REFUSED),
            detector("door", 0.0),
            camera("hall", "live", 25.0),
            detector("hall", 4.5),
            MatcherStats(
                **base("matcher", "matcher", reads="faces", writes=("alerts:jsonl",)),
                frames=200,
                faces=80,
                matches=3,
                alerts=3,
                alerts_by_person={"obama": 3},
                latency_ms=LatencyMs(120.0, 480.0, 900.0),
                cameras={},
            ),
            NotifierStats(
                **base("notify:jsonl", "notifier", reads="alerts:jsonl"),
                delivered=3,
                failed=0,
                pending=0,
            ),
        )
    if channels is None:
        channels = (
            channel("faces", 64, depth=1),
            channel("frames:door", 2),
            channel("frames:hall", 2, depth=2, dropped=17),
            channel("alerts:jsonl", 256),
        )
    return Snapshot(
        name="vanguard",
        location="Station Rd",
        running_s=3725.0,
        actors=actors,
        channels=channels,
        events=events,
        watchlist_size=6,
        threshold=0.5,
        counters=counters
        or Counters(faces=2000, alerts=5, confirmed=1, false_alerts=3, no_action=0, pending=1),
        operator="alice",
    )


def jpeg(top: tuple[int, int, int], bottom: tuple[int, int, int], size: int = 96) -> bytes:
    """A BGR picture, one colour on its top half and another below."""
    image = np.zeros((size, size, 3), np.uint8)
    image[: size // 2] = top
    image[size // 2 :] = bottom
    ok, data = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])
    assert ok
    return data.tobytes()


RED, BLUE = (0, 0, 255), (255, 0, 0)  # BGR


def alert(
    n: int,
    person: str = "obama",
    name: str = "Barack Obama",
    camera_name: str = "hall",
    score: float = 0.61,
) -> Alert:
    clock = f"10:{n // 60:02d}:{n % 60:02d}"
    return Alert(
        id=f"{n:032x}",
        camera=camera_name,
        time=f"2025-05-01T{clock}.000+00:00",
        wall_time=1746093600.0 + n,
        person_id=person,
        name=name,
        score=score,
        threshold=0.5,
        box=(1, 2, 3, 4),
        frame_index=n,
        latency_s=0.2,
        crop_jpeg=jpeg(RED, BLUE),
        watchlist_jpeg=jpeg(BLUE, RED),
        category="wanted",
    )


def view(**kw: Any) -> DashboardView:
    fields: dict[str, Any] = {"snapshot": snapshot(), "operator": "alice"}
    return DashboardView(**(fields | kw))


def screen(v: DashboardView, width: int, height: int) -> list[str]:
    out = io.StringIO()
    Console(file=out, width=width, height=height, color_system=None).print(render(v, width, height))
    return out.getvalue().splitlines()


def line_with(lines: list[str], needle: str) -> str:
    found = [line for line in lines if needle in line]
    assert found, f"{needle!r} not on screen:\n" + "\n".join(lines)
    return found[0]


# -- rendering ----------------------------------------------------------------------------------


def test_dead_camera_shows_reconnecting_with_its_reason_while_the_other_is_live() -> None:
    lines = screen(view(), 160, 50)
    door = line_with(lines, "│ door")
    assert "reconnecting" in door
    assert "cannot open: Connection refused" in door  # name and URL are the row's already
    hall = line_with(lines, "│ hall")
    assert "live" in hall and "reconnecting" not in hall and "refused" not in hall
    # Narrow: the state stays, the reason is cut short.
    narrow = screen(view(), 80, 24)
    assert "reconnecting" in line_with(narrow, "│ door")


def test_camera_row_numbers_come_from_camera_detector_channel_and_flow() -> None:
    flows = {"hall": CameraFlow(faces_per_s=3.25, latency_p50_ms=120.4, latency_p95_ms=480.0)}
    hall = line_with(screen(view(flows=flows), 160, 50), "│ hall").split()
    # camera, state, in fps, proc fps (the detector's rate), dropped (frames:hall), faces/s, latency
    assert hall[1:8] == ["hall", "live", "25.0", "4.5", "17", "3.2", "120/480"]
    # Without the matcher's flow: no faces/s, and capture-to-detection latency stands in.
    hall = line_with(screen(view(), 160, 50), "│ hall").split()
    assert hall[6:8] == ["–", "40/90"]


def test_counters_and_header() -> None:
    lines = screen(view(), 160, 50)
    text = "\n".join(lines)
    assert "false alerts per 1,000 faces 1.50" in text  # 3 false alerts in 2,000 faces
    for item in (
        "faces 2,000",
        "alerts 5",
        "confirmed 1",
        "false alerts 3",
        "no action 0",
        "pending 1",
        "watchlist 6",
        "threshold 0.500",
    ):
        assert item in text
    assert "vanguard" in lines[0] and "operator alice" in lines[0]
    assert "running 1:02:05" in lines[0]
    counters = Counters(faces=0, alerts=0, confirmed=0, false_alerts=0, no_action=0, pending=0)
    empty = "\n".join(screen(view(snapshot=snapshot(counters=counters)), 160, 50))
    assert "false alerts per 1,000 faces 0.00" in empty
    assert "no alerts yet" in empty


def test_alert_rows_newest_first_with_time_camera_person_score_decision() -> None:
    alerts = (alert(3, score=0.734), alert(2, "lin", "Lin-Manuel Miranda", "door", 0.55), alert(1))
    lines = screen(
        view(alerts=alerts, selected=alerts[1].id, decisions={alerts[2].id: "false_alert"}), 160, 50
    )
    rows = [line for line in lines if "10:00:0" in line and "│" in line]
    assert [r.split()[1:3] for r in rows[:3]] == [
        ["10:00:03", "hall"],
        ["▶", "10:00:02"],
        ["10:00:01", "hall"],
    ]
    assert "Barack Obama (obama)" in rows[0] and "0.734" in rows[0] and "pending" in rows[0]
    assert "Lin-Manuel Miranda (lin)" in rows[1] and "door" in rows[1] and "0.550" in rows[1]
    assert "false alert" in rows[2]
    text = "\n".join(lines)
    assert "Alerts (3, newest first)" in text
    assert f"Selected alert {alerts[1].id[:8]}" in text


def test_selected_alert_shows_crop_beside_watchlist_thumbnail_in_half_blocks() -> None:
    alerts = (alert(1),)
    lines = screen(view(alerts=alerts, selected=alerts[0].id), 160, 50)
    pictures = [line for line in lines if "▀" in line]
    assert len(pictures) == 12  # 24 px tall -> 12 lines
    for line in pictures:
        runs = [run for run in line.split() if "▀" in run]
        assert runs == ["▀" * 24, "▀" * 24]  # camera crop, then the watchlist picture
    first = lines.index(pictures[0])
    assert "camera" in lines[first - 1] and "watchlist" in lines[first - 1]
    assert "Barack Obama" in lines[first + 12] and "wanted" in lines[first + 12]


def test_half_block_cells_carry_top_pixel_as_foreground_and_bottom_as_background() -> None:
    lines = thumbnail_lines(jpeg(RED, BLUE), 24)
    assert lines is not None and len(lines) == 12
    assert all(len(line) == 24 and all(s.text == "▀" for s in line) for line in lines)

    def rgb(line: int, x: int, which: str) -> tuple[int, int, int]:
        style = lines[line][x].style
        assert style is not None
        color = style.color if which == "fg" else style.bgcolor
        assert color is not None
        t = color.get_truecolor()
        return t.red, t.green, t.blue

    def near(a: tuple[int, int, int], b: tuple[int, int, int]) -> bool:
        return all(abs(x - y) < 40 for x, y in zip(a, b, strict=True))

    assert near(rgb(0, 5, "fg"), (255, 0, 0)) and near(rgb(0, 5, "bg"), (255, 0, 0))  # red
    assert near(rgb(11, 5, "fg"), (0, 0, 255)) and near(rgb(11, 5, "bg"), (0, 0, 255))  # blue
    assert thumbnail_lines(b"not a jpeg", 24) is None
    assert thumbnail_lines(b"", 24) is None


def test_unreadable_picture_draws_a_placeholder() -> None:
    broken = msgspec.structs.replace(alert(1), crop_jpeg=b"broken")
    lines = screen(view(alerts=(broken,), selected=broken.id), 160, 50)
    assert "no image" in "\n".join(lines)
    assert sum("▀" * 24 in line for line in lines) == 12  # the watchlist picture still shows


@pytest.mark.parametrize("size", [(80, 24), (100, 30), (120, 40), (160, 50), (220, 70), (60, 12)])
def test_every_size_fills_the_screen_exactly(size: tuple[int, int]) -> None:
    width, height = size
    alerts = tuple(alert(n) for n in range(40, 0, -1))
    lines = screen(view(alerts=alerts, selected=alerts[0].id), width, height)
    assert len(lines) == height
    assert all(len(line) <= width for line in lines)
    text = "\n".join(lines)
    assert "c confirmed" in text and "q quit" in text  # the keys are always shown
    assert "confirmed 1" in text


def test_80x24_keeps_cameras_alerts_and_keys_and_drops_thumbnails() -> None:
    alerts = tuple(alert(n) for n in range(5, 0, -1))
    lines = screen(view(alerts=alerts, selected=alerts[0].id), 80, 24)
    text = "\n".join(lines)
    assert len(lines) == 24
    assert "▀" not in text  # no room for pictures
    assert "reconnecting" in line_with(lines, "│ door")
    assert "▶" in line_with(lines, "10:00:05")
    assert "false alerts per 1,000 faces 1.50" in text


def test_selection_far_down_the_list_is_scrolled_into_view() -> None:
    alerts = tuple(alert(n) for n in range(40, 0, -1))
    lines = screen(view(alerts=alerts, selected=alerts[35].id), 80, 24)  # the 5th oldest
    assert "▶" in line_with(lines, "10:00:05")
    assert not any("10:00:40" in line for line in lines)  # the newest scrolled off


def test_pipeline_shows_depth_against_capacity_restarts_and_supervisor_events() -> None:
    crash = SupervisorEvent(
        "2025-05-01T10:00:09.000+00:00",
        "detect:hall",
        "crashed",
        "RuntimeError: simulated inference failure",
    )
    actors = (
        camera("hall", "live", 25.0),
        detector("hall", 0.0, state="restarting", restarts=2),
        MatcherStats(
            **base("matcher", "matcher", reads="faces"),
            frames=1,
            faces=1,
            matches=0,
            alerts=0,
            alerts_by_person={},
            latency_ms=LatencyMs(None, None, None),
            cameras={},
        ),
    )
    channels = (channel("faces", 64, depth=16), channel("frames:hall", 2, depth=2, dropped=9))
    lines = screen(
        view(snapshot=snapshot(actors=actors, channels=channels, events=(crash,))), 180, 50
    )
    det = line_with(lines, "│ detect:hall ")
    assert det.split()[1:5] == ["detect:hall", "restarting", "2", "0.0"]
    assert "frames:hall" in det and "██████████ 2/2" in det and det.split("│")[1].endswith("9 ")
    matcher = line_with(lines, "│ matcher ")
    assert "faces" in matcher and "███░░░░░░░ 16/64" in matcher
    assert "10:00:09 detect:hall crashed: RuntimeError: simulated inference failure" in "\n".join(
        lines
    )
    # The camera row shows the detector's trouble through its processed rate; its own state stays.
    assert "live" in line_with(lines, "│ hall")


def test_a_crowded_small_screen_keeps_the_rows_in_trouble() -> None:
    actors: list[ActorStats] = []
    for name in ("a", "b", "c", "d", "e"):
        actors += [camera(name, "live", 25.0), detector(name, 5.0)]
    actors[7] = detector("d", 0.0, state="restarting", restarts=1)
    lines = screen(view(snapshot=snapshot(actors=tuple(actors), channels=())), 80, 24)
    assert "restarting" in line_with(lines, "detect:d")
    assert "more" in "\n".join(lines)


def test_camera_actor_failure_outranks_the_stream_state() -> None:
    actors = (camera("door", "live", 0.0, state="failed", last_error="RuntimeError: boom"),)
    door = line_with(screen(view(snapshot=snapshot(actors=actors, channels=())), 160, 50), "│ door")
    assert "failed" in door and "RuntimeError: boom" in door


def test_log_lines_and_status_are_shown() -> None:
    from lfr.dashboard import LogLine

    log = (LogLine("2025-05-01T10:00:07.000+00:00", "warning", "door: stream ended; reconnecting"),)
    text = "\n".join(
        screen(view(log=log, status="confirmed: Barack Obama by alice", stopping=True), 160, 50)
    )
    assert "10:00:07 door: stream ended; reconnecting" in text
    assert "confirmed: Barack Obama by alice" in text
    assert "STOPPING" in text


# -- keys ---------------------------------------------------------------------------------------


def test_parse_keys() -> None:
    assert parse_keys(b"\x1b[A\x1b[Bjkc\x1bOAq") == ["up", "down", "j", "k", "c", "up", "q"]
    assert parse_keys(b"\x1b[15~f\x1b") == ["f"]  # F5 and a lone Esc are skipped
    assert parse_keys(b"\x1b[1;5Af") == ["f"]  # Ctrl-Up is not Up


@pytest.mark.anyio
async def test_terminal_keys_read_in_cbreak_mode_and_the_mode_is_restored() -> None:
    master, slave = os.openpty()
    try:
        before = termios.tcgetattr(slave)
        with cbreak(slave):
            lflag = termios.tcgetattr(slave)[3]
            assert not lflag & termios.ICANON and not lflag & termios.ECHO
            assert lflag & termios.ISIG  # Ctrl-C still stops the deployment
            os.write(master, b"c\x1b[Aq")
            keys = []
            with anyio.fail_after(5):
                async for key in terminal_keys(slave):
                    keys.append(key)
                    if key == "q":
                        break
        assert keys == ["c", "up", "q"]
        assert termios.tcgetattr(slave) == before
    finally:
        os.close(master)
        os.close(slave)


class FakeDeployment:
    """What handle_key and view() use of a DeploymentView: recent alerts, decisions,
    adjudicate, stop, snapshot, the operator's name."""

    def __init__(self) -> None:
        self.config = parse_config({"name": "fake", "operator": "cfg-op"}, "test")
        self.alerts: deque[Alert] = deque()
        self.decided: dict[str, Adjudication] = {}
        self.joined: dict[str, str] = {}  # alert id -> the open alert it joined (a node's)
        self.stopped = False

    def recent_alerts(self) -> tuple[Alert, ...]:
        return tuple(self.alerts)

    def sightings(self) -> dict[str, str]:
        return dict(self.joined)

    def decisions(self) -> dict[str, Adjudication]:
        return dict(self.decided)

    def operator_name(self, override: str | None = None) -> str:
        return self.config.operator_name(override)

    def adjudicate(
        self, alert_id: str, decision: Decision, by: Principal, note: str = ""
    ) -> Adjudication:
        if all(a.id != alert_id for a in self.alerts):
            raise KeyError(alert_id)
        adj = Adjudication(alert_id=alert_id, decision=decision, operator=by.name)
        self.decided[alert_id] = adj
        return adj

    def stop(self) -> None:
        self.stopped = True

    def snapshot(self) -> Snapshot:
        return snapshot()


def test_keys_move_decide_and_quit_and_a_new_alert_never_moves_the_selection() -> None:
    fake = FakeDeployment()
    service = DashboardService(Principal("dora", "supervisor"), console=Console(file=io.StringIO()))
    d = cast("DeploymentView", fake)  # the service only uses the members above
    service.handle_key("c", d)
    assert service.status == "no alert selected" and not fake.decided
    fake.alerts.extend([alert(1), alert(2)])
    assert service.view(d).selected == alert(2).id  # pinned: newest
    fake.alerts.append(alert(3))  # arrives while the operator looks at alert 2
    assert service.view(d).selected == alert(2).id
    service.handle_key("f", d)
    assert fake.decided[alert(2).id].decision == "false_alert"
    assert fake.decided[alert(2).id].operator == "dora"
    assert service.status == "false alert: Barack Obama (hall 10:00:02) by dora"
    service.handle_key("up", d)
    service.handle_key("k", d)  # already at the newest: stays
    assert service.selected == alert(3).id
    service.handle_key("c", d)
    for key in ("down", "j", "j"):
        service.handle_key(key, d)
    assert service.selected == alert(1).id
    service.handle_key("n", d)
    assert {k: v.decision for k, v in fake.decided.items()} == {
        alert(1).id: "no_action",
        alert(2).id: "false_alert",
        alert(3).id: "confirmed",
    }
    service.handle_key("x", d)  # unknown keys do nothing
    assert not fake.stopped
    service.handle_key("q", d)
    assert fake.stopped and service.stopping
    assert service.view(d).stopping


def test_a_sighting_is_shown_as_a_sighting_of_the_alert_it_joined() -> None:
    """On a node of a deployment spread over nodes, an alert that joined another node's open
    alert (lfr.cluster.sightings) is listed as a sighting of it, not as a new pending alert."""
    fake = FakeDeployment()
    service = DashboardService(Principal("olive", "operator"), console=Console(file=io.StringIO()))
    d = cast("DeploymentView", fake)
    fake.alerts.extend([alert(1), alert(2)])
    fake.joined[alert(2).id] = "ab" * 16  # alert 2 joined node1's alert abab...
    lines = screen(service.view(d), 160, 40)
    assert "sighting of abababab" in line_with(lines, "▶")  # the newest, selected
    assert "pending" in line_with(lines, "10:00:01")  # alert 1 is raised here, still pending
    assert "Selected sighting" in "\n".join(lines)
    counters = line_with(lines, "faces")
    assert "sightings 1" in counters
    assert "pending 0" in counters  # the snapshot's one pending alert is the sighting


def test_decisions_are_the_logged_in_users_and_only_a_supervisor_quits() -> None:
    fake = FakeDeployment()
    fake.alerts.append(alert(1))
    d = cast("DeploymentView", fake)
    service = DashboardService(Principal("olive", "operator"), console=Console(file=io.StringIO()))
    service.view(d)
    service.handle_key("c", d)
    assert fake.decided[alert(1).id].operator == "olive"
    assert service.view(d).operator == "olive"  # not the config's operator
    service.handle_key("q", d)
    assert not fake.stopped and "only a supervisor stops" in service.status
    with pytest.raises(ValueError, match="auditor"):
        DashboardService(Principal("audrey", "auditor"))


def test_a_decision_that_cannot_be_written_is_reported_not_raised(
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake = FakeDeployment()
    fake.alerts.append(alert(1))

    def full_disk(*args: object) -> Adjudication:
        raise OSError(28, "No space left on device")

    fake.adjudicate = full_disk  # type: ignore[method-assign,assignment]
    d = cast("DeploymentView", fake)
    service = DashboardService(OPERATOR, console=Console(file=io.StringIO()))
    service.view(d)
    service.handle_key("c", d)
    assert service.status == "not recorded: OSError: [Errno 28] No space left on device"
    assert "not recorded" in caplog.text


def test_refresh_must_be_positive() -> None:
    with pytest.raises(ValueError, match="refresh_s"):
        DashboardService(OPERATOR, refresh_s=0)


# -- the terminal stays the dashboard's ---------------------------------------------------------


@pytest.mark.anyio
async def test_console_notifier_stays_off_a_terminal_the_dashboard_owns() -> None:
    on_terminal, on_pipe = io.StringIO(), io.StringIO()
    terminal = Console(file=on_terminal, force_terminal=True, width=200)
    pipe = Console(file=on_pipe, force_terminal=False, width=200)
    with terminal_owned():
        await ConsoleNotifier(terminal).deliver(alert(1))
        await ConsoleNotifier(pipe).deliver(alert(1))
    assert on_terminal.getvalue() == ""
    assert "Barack Obama" in on_pipe.getvalue()
    await ConsoleNotifier(terminal).deliver(alert(2))  # the dashboard has gone
    assert "Barack Obama" in on_terminal.getvalue()


class TtyStream(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_lines_are_kept_off_the_terminal_and_repeated_after(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="lfr.test_dashboard")
    root = logging.getLogger()
    stream = TtyStream()
    handler = logging.StreamHandler(stream)
    root.addHandler(handler)
    try:
        capture = LogCapture()
        log = logging.getLogger("lfr.test_dashboard")
        with capture.installed(take_terminal=True):
            assert handler not in root.handlers
            log.warning("camera door: stream ended")
            log.info("just so")
            assert stream.getvalue() == ""
        assert handler in root.handlers and capture not in root.handlers
        assert [line.message for line in capture.lines][-2:] == [
            "camera door: stream ended",
            "just so",
        ]
        assert stream.getvalue() == "camera door: stream ended\n"  # warnings are repeated
    finally:
        root.removeHandler(handler)


# -- real deployments -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 60.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polling a deployment's state is the point
            await anyio.sleep(0.05)


@pytest.mark.anyio
async def test_keys_adjudicate_a_real_alert_into_counters_and_audit_log(
    tmp_path: Path, bundle: Path
) -> None:
    config = parse_config(
        {
            "name": "keys",
            "data_dir": str(tmp_path / "data"),
            "watchlist": {"bundle": str(bundle)},
            "cameras": [{"name": "clip", "url": str(CLIP), "fps_cap": 3, "loop": True}],
            "notifiers": [{"kind": "jsonl"}],
        },
        "test",
    )
    deployment = Deployment(config, load_plugins(), offline=True)
    out = io.StringIO()
    console = Console(file=out, width=160, height=50, color_system=None)
    seen: dict[str, object] = {}

    async def keys() -> AsyncIterator[str]:
        await wait_for(lambda: service.selected is not None)
        seen["before"] = deployment.view.snapshot().counters
        seen["alert"] = service.selected
        yield "c"
        await wait_for(lambda: deployment.view.snapshot().counters.confirmed == 1)
        seen["after"] = deployment.view.snapshot().counters
        yield "q"

    service = DashboardService(
        Principal("carol", "supervisor"), refresh_s=0.1, console=console, keys=keys()
    )
    with anyio.fail_after(120):
        summary = await deployment.run(handle_signals=False, services=[service.run])
    before, after = seen["before"], seen["after"]
    assert isinstance(before, Counters) and isinstance(after, Counters)
    assert (before.confirmed, after.confirmed) == (0, 1)
    assert after.pending == after.alerts - 1
    assert summary.alerts >= 1
    records = list(audit_records(tmp_path / "data"))
    decided = [r.data for r in records if r.kind == "adjudication"]
    assert decided == [
        {
            "alert_id": seen["alert"],
            "decision": "confirmed",
            "operator": "carol",
            "role": "supervisor",
            "auth": "password",
            "note": "",
            "time": decided[0]["time"],
        }
    ]
    # 'q' drained the pipeline cleanly (the log's closing seal follows the stop)
    assert [r.kind for r in records[-2:]] == ["deployment_stop", "seal"]
    assert deployment.frames.statistics().subscribers == ()  # the dashboard unsubscribed
    final = out.getvalue()  # a file console gets the last frame, at stop
    assert "confirmed 1" in final and "STOPPING" in final and "operator carol" in final
    assert "confirmed" in line_with(final.splitlines(), "▶")  # the row shows its decision


def make_ts_clip(path: Path, seconds: float = 30.0, fps: int = 10) -> Path:
    with av.open(str(path), "w", format="mpegts") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = 320, 240, "yuv420p"
        for i in range(int(seconds * fps)):
            image = np.full((240, 320, 3), 40, np.uint8)
            image[:, : (i * 8) % 320] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


class LiveServer:
    """Serves `data` paced at its own duration over HTTP: a live camera until stop()."""

    def __init__(self, data: bytes, seconds: float) -> None:
        self.data, self.seconds = data, seconds
        app = web.Application()
        app.router.add_get("/live.ts", self.handler)
        self.runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
        self.url = ""

    async def handler(self, request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp2t"})
        await response.prepare(request)
        chunk = max(len(self.data) // int(self.seconds * 10), 188)
        try:
            for i in range(0, len(self.data), chunk):
                await response.write(self.data[i : i + chunk])
                await anyio.sleep(0.1)
        except ConnectionError:
            pass  # the camera hung up
        return response

    async def start(self) -> None:
        await self.runner.setup()
        await web.TCPSite(self.runner, "127.0.0.1", 0).start()
        self.url = f"http://127.0.0.1:{self.runner.addresses[0][1]}/live.ts"

    async def stop(self) -> None:
        await self.runner.cleanup()


@pytest.mark.anyio
async def test_a_live_camera_whose_stream_dies_shows_reconnecting_while_the_other_stays_live(
    tmp_path: Path, bundle: Path
) -> None:
    clip = make_ts_clip(tmp_path / "live.ts")
    service = DashboardService(OPERATOR, console=Console(file=io.StringIO(), width=160, height=50))

    def cameras() -> dict[str, CameraStats]:
        return {s.name: s for s in deployment.snapshot().actors if isinstance(s, CameraStats)}

    server = LiveServer(clip.read_bytes(), 30.0)
    await server.start()
    try:
        config = parse_config(
            {
                "name": "dies",
                "data_dir": str(tmp_path / "data"),
                "watchlist": {"bundle": str(bundle)},
                "cameras": [
                    {
                        "name": "stage",
                        "url": str(CLIP),
                        "fps_cap": 2,
                        "realtime": True,
                        "loop": True,
                    },
                    {
                        "name": "street",
                        "url": server.url,
                        "fps_cap": 2,
                        "open_timeout_s": 2.0,
                        "read_timeout_s": 1.0,
                        "reconnect_initial_s": 0.2,
                        "reconnect_max_s": 0.5,
                    },
                ],
                "notifiers": [{"kind": "jsonl"}],
            },
            "test",
        )
        deployment = Deployment(config, load_plugins())
        async with anyio.create_task_group() as tg:
            tg.start_soon(lambda: deployment.run(False, services=[service.run]))
            await wait_for(
                lambda: (
                    deployment.pipeline.matcher is not None
                    and all(c.source_state == "live" for c in cameras().values())
                    and cameras()["street"].frames_emitted > 3
                )
            )
            lines = screen(service.view(deployment.view), 160, 50)
            assert "live" in line_with(lines, "│ street") and "live" in line_with(lines, "│ stage")
            await server.stop()  # the street camera's stream dies
            await wait_for(
                lambda: (
                    "Connection refused" in cameras()["street"].last_error
                    and cameras()["street"].source_state == "reconnecting"
                ),
                30,
            )
            lines = screen(service.view(deployment.view), 160, 50)
            street = line_with(lines, "│ street")
            assert "reconnecting" in street and "cannot open: Connection refused" in street
            stage = line_with(lines, "│ stage")
            assert "live" in stage and "reconnecting" not in stage
            deployment.stop()
    finally:
        await server.stop()


def test_camera_flows_come_from_the_matchers_statistics() -> None:
    hall = CameraDecisions(frames=40, faces=12, alerts=1, faces_per_s=3.25,
                           latency_ms=LatencyMs(120.4, 480.0, 900.0))
    matcher = MatcherStats(
        **base("matcher", "matcher", reads="faces"), frames=40, faces=12, matches=1, alerts=1,
        alerts_by_person={"obama": 1}, latency_ms=LatencyMs(120.4, 480.0, 900.0),
        cameras={"hall": hall},
    )
    assert flows(snapshot(actors=(camera("hall", "live", 25.0), matcher))) == {
        "hall": CameraFlow(faces_per_s=3.25, latency_p50_ms=120.4, latency_p95_ms=480.0)
    }
    assert flows(snapshot(actors=(camera("hall", "live", 25.0),))) == {}  # no matcher yet
