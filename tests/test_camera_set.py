"""A running deployment whose cameras change (a node's leases): a camera joins and another leaves
while the rest run on, untouched; one that cannot start is named and the others go on; with no
camera at all it stays up, idle."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest
from clips import make_clip
from paths import CLIP, PEOPLE

from lfr.audit import audit_records
from lfr.config import parse_config
from lfr.deployment import CameraError, Deployment, DeploymentView
from lfr.hookspecs import hookimpl
from lfr.messages import Alert
from lfr.pipeline.matcher import FrameReport
from lfr.plugins import Registry, SourceBackendSettings, load_plugins
from lfr.runtime.broadcast import Recording
from lfr.testing import FakeCamera
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

WAIT_S = 240  # generous: the machine running the tests may be loaded


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


@pytest.fixture(scope="module")
def small_clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_clip(tmp_path_factory.mktemp("clip") / "bars.mp4", n=25, size=(160, 120))


class PacedSettings(SourceBackendSettings, frozen=True, tag="paced"):
    path: str
    fps: float = 8.0


class PacedCamera(FakeCamera):
    """A small clip looping at ``fps``, its frames waited for (not live: its channel blocks),
    so every frame it emits is processed and frame indices run on without a gap."""

    live = False


class BrokenSettings(SourceBackendSettings, frozen=True, tag="broken"):
    pass


def broken_camera(settings: BrokenSettings, context: object) -> object:
    raise OSError("no such capture device")


class CamerasPlugin:
    @hookimpl
    def lfr_register_sources(self, register: Callable[..., None]) -> None:
        register("paced", lambda s, ctx: PacedCamera(Path(s.path), s.name, loop=True,
                                                     realtime=True, fps=s.fps),
                 settings=PacedSettings)
        register("broken", broken_camera, settings=BrokenSettings)


def make_config(tmp_path: Path, bundle: Path, cameras: list[dict[str, Any]]) -> Any:
    # Tracks of a camera end only by its own frames or its removal: max_age_s is beyond the run.
    return parse_config({
        "name": "t", "data_dir": str(tmp_path / "data"), "watchlist": {"bundle": str(bundle)},
        "cameras": cameras, "notifiers": [{"kind": "jsonl"}],
        "matching": {"tracking": {"max_age_s": 3600.0}}}, "test")


class Seen:
    """What the matcher decided, kept small: (camera, frame index) per frame report, and the
    alerts. The reports (with their frames) are dropped as they are taken."""

    def __init__(self, reports: Recording[FrameReport], alerts: Recording[Alert]) -> None:
        self._reports, self._alerts = reports, alerts
        self.frames: list[tuple[str, int]] = []

    def take(self) -> None:
        taken, self._reports.items[:] = list(self._reports.items), []
        self.frames += [(r.faces.frame.camera, r.faces.frame.index) for r in taken]

    def indices(self, camera: str) -> list[int]:
        self.take()
        return [index for name, index in self.frames if name == camera]

    def alerts(self, camera: str) -> list[Alert]:
        return [a for a in self._alerts.items if a.camera == camera]

    async def until(self, what: str, done: Callable[[], bool]) -> None:
        with anyio.fail_after(WAIT_S):
            while not done():
                await anyio.sleep(0.05)
                self.take()


def run_with(deployment: Deployment, drive: Callable[[DeploymentView, Seen], Any]
             ) -> tuple[Any, Seen]:
    """Run ``deployment`` with ``drive`` as a service (it stops the deployment when done)."""
    with deployment.frames.record() as reports, deployment.alerts.record() as alerts:
        seen = Seen(reports, alerts)

        async def service(view: DeploymentView) -> None:
            try:
                await drive(view, seen)
            finally:
                view.stop()

        summary = anyio.run(lambda: deployment.run(False, [service]))
        seen.take()
    return summary, seen


def settings(registry: Registry, **fields: Any) -> Any:
    return registry.parse_settings("source", {"kind": "video", **fields},
                                   f"camera {fields['name']}")


def audit_of(tmp_path: Path) -> list[tuple[str, dict[str, Any]]]:
    return [(r.kind, r.data) for r in audit_records(tmp_path / "data")]


def test_a_camera_joins_and_another_leaves_while_the_others_run_on(
        tmp_path: Path, bundle: Path, small_clip: Path) -> None:
    registry = load_plugins(extra=[CamerasPlugin()])
    config = make_config(tmp_path, bundle, [
        {"name": "steady", "kind": "paced", "path": str(small_clip)},
        {"name": "leaving", "url": str(CLIP), "realtime": True, "loop": True, "fps_cap": 3}])
    deployment = Deployment(config, registry, cameras_change=True)
    found: dict[str, Any] = {}

    async def drive(view: DeploymentView, seen: Seen) -> None:
        steady = deployment.pipeline.lines["steady"]
        tracker = deployment.pipeline.matcher.policy.tracker  # type: ignore[union-attr]
        await seen.until("steady's frames", lambda: len(seen.indices("steady")) >= 10)
        await deployment.add_camera(settings(registry, name="joining", url=str(CLIP),
                                             realtime=True, loop=True, fps_cap=5))
        assert view.cameras == ("steady", "leaving", "joining")
        await seen.until("an alert from the camera that joined",
                         lambda: bool(seen.alerts("joining")))
        # Taken out while one of its tracks is open: that track ends with the camera.
        await seen.until("an open track on leaving", lambda: "leaving" in tracker.tracks)
        await deployment.remove_camera("leaving")
        assert view.cameras == ("steady", "joining")
        assert "leaving" not in {a.name for a in view.snapshot().actors}
        # Its end follows its last frame through the matcher: its tracks end after that frame.
        await seen.until("leaving's tracks ended", lambda: "leaving" not in tracker.tracks)
        found["leaving_at_its_end"] = len(seen.indices("leaving"))
        after = len(seen.indices("steady"))
        await seen.until("steady's frames after", lambda: len(seen.indices("steady")) >= after + 10)
        found["steady_line_at_end"] = deployment.pipeline.lines["steady"]
        found["steady_line"] = steady

    summary, seen = run_with(deployment, drive)

    # The untouched camera: the same actors all along, never restarted, no frame missing.
    steady = seen.indices("steady")
    assert steady == list(range(len(steady)))
    assert found["steady_line_at_end"] is found["steady_line"]
    assert summary.restarts == 0
    assert [e.event for e in deployment.supervisor.events()
            if e.actor in ("steady", "detect:steady")] == ["finished", "finished"]
    # The camera taken out: nothing of it after its end, and every frame it had sent went
    # through the matcher (a live camera's channel counts what it dropped).
    leaving = seen.indices("leaving")
    assert len(leaving) == found["leaving_at_its_end"] > 0
    assert summary.cameras["leaving"]["frames_emitted"] == (
        len(leaving) + summary.cameras["leaving"]["dropped_frames"])
    assert summary.cameras["joining"]["frames_emitted"] > 0
    assert {a.person_id for a in seen.alerts("joining")} <= {
        "lin_manuel_miranda", "obama", "alex_lacamoire"}
    # One deployment; the join and the leave audited; every camera's stop after it ran.
    records = audit_of(tmp_path)
    assert [k for k, _ in records].count("deployment_start") == 1
    starts = [d["camera"] for k, d in records if k == "camera_start"]
    stops = [(d["camera"], d["why"]) for k, d in records if k == "camera_stop"]
    assert starts == ["joining"]
    assert stops[0] == ("leaving", "removed")
    assert sorted(stops[1:]) == [("joining", "stopping"), ("steady", "stopping")]
    (stop,) = [d for k, d in records if k == "deployment_stop"]
    assert set(stop["cameras"]) == {"steady", "leaving", "joining"}


def test_an_idle_deployment_stays_up_and_a_camera_that_cannot_start_stops_nothing(
        tmp_path: Path, bundle: Path, small_clip: Path) -> None:
    registry = load_plugins(extra=[CamerasPlugin()])
    deployment = Deployment(make_config(tmp_path, bundle, []), registry, cameras_change=True)
    errors: list[str] = []

    async def drive(view: DeploymentView, seen: Seen) -> None:
        await anyio.sleep(1.0)  # no camera: idle, not ended
        assert view.cameras == ()
        (matcher,) = [a for a in view.snapshot().actors if a.kind == "matcher"]
        assert matcher.state == "running"
        await deployment.add_camera(settings(registry, name="steady", kind="paced",
                                             path=str(small_clip)))
        await seen.until("steady's frames", lambda: len(seen.indices("steady")) >= 5)
        with pytest.raises(CameraError) as broken:
            await deployment.add_camera(settings(registry, name="door", kind="broken"))
        errors.append(str(broken.value))
        with pytest.raises(CameraError) as twice:
            await deployment.add_camera(settings(registry, name="steady", kind="paced",
                                                 path=str(small_clip)))
        errors.append(str(twice.value))
        # A file that is not there starts, fails by itself and is audited naming it.
        await deployment.add_camera(settings(registry, name="gone",
                                             url=str(tmp_path / "missing.mp4")))
        await seen.until("the missing file's camera to stop", lambda: any(
            k == "camera_stop" and d["camera"] == "gone" for k, d in audit_of(tmp_path)))
        before = len(seen.indices("steady"))
        await seen.until("steady's frames after", lambda: len(seen.indices("steady"))
                         >= before + 5)
        await deployment.remove_camera("gone")
        await deployment.remove_camera("steady")
        started = time.monotonic()
        await anyio.sleep(1.0)  # none again: still up
        assert time.monotonic() - started >= 1.0 and view.cameras == ()
        (matcher,) = [a for a in view.snapshot().actors if a.kind == "matcher"]
        assert matcher.state == "running"

    summary, seen = run_with(deployment, drive)
    assert "'door'" in errors[0] and "no such capture device" in errors[0]
    assert "'steady'" in errors[1] and "runs already" in errors[1]
    steady = seen.indices("steady")
    assert steady == list(range(len(steady)))
    assert summary.failures == []
    records = audit_of(tmp_path)
    (gone,) = [d for k, d in records if k == "camera_stop" and d["camera"] == "gone"]
    assert gone["why"] == "ended" and gone["source_state"] == "failed"
    assert [d["camera"] for k, d in records if k == "camera_start"] == ["steady", "gone"]
    assert ("steady", "removed") in [(d["camera"], d["why"]) for k, d in records
                                     if k == "camera_stop"]
    assert summary.cameras["steady"]["frames_emitted"] == len(steady)


def test_a_fixed_deployment_refuses_to_change_its_cameras(tmp_path: Path, bundle: Path,
                                                          small_clip: Path) -> None:
    registry = load_plugins(extra=[CamerasPlugin()])
    deployment = Deployment(make_config(tmp_path, bundle, []), registry)
    with pytest.raises(RuntimeError, match="fixed set of cameras"):
        anyio.run(deployment.add_camera, settings(registry, name="x", kind="paced",
                                                 path=str(small_clip)))
