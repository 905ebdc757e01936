"""Camera actors on real decoding: clips made here with PyAV, the shared demo clip, and a live
HTTP (MPEG-TS) server on 127.0.0.1 that ends or stalls its streams to exercise reconnection."""

from __future__ import annotations

import json
import shutil
import socket
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import anyio.abc
import av
import msgspec
import numpy as np
import pytest
from aiohttp import web
from clips import bar_width, make_clip

from lfr.messages import Frame
from lfr.pipeline.camera import SourceActor
from lfr.runtime import Overflow, Supervisor, open_channel
from lfr.runtime.channels import Channel, Receiver, Sender
from lfr.sources import (
    CameraStats,
    SourceSettings,
    SourceState,
    VideoSource,
    backoff_delays,
    is_live_url,
    redact_url,
)

DEMO_CLIP = Path("/work/shared/data/demo/video/short_hamilton_clip.mp4")
N_FRAMES, FPS = 50, 25  # the synthetic clips: 2 s of 320x240


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("clips")
    mp4 = make_clip(d / "clip.mp4")
    truncated = d / "truncated.mp4"
    data = mp4.read_bytes()
    truncated.write_bytes(data[: int(len(data) * 0.3)])
    garbage = d / "garbage.mp4"
    garbage.write_bytes(b"this is not a video " * 500)
    return {
        "mp4": mp4,
        "h264": make_clip(d / "clip_h264.mp4", codec="libx264"),
        "ts": make_clip(d / "clip.ts", fmt="mpegts"),
        "truncated": truncated,
        "garbage": garbage,
    }


class Run:
    """What a camera delivered: every index, the first frames in full, its channel and actor."""

    def __init__(self, camera: SourceActor, channel: Channel[Frame]) -> None:
        self.camera = camera
        self.channel = channel
        self.indices: list[int] = []
        self.frames: list[Frame] = []

    @property
    def stats(self) -> CameraStats:
        return self.camera.statistics()


async def play(
    settings: SourceSettings,
    *,
    policy: Overflow = Overflow.BLOCK,
    capacity: int = 4,
    delay_s: float = 0.0,
    stop_after: int | None = None,
    keep: int = N_FRAMES,
) -> Run:
    """Run one supervised camera until its sender closes; stop it after `stop_after` frames."""
    send: Sender[Frame]
    receive: Receiver[Frame]
    send, receive = open_channel(f"frames:{settings.name}", capacity, policy)
    camera = SourceActor(VideoSource(settings), send)
    run = Run(camera, send.channel)
    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(Supervisor().supervise, camera)
        async for frame in receive:
            run.indices.append(frame.index)
            if len(run.frames) < keep:
                run.frames.append(frame)
            if stop_after is not None and len(run.indices) >= stop_after:
                camera.stop()
            if delay_s:
                await anyio.sleep(delay_s)
    return run


def settings(url: Path | str, name: str = "cam1", **kwargs: object) -> SourceSettings:
    return SourceSettings(name=name, url=str(url), **kwargs)  # type: ignore[arg-type]


# --- settings and helpers ---------------------------------------------------------------------


def test_settings_defaults_and_validation() -> None:
    s = SourceSettings(name="cam1", url="rtsp://admin:hunter2@10.0.0.5/stream1")
    assert (s.open_timeout_s, s.read_timeout_s, s.rtsp_transport) == (10.0, 5.0, "tcp")
    assert (s.reconnect_initial_s, s.reconnect_max_s, s.fps_cap, s.loop) == (0.5, 30.0, None, False)
    assert s.live
    assert "hunter2" not in repr(s)
    with pytest.raises(ValueError, match="fps_cap: must be > 0"):
        SourceSettings(name="cam1", url="x.mp4", fps_cap=0)
    with pytest.raises(ValueError, match="reconnect_max_s"):
        SourceSettings(name="cam1", url="x.mp4", reconnect_initial_s=5, reconnect_max_s=1)
    # As the config loader will decode it: unknown keys and bad values name the field.
    with pytest.raises(msgspec.ValidationError, match="read_timeout_s"):
        msgspec.convert({"name": "c", "url": "x.mp4", "read_timeout_s": -1}, SourceSettings)
    with pytest.raises(msgspec.ValidationError, match="fps"):
        msgspec.convert({"name": "c", "url": "x.mp4", "fps": 5}, SourceSettings)
    with pytest.raises(msgspec.ValidationError, match="rtsp_transport"):
        msgspec.convert({"name": "c", "url": "x.mp4", "rtsp_transport": "sctp"}, SourceSettings)


def test_url_helpers() -> None:
    assert redact_url("rtsp://admin:hunter2@10.0.0.5:554/s1") == "rtsp://***@10.0.0.5:554/s1"
    assert redact_url("rtsp://10.0.0.5/s1") == "rtsp://10.0.0.5/s1"
    assert redact_url("/videos/a.mp4") == "/videos/a.mp4"
    assert [is_live_url(u) for u in ("rtsp://h/x", "HTTPS://h/x.ts", "/a.mp4", "a.mp4")] == [
        True,
        True,
        False,
        False,
    ]


def test_backoff_schedule_doubles_up_to_the_cap() -> None:
    delays = backoff_delays(0.5, 30.0)
    assert [next(delays) for _ in range(9)] == [0.5, 1, 2, 4, 8, 16, 30, 30, 30]


# --- files ------------------------------------------------------------------------------------


@pytest.mark.anyio
async def test_block_delivers_every_frame_in_order(clips: dict[str, Path]) -> None:
    with anyio.fail_after(30):
        # capacity 1 and a slow consumer: back-pressure, not loss
        run = await play(settings(clips["mp4"]), capacity=1, delay_s=0.005)
    with av.open(str(clips["mp4"])) as container:
        expected = sum(1 for _ in container.decode(video=0))
    assert expected == N_FRAMES
    assert run.indices == list(range(N_FRAMES))
    assert run.channel.statistics().dropped == 0
    for frame in run.frames:
        assert frame.camera == "cam1"
        assert frame.image.shape == (240, 320, 3) and frame.image.dtype == np.uint8
        red = frame.image[120, :, 2] > 100  # BGR: the bar is in the last channel
        assert abs(int(red.sum()) - bar_width(frame.index)) <= 2
        assert frame.image[120, :, 0].max() < 60
    monos = [f.mono_time for f in run.frames]
    assert monos == sorted(monos)
    assert abs(run.frames[-1].wall_time - time.time()) < 30
    stats = run.stats
    assert (stats.source_state, stats.frames_decoded, stats.frames_emitted) == ("ended", 50, 50)
    assert (stats.width, stats.height, stats.source_fps, stats.errors) == (320, 240, 25.0, 0)
    assert (stats.state, stats.restarts, stats.processed) == ("stopped", 0, 50)


@pytest.mark.anyio
async def test_h264_and_mpegts_clips_decode_fully(clips: dict[str, Path]) -> None:
    with anyio.fail_after(30):
        for name in ("h264", "ts"):
            run = await play(settings(clips[name]))
            assert run.indices == list(range(N_FRAMES)), name


@pytest.mark.anyio
async def test_demo_clip_delivers_all_frames() -> None:
    with av.open(str(DEMO_CLIP)) as container:
        expected = sum(1 for _ in container.decode(video=0))
    with anyio.fail_after(120):
        run = await play(settings(DEMO_CLIP), keep=1)
    assert run.indices == list(range(expected))
    stats = run.stats
    assert (stats.width, stats.height) == (640, 360)
    assert stats.source_fps is not None and abs(stats.source_fps - 29.97) < 0.01
    assert run.frames[0].image.shape == (360, 640, 3)


@pytest.mark.anyio
async def test_realtime_paces_at_the_clip_rate(clips: dict[str, Path]) -> None:
    duration = N_FRAMES / FPS
    with anyio.fail_after(60):
        start = time.monotonic()
        await play(settings(clips["mp4"]))
        fast = time.monotonic() - start
        start = time.monotonic()
        paced = await play(settings(clips["mp4"], realtime=True))
        realtime = time.monotonic() - start
    assert paced.indices == list(range(N_FRAMES))
    assert realtime >= 0.7 * duration
    assert fast < realtime / 2
    # Capture times follow the pacing: frame 49 is stamped about 1.96 s after frame 0.
    span = paced.frames[-1].mono_time - paced.frames[0].mono_time
    assert span >= 0.7 * (N_FRAMES - 1) / FPS


@pytest.mark.anyio
@pytest.mark.parametrize(("cap", "step"), [(12.5, 2), (6.25, 4)])
async def test_fps_cap_skips_frames_before_conversion(
    clips: dict[str, Path], cap: float, step: int
) -> None:
    with anyio.fail_after(30):
        run = await play(settings(clips["mp4"], fps_cap=cap))
    assert run.indices == list(range(0, N_FRAMES, step))
    stats = run.stats
    assert stats.frames_decoded == N_FRAMES
    assert stats.frames_emitted == len(run.indices)
    assert stats.frames_skipped == N_FRAMES - len(run.indices)
    for frame in run.frames:  # the index names the source frame: its content matches
        assert abs(int((frame.image[120, :, 2] > 100).sum()) - bar_width(frame.index)) <= 2


@pytest.mark.anyio
async def test_fps_cap_above_the_source_rate_keeps_everything(clips: dict[str, Path]) -> None:
    with anyio.fail_after(30):
        run = await play(settings(clips["mp4"], fps_cap=100.0))
    assert run.indices == list(range(N_FRAMES))
    assert run.stats.frames_skipped == 0


@pytest.mark.anyio
async def test_loop_keeps_going_with_increasing_indices(clips: dict[str, Path]) -> None:
    with anyio.fail_after(60):
        run = await play(settings(clips["mp4"], loop=True), stop_after=3 * N_FRAMES + 10, keep=200)
    assert len(run.indices) >= 3 * N_FRAMES + 10
    assert run.indices == list(range(len(run.indices)))
    # The second pass shows the same pictures as the first.
    for frame in run.frames[N_FRAMES : 2 * N_FRAMES]:
        first = run.frames[frame.index - N_FRAMES]
        assert np.abs(frame.image.astype(int) - first.image).mean() < 1
    assert run.stats.source_state == "ended"


@pytest.mark.anyio
async def test_stop_ends_a_realtime_file_promptly(clips: dict[str, Path]) -> None:
    with anyio.fail_after(30):
        start = time.monotonic()
        run = await play(settings(clips["mp4"], realtime=True, loop=True), stop_after=5)
        elapsed = time.monotonic() - start
    assert 5 <= len(run.indices) < N_FRAMES
    assert elapsed < 1.5  # well before the 2 s clip's end
    assert run.stats.source_state == "ended"


@pytest.mark.anyio
@pytest.mark.parametrize("name", ["truncated", "garbage"])
async def test_corrupt_file_fails_with_a_specific_error(clips: dict[str, Path], name: str) -> None:
    path = clips[name]
    with anyio.fail_after(30):
        run = await play(settings(path, loop=True))
    stats = run.stats
    assert run.indices == []
    assert stats.source_state == "failed"
    assert stats.last_error == (
        f"cam1: cannot open '{path}': Invalid data found when processing input"
    )
    assert stats.restarts == 0  # not retried: retrying a broken file cannot help


@pytest.mark.anyio
async def test_truncated_stream_file_plays_what_it_has(
    tmp_path: Path, clips: dict[str, Path]
) -> None:
    # An MPEG-TS recording cut short (e.g. still being written) has no index to lose.
    data = clips["ts"].read_bytes()
    path = tmp_path / "cut.ts"
    path.write_bytes(data[: len(data) // 2])
    with anyio.fail_after(30):
        run = await play(settings(path))
    assert 0 < len(run.indices) < N_FRAMES
    assert run.indices == list(range(len(run.indices)))
    assert run.stats.source_state == "ended"


@pytest.mark.anyio
async def test_missing_file_fails_naming_the_path(tmp_path: Path) -> None:
    path = tmp_path / "nope.mp4"
    with anyio.fail_after(30):
        run = await play(settings(path))
    stats = run.stats
    assert stats.source_state == "failed"
    assert stats.last_error == f"cam1: cannot open '{path}': No such file or directory"
    assert (stats.errors, stats.restarts, stats.frames_decoded) == (1, 0, 0)


@pytest.mark.anyio
async def test_two_cameras_one_broken(clips: dict[str, Path], tmp_path: Path) -> None:
    good_send: Sender[Frame]
    bad_send: Sender[Frame]
    good_send, good_recv = open_channel("frames:good", 2, Overflow.BLOCK)
    bad_send, bad_recv = open_channel("frames:bad", 2, Overflow.BLOCK)
    good = SourceActor(VideoSource(settings(clips["mp4"], name="good")), good_send)
    bad = SourceActor(VideoSource(settings(tmp_path / "missing.mp4", name="bad")), bad_send)
    supervisor = Supervisor()
    got: list[int] = []
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg, good_recv, bad_recv:
            supervisor.start_soon(tg, good)
            supervisor.start_soon(tg, bad)
            async for frame in good_recv:
                got.append(frame.index)
            assert [f async for f in bad_recv] == []  # closed by finish(), nothing sent
    assert got == list(range(N_FRAMES))
    assert bad.statistics().source_state == "failed"
    assert "missing.mp4" in bad.statistics().last_error
    assert good.statistics().source_state == "ended"
    assert supervisor.statistics().restarts == 0


@pytest.mark.anyio
async def test_drop_oldest_with_a_slow_consumer(clips: dict[str, Path]) -> None:
    with anyio.fail_after(30):
        run = await play(
            settings(clips["mp4"]), policy=Overflow.DROP_OLDEST, capacity=2, delay_s=0.02
        )
    channel = run.channel.statistics()
    stats = run.stats
    assert stats.frames_emitted == stats.frames_decoded == N_FRAMES  # decoding never waited
    assert channel.sent == N_FRAMES
    assert channel.dropped > 0 and channel.max_depth <= 2
    assert channel.received + channel.dropped == N_FRAMES == len(run.indices) + channel.dropped
    assert run.indices == sorted(run.indices)
    assert run.indices[-1] == N_FRAMES - 1  # the newest frame always gets through


# --- live streams: an HTTP MPEG-TS server that ends or stalls each stream ---------------------


@asynccontextmanager
async def ts_server(data: bytes, *, stall: bool = False, port: int = 0) -> AsyncIterator[str]:
    """Serves `data` at 'live' speed (then ends the response, or stalls after half of it)."""

    async def handler(request: web.Request) -> web.StreamResponse:
        response = web.StreamResponse(headers={"Content-Type": "video/mp2t"})
        await response.prepare(request)
        end = len(data) // 2 if stall else len(data)
        try:
            for i in range(0, end, 4096):
                await response.write(data[i : i + 4096])
                await anyio.sleep(0.01)
            if stall:
                await anyio.sleep(60)
        except ConnectionError:
            pass  # the camera hung up
        return response

    app = web.Application()
    app.router.add_get("/live.ts", handler)
    runner = web.AppRunner(app, handler_cancellation=True, shutdown_timeout=0.5)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port)
    await site.start()
    bound = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{bound}/live.ts"
    finally:
        await runner.cleanup()


def live_settings(url: str, **kwargs: object) -> SourceSettings:
    defaults: dict[str, object] = {
        "open_timeout_s": 5.0,
        "read_timeout_s": 0.5,
        "reconnect_initial_s": 0.05,
        "reconnect_max_s": 0.2,
    }
    return settings(url, **(defaults | kwargs))


async def wait_for(predicate: Callable[[], bool], timeout_s: float = 20.0) -> None:
    with anyio.fail_after(timeout_s):
        while not predicate():  # noqa: ASYNC110 - polling a camera's counters is the point
            await anyio.sleep(0.02)


@pytest.mark.anyio
async def test_live_stream_reconnects_after_end_of_stream(clips: dict[str, Path]) -> None:
    async with ts_server(clips["ts"].read_bytes()) as url:
        with anyio.fail_after(60):
            run = await play(live_settings(url), stop_after=2 * N_FRAMES + 10, keep=0)
    stats = run.stats
    assert stats.reconnects >= 2
    assert stats.last_error == f"cam1: '{url}': stream ended"
    assert run.indices == list(range(len(run.indices)))  # indices go on across connections
    assert stats.source_state == "ended"


@pytest.mark.anyio
async def test_live_stream_stall_is_detected_and_reconnected(clips: dict[str, Path]) -> None:
    async with ts_server(clips["ts"].read_bytes(), stall=True) as url:
        send: Sender[Frame]
        send, receive = open_channel("frames:cam1", 2, Overflow.DROP_OLDEST)
        camera = SourceActor(VideoSource(live_settings(url)), send)
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(Supervisor().supervise, camera)
            await wait_for(lambda: camera.statistics().reconnects >= 2)
            assert camera.statistics().last_error == f"cam1: '{url}': no frame for 0.5 s"
            # each connection delivered
            assert camera.statistics().frames_decoded >= 2 * (N_FRAMES // 3)
            camera.stop()
            async for _ in receive:
                pass
    assert camera.statistics().source_state == "ended"


@pytest.mark.anyio
async def test_live_stream_waits_for_a_server_that_comes_up_later(clips: dict[str, Path]) -> None:
    with socket.socket() as probe:  # a free port, nobody listening yet
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    url = f"http://127.0.0.1:{port}/live.ts"
    send: Sender[Frame]
    send, receive = open_channel("frames:cam1", 2, Overflow.DROP_OLDEST)
    camera = SourceActor(VideoSource(live_settings(url)), send)
    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(Supervisor().supervise, camera)
        await wait_for(lambda: camera.statistics().reconnects >= 3)
        stats = camera.statistics()
        assert stats.source_state == SourceState.RECONNECTING
        assert stats.last_error == f"cam1: cannot open '{url}': Connection refused"
        assert stats.state == "running"  # reconnecting is the camera's business, not a crash
        async with ts_server(clips["ts"].read_bytes(), port=port):
            with anyio.fail_after(20):
                frame = await receive.receive()
            assert frame.image.shape == (240, 320, 3)
            camera.stop()
        async for _ in receive:
            pass
    assert camera.statistics().frames_emitted > 0


@pytest.mark.anyio
async def test_stop_does_not_wait_for_a_hanging_open() -> None:
    async def silent(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            await anyio.sleep(60)  # accepts, never answers

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    send: Sender[Frame]
    send, receive = open_channel("frames:cam1", 2, Overflow.DROP_OLDEST)
    url = f"http://127.0.0.1:{port}/x.ts"
    camera = SourceActor(VideoSource(live_settings(url, open_timeout_s=30)), send)
    async with listener, receive, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, silent)
        tg.start_soon(Supervisor().supervise, camera)
        await anyio.sleep(0.5)
        assert camera.statistics().source_state == "connecting"
        start = time.monotonic()
        camera.stop()
        with anyio.fail_after(10):
            async for _ in receive:
                pass
        assert time.monotonic() - start < 3  # not the 30 s open timeout
        tg.cancel_scope.cancel()
    assert camera.statistics().source_state == "ended"


@pytest.mark.anyio
async def test_camera_ends_when_nobody_receives(clips: dict[str, Path]) -> None:
    send: Sender[Frame]
    send, receive = open_channel("frames:cam1", 2, Overflow.BLOCK)
    camera = SourceActor(VideoSource(settings(clips["mp4"], loop=True)), send)
    supervisor = Supervisor()
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            supervisor.start_soon(tg, camera)
            with receive:
                await receive.receive()
    stats = camera.statistics()
    assert (stats.source_state, stats.restarts, stats.errors) == ("ended", 0, 0)
    assert supervisor.statistics().restarts == 0


# --- recorded footage through `lfr run`: every frame ------------------------------------------


def test_only_live_sources_may_drop_frames() -> None:
    from lfr.pipeline.wiring import frame_overflow, is_live
    from lfr.testing import FakeCamera

    file = VideoSource(settings("clip.mp4"))
    assert not file.live  # read as fast as it decodes: waiting loses nothing
    assert VideoSource(settings("clip.mp4", realtime=True)).live  # stands in for a camera
    assert VideoSource(settings("rtsp://127.0.0.1:8554/cam1")).live
    assert is_live(FakeCamera(Path("clip.mp4")))  # a source that does not say is a camera
    assert not is_live(file)
    assert frame_overflow(live=True, offline=False) is Overflow.DROP_OLDEST
    assert frame_overflow(live=False, offline=False) is Overflow.BLOCK
    assert frame_overflow(live=True, offline=True) is Overflow.BLOCK


def test_lfr_run_processes_every_frame_of_a_file_played_as_fast_as_it_decodes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from paths import PEOPLE

    from lfr.cli import main
    from lfr.vision.defaults import default_analyzer
    from lfr.watchlist import build_watchlist

    # Decoding a 640x360 frame takes a fraction of detecting it: a keep-newest channel of two
    # frames would drop most of them (it did before non-live sources got a blocking channel).
    clip = make_clip(tmp_path / "recorded.mp4", n=300, fps=25, size=(640, 360))
    with av.open(str(clip)) as container:
        decoded = sum(1 for _ in container.decode(video=0))  # counted independently
    assert decoded == 300
    people = tmp_path / "people"
    shutil.copytree(PEOPLE / "obama", people / "obama")
    build_watchlist(people, tmp_path / "bundle", default_analyzer())
    config = tmp_path / "site.toml"
    config.write_text(
        f'name = "recorded"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[watchlist]\nbundle = "{tmp_path / "bundle"}"\n'
        f'[[cameras]]\nname = "recorded"\nurl = "{clip}"\nrealtime = false\n'
        '[pipeline]\nframe_queue = 2\n[[notifiers]]\nkind = "jsonl"\n'
    )
    assert main(["run", str(config), "--once", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)["summary"]
    assert summary["frames"] == decoded
    assert summary["dropped_frames"] == 0
    camera = summary["cameras"]["recorded"]
    assert camera["frames_emitted"] == decoded and camera["dropped_frames"] == 0


@pytest.mark.anyio
async def test_a_file_read_as_fast_as_it_decodes_is_captured_on_its_own_clock(
    clips: dict[str, Path],
) -> None:
    """Capture times of a realtime=false file follow its timestamps (25 fps: 40 ms apart), not
    how fast this machine reads it: the tracker's time limits then decide the same way on a
    loaded machine and an idle one. A loop keeps the clock going forward."""
    with anyio.fail_after(60):
        # a consumer that takes 60 ms a frame: slower than the clip's 40 ms
        run = await play(settings(clips["mp4"], loop=True), capacity=1, delay_s=0.06,
                         stop_after=N_FRAMES + 10, keep=N_FRAMES + 10)
    steps = np.diff([f.mono_time for f in run.frames])
    within = np.concatenate([steps[: N_FRAMES - 1], steps[N_FRAMES:]])
    assert np.allclose(within, 0.04, atol=1e-6)  # on the file's clock, not the reader's
    assert steps[N_FRAMES - 1] > 0  # the loop's first frame comes after the last one
