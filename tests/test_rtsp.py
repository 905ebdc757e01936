"""Camera faults against a real RTSP server: Debian's rtsp-server-perl fed by ffmpeg.

The server only speaks RTP over UDP: the RTSP control connection is TCP and the media arrives on
UDP ports the client names in SETUP. Each test runs an RTSP camera beside a file camera and checks
that the RTSP camera notices the fault within its read timeout, reconnects with backoff, comes back
with frame indices that keep increasing, and that the file camera never notices anything.

Faults: the server killed and restarted; the stream stalling without closing (the ffmpeg feeder
SIGSTOPped, then SIGCONTed); the network path cut, by a proxy in the test that relays the TCP
control connection and the UDP media (rewriting the client ports of SETUP) and stops forwarding.
"""

from __future__ import annotations

import itertools
import random
import re
import signal
import socket
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager, suppress
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import pytest
from system_tools import require_tools

from lfr.messages import Frame
from lfr.pipeline.camera import SourceActor
from lfr.runtime import Overflow, Supervisor, open_channel
from lfr.runtime.channels import Sender
from lfr.sources import SourceSettings, SourceState, VideoSource

pytestmark = [pytest.mark.slow, pytest.mark.anyio]

READ_TIMEOUT_S = 2.0
OPEN_TIMEOUT_S = 2.0
SLACK_S = 6.0  # scheduling on a loaded 2-core machine; never a tight bound


# --- processes ---------------------------------------------------------------------------------


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_udp_base(span: int = 40) -> int:
    """An even port where `span` UDP ports are free (the server hands out RTP ports from it)."""
    for _ in range(200):
        base = random.randrange(30000, 60000, 2)
        sockets: list[socket.socket] = []
        try:
            for port in range(base, base + span):
                s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                sockets.append(s)
                s.bind(("127.0.0.1", port))
            return base
        except OSError:
            continue
        finally:
            for s in sockets:
                s.close()
    raise RuntimeError("no free UDP port range")


@pytest.fixture(autouse=True, scope="module")
def _system_tools() -> None:
    require_tools("ffmpeg", "rtsp-server-perl")


@pytest.fixture(scope="module")
def clip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 s of 320x240 H.264 at 25 fps with a keyframe every 0.5 s (a reconnect decodes soon)."""
    path = tmp_path_factory.mktemp("rtsp") / "clip.mp4"
    subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-y",
            "-f",
            "lavfi",
            "-i",
            "testsrc=size=320x240:rate=25",
            "-t",
            "4",
            "-c:v",
            "libx264",
            "-g",
            "12",
            "-bf",
            "0",
            "-pix_fmt",
            "yuv420p",
            str(path),
        ],
        check=True,
        timeout=60,
    )
    return path


class Rtsp:
    """rtsp-server-perl and its ffmpeg feeder, (re)startable on fixed ports."""

    def __init__(self, clip: Path, logs: Path) -> None:
        self.clip = clip
        self.logs = logs
        self.client_port = free_tcp_port()
        self.source_port = free_tcp_port()
        self.rtp_base = free_udp_base()
        self.server: anyio.abc.Process | None = None
        self.feeder: anyio.abc.Process | None = None
        self._starts = 0

    @property
    def url(self) -> str:
        return f"rtsp://127.0.0.1:{self.client_port}/cam1"

    async def _spawn(self, command: list[str], name: str) -> anyio.abc.Process:
        self._starts += 1
        log = (self.logs / f"{name}-{self._starts}.log").open("wb")
        try:
            return await anyio.open_process(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
            )
        finally:
            log.close()  # the child has its own copy

    async def start(self) -> None:
        self.server = await self._spawn(
            [
                "rtsp-server-perl",
                "--clientport",
                str(self.client_port),
                "--serverport",
                str(self.source_port),
                "--client_listen_address",
                "127.0.0.1",
                "--source_listen_address",
                "127.0.0.1",
                "--rtp_start_port",
                str(self.rtp_base),
            ],
            "server",
        )
        await wait_listening(self.source_port)
        await wait_listening(self.client_port)
        self.feeder = await self._spawn(
            [
                "ffmpeg",
                "-v",
                "error",
                "-re",
                "-stream_loop",
                "-1",
                "-i",
                str(self.clip),
                "-an",
                "-c:v",
                "copy",
                "-f",
                "rtsp",
                "-rtsp_transport",
                "udp",
                f"rtsp://127.0.0.1:{self.source_port}/cam1",
            ],
            "feeder",
        )

    async def kill(self) -> None:
        for process in (self.feeder, self.server):
            if process is not None and process.returncode is None:
                with suppress(ProcessLookupError):
                    process.kill()
                with anyio.move_on_after(10, shield=True):
                    await process.wait()
        self.feeder = self.server = None

    def signal_feeder(self, signum: signal.Signals) -> None:
        assert self.feeder is not None
        self.feeder.send_signal(signum)


async def wait_listening(port: int, timeout_s: float = 20.0) -> None:
    with anyio.fail_after(timeout_s):
        while True:
            try:
                stream = await anyio.connect_tcp("127.0.0.1", port)
            except OSError:
                await anyio.sleep(0.05)
                continue
            await stream.aclose()
            return


@asynccontextmanager
async def rtsp_server(clip: Path, logs: Path) -> AsyncIterator[Rtsp]:
    server = Rtsp(clip, logs)
    try:
        await server.start()
        yield server
    finally:
        with anyio.CancelScope(shield=True):
            await server.kill()


# --- a proxy for the path: RTSP over TCP, RTP/RTCP over UDP -----------------------------------

_CLIENT_PORT = re.compile(rb"client_port=(\d+)-(\d+)")


class PathProxy:
    """Relays RTSP control (TCP) and the media (UDP) between the camera and the server.

    SETUP's ``client_port=a-b`` is rewritten to two UDP ports of the proxy, which forwards what
    arrives there to a and b. ``cut = True`` stops all forwarding (bytes and datagrams are dropped)
    and new connections are held open without an answer, like a dead network path.
    """

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut = False
        self.accepted: list[tuple[float, bool]] = []  # (monotonic time, cut at the time)
        self.port = 0

    async def serve(self, *, task_status: anyio.abc.TaskStatus[None]) -> None:
        listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
        self.port = listener.extra(anyio.abc.SocketAttribute.local_port)
        async with listener:
            task_status.started()
            await listener.serve(self._handle)

    async def _handle(self, client: anyio.abc.SocketStream) -> None:
        self.accepted.append((time.monotonic(), self.cut))
        async with client:
            if self.cut:
                with suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                    while True:  # swallow the request, never answer
                        await client.receive()
                return
            upstream = await anyio.connect_tcp("127.0.0.1", self.upstream_port)
            ports: dict[bytes, bytes] = {}  # proxy "pa-pb" -> camera "a-b"
            async with upstream, anyio.create_task_group() as tg:

                async def rewrite_request(head: bytes) -> bytes:
                    match = _CLIENT_PORT.search(head)
                    if match is None or not head.startswith(b"SETUP"):
                        return head
                    relays = [
                        await anyio.create_udp_socket(local_host="127.0.0.1") for _ in range(2)
                    ]
                    mine = [r.extra(anyio.abc.SocketAttribute.local_port) for r in relays]
                    for relay, target in zip(relays, (int(match[1]), int(match[2])), strict=True):
                        tg.start_soon(self._relay_udp, relay, target)
                    ours = f"{mine[0]}-{mine[1]}".encode()
                    ports[ours] = match[1] + b"-" + match[2]
                    return head.replace(match[0], b"client_port=" + ours)

                async def rewrite_response(head: bytes) -> bytes:
                    for ours, theirs in ports.items():
                        head = head.replace(b"client_port=" + ours, b"client_port=" + theirs)
                    return head

                async def pump(
                    src: anyio.abc.SocketStream,
                    dst: anyio.abc.SocketStream,
                    rewrite: Callable[[bytes], Any],
                ) -> None:
                    buffer = b""
                    with suppress(anyio.EndOfStream, anyio.BrokenResourceError, OSError):
                        while True:
                            buffer += await src.receive()
                            while (end := buffer.find(b"\r\n\r\n")) >= 0:
                                head = buffer[: end + 4]
                                length = re.search(rb"(?i)content-length:\s*(\d+)", head)
                                total = end + 4 + (int(length[1]) if length else 0)
                                if len(buffer) < total:
                                    break
                                message = await rewrite(head) + buffer[end + 4 : total]
                                buffer = buffer[total:]
                                if not self.cut:
                                    await dst.send(message)
                    tg.cancel_scope.cancel()  # one side hung up: close both

                tg.start_soon(pump, client, upstream, rewrite_request)
                tg.start_soon(pump, upstream, client, rewrite_response)

    async def _relay_udp(self, relay: anyio.abc.UDPSocket, port: int) -> None:
        async with relay:
            async for data, _ in relay:
                if not self.cut:
                    await relay.sendto(data, "127.0.0.1", port)


# --- cameras -----------------------------------------------------------------------------------


class Watched:
    """A supervised camera, its frames (index, arrival time) and its source states over time."""

    def __init__(self, settings: SourceSettings) -> None:
        send: Sender[Frame]
        send, self.receive = open_channel(f"frames:{settings.name}", 4, Overflow.DROP_OLDEST)
        self.camera = SourceActor(VideoSource(settings), send)
        self.frames: list[tuple[int, float]] = []
        self.states: list[tuple[float, str]] = []

    async def consume(self) -> None:
        async with self.receive:
            async for frame in self.receive:
                self.frames.append((frame.index, time.monotonic()))

    async def watch_states(self) -> None:
        while True:
            state = self.camera.statistics().source_state
            if not self.states or self.states[-1][1] != state:
                self.states.append((time.monotonic(), state))
            await anyio.sleep(0.02)

    def frames_since(self, t: float) -> int:
        return sum(1 for _, at in self.frames if at >= t)

    def state_since(self, state: SourceState, t: float) -> float | None:
        """When the camera entered `state` at or after t."""
        return next((at for at, s in self.states if at >= t and s == state.value), None)

    def indices_increase(self) -> bool:
        indices = [i for i, _ in self.frames]
        return all(b > a for a, b in itertools.pairwise(indices))


async def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    try:
        with anyio.fail_after(timeout_s):
            while not predicate():  # noqa: ASYNC110 - polling a camera's counters is the point
                await anyio.sleep(0.05)
    except TimeoutError:
        raise AssertionError(f"timed out after {timeout_s} s waiting for {what}") from None


def rtsp_settings(url: str) -> SourceSettings:
    return SourceSettings(
        name="rtsp",
        url=url,
        rtsp_transport="udp",
        open_timeout_s=OPEN_TIMEOUT_S,
        read_timeout_s=READ_TIMEOUT_S,
        reconnect_initial_s=0.25,
        reconnect_max_s=2.0,
    )


@asynccontextmanager
async def cameras(rtsp_url: str, clip: Path) -> AsyncIterator[tuple[Watched, Watched]]:
    """The RTSP camera and a file camera (real time, looping) running side by side."""
    live = Watched(rtsp_settings(rtsp_url))
    local = Watched(SourceSettings(name="file", url=str(clip), realtime=True, loop=True))
    supervisor = Supervisor()
    async with anyio.create_task_group() as tg:
        for watched in (live, local):
            supervisor.start_soon(tg, watched.camera)
            tg.start_soon(watched.consume)
            tg.start_soon(watched.watch_states)
        try:
            yield live, local
        finally:
            live.camera.stop()
            local.camera.stop()
            with anyio.move_on_after(15, shield=True):
                while {live.camera.state.value, local.camera.state.value} != {"stopped"}:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()


def assert_file_camera_unaffected(local: Watched, since: float) -> None:
    stats = local.camera.statistics()
    assert (stats.reconnects, stats.errors, stats.restarts) == (0, 0, 0), stats
    assert [s for _, s in local.states] in (["live"], ["connecting", "live"]), local.states
    times = [at for _, at in local.frames if at >= since]
    assert len(times) > 25, len(times)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert max(gaps) < 2.0, max(gaps)  # 25 fps; generous for a loaded machine
    assert local.indices_increase()


async def live_frames(live: Watched, n: int, since: float, timeout_s: float, what: str) -> None:
    await wait_for(lambda: live.frames_since(since) >= n, timeout_s, what)


# --- the faults --------------------------------------------------------------------------------


async def test_server_killed_and_restarted(clip: Path, tmp_path: Path) -> None:
    with anyio.fail_after(120):
        async with (
            rtsp_server(clip, tmp_path) as server,
            cameras(server.url, clip) as (live, local),
        ):
            start = time.monotonic()
            await live_frames(live, 20, start, 30, "first RTSP frames")
            before = live.camera.statistics()
            assert before.source_state == "live" and before.width == 320

            killed = time.monotonic()
            await server.kill()
            await wait_for(
                lambda: live.state_since(SourceState.RECONNECTING, killed) is not None,
                READ_TIMEOUT_S + SLACK_S,
                "reconnecting after the server died",
            )
            noticed = live.state_since(SourceState.RECONNECTING, killed)
            assert noticed is not None and noticed - killed <= READ_TIMEOUT_S + SLACK_S
            await anyio.sleep(3)  # down for a while: reconnect attempts are refused
            assert live.camera.statistics().source_state == "reconnecting"
            assert "cannot open" in live.camera.statistics().last_error

            restarted = time.monotonic()
            await server.start()
            await live_frames(live, 20, restarted, 30, "RTSP frames after the restart")
            after = live.camera.statistics()
            assert after.source_state == "live"
            assert after.reconnects > before.reconnects
            assert live.indices_increase()  # indices continue across connections
            assert_file_camera_unaffected(local, start)


async def test_stall_without_closing_is_detected(clip: Path, tmp_path: Path) -> None:
    with anyio.fail_after(120):
        async with (
            rtsp_server(clip, tmp_path) as server,
            cameras(server.url, clip) as (live, local),
        ):
            start = time.monotonic()
            await live_frames(live, 20, start, 30, "first RTSP frames")
            reconnects = live.camera.statistics().reconnects

            stalled = time.monotonic()
            server.signal_feeder(signal.SIGSTOP)  # the server keeps the session open: no EOF
            try:
                await wait_for(
                    lambda: live.state_since(SourceState.RECONNECTING, stalled) is not None,
                    READ_TIMEOUT_S + SLACK_S,
                    "the stall to be noticed",
                )
                noticed = live.state_since(SourceState.RECONNECTING, stalled)
                assert noticed is not None
                assert READ_TIMEOUT_S * 0.8 <= noticed - stalled <= READ_TIMEOUT_S + SLACK_S
                assert f"no frame for {READ_TIMEOUT_S} s" in live.camera.statistics().last_error
                # Still stalled: it keeps trying (with backoff) and delivers nothing.
                await anyio.sleep(READ_TIMEOUT_S * 2)
                assert live.camera.statistics().source_state in ("reconnecting", "live")
                assert live.frames_since(noticed + 0.5) == 0
            finally:
                server.signal_feeder(signal.SIGCONT)
            resumed = time.monotonic()
            await live_frames(live, 20, resumed, 30, "RTSP frames after the stall")
            assert live.camera.statistics().reconnects > reconnects
            assert live.indices_increase()
            assert_file_camera_unaffected(local, start)


async def test_path_cut_and_restored(clip: Path, tmp_path: Path) -> None:
    with anyio.fail_after(150):
        async with rtsp_server(clip, tmp_path) as server, anyio.create_task_group() as proxies:
            proxy = PathProxy(server.client_port)
            await proxies.start(proxy.serve)
            url = f"rtsp://127.0.0.1:{proxy.port}/cam1"
            async with cameras(url, clip) as (live, local):
                start = time.monotonic()
                await live_frames(live, 20, start, 30, "first RTSP frames through the proxy")

                cut = time.monotonic()
                proxy.cut = True
                await wait_for(
                    lambda: live.state_since(SourceState.RECONNECTING, cut) is not None,
                    READ_TIMEOUT_S + SLACK_S,
                    "the cut to be noticed",
                )
                noticed = live.state_since(SourceState.RECONNECTING, cut)
                assert noticed is not None and noticed - cut <= READ_TIMEOUT_S + SLACK_S
                # Attempts during the cut hang until the open timeout, then back off for longer.
                await wait_for(
                    lambda: sum(c for _, c in proxy.accepted) >= 3,
                    40,
                    "three connection attempts during the cut",
                )
                attempts = [at for at, during_cut in proxy.accepted if during_cut]
                gaps = [b - a for a, b in itertools.pairwise(attempts)]
                assert all(g >= OPEN_TIMEOUT_S * 0.9 for g in gaps), gaps  # each open timed out
                assert gaps[-1] > gaps[0] + 0.2, gaps  # backoff grew (0.25 s, 0.5 s, 1 s, ...)
                assert live.camera.statistics().source_state in ("reconnecting", "connecting")
                last_error = live.camera.statistics().last_error
                assert f"cannot open '{url}': no answer within {OPEN_TIMEOUT_S} s" in last_error

                restored = time.monotonic()
                proxy.cut = False
                await live_frames(live, 20, restored, 30, "RTSP frames after the path is back")
                assert live.camera.statistics().source_state == "live"
                assert live.indices_increase()
                assert_file_camera_unaffected(local, start)
            proxies.cancel_scope.cancel()
