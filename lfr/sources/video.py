"""lfr's own camera source: decode a video file or a live stream with PyAV into BGR frames.

Decoding runs in worker threads, one frame per call, under a limiter of the camera's own (so many
cameras never exhaust anyio's default thread limiter); the event loop only paces and yields. A read
never outlives `read_timeout_s` on a live stream (FFmpeg's interrupt callback ends a blocked read),
so stopping or cancelling waits at most that long (an open in flight is abandoned), and the task
that opened a container closes it.

Behaviour at the end and on errors:
- File: at its end it starts again if `loop`, else the source ends (state ended, `frames()` returns
  and the camera actor closes its sender). A file that cannot be opened, or from which no frame can
  be decoded, is not retried (retrying cannot help): state failed, last_error says why, and
  `frames()` returns without raising so the supervisor does not restart it pointlessly.
- Live stream (rtsp://, http(s)://, ...): an open error, end of stream or a stall (no frame for
  `read_timeout_s`) reconnects with exponential backoff, forever, until stopped.
- A packet that fails to decode is counted in errors and skipped; the stream goes on.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator
from contextlib import aclosing
from typing import NamedTuple, TypeVar

import anyio
import av
import av.error
import numpy as np
from av.packet import Packet
from av.video.frame import VideoFrame

from lfr.api import SourceStats
from lfr.messages import Frame
from lfr.runtime.metrics import RateMeter
from lfr.sources.base import (
    SourceError,
    SourceSettings,
    SourceState,
    backoff_delays,
    redact_url,
)

log = logging.getLogger("lfr.sources")
T = TypeVar("T")

# A jump of the stream clock (backwards, or pacing off by more than this) restarts the fps cap and
# the pacing from the current frame instead of skipping or bursting to catch up.
_JUMP_S = 1.0
_EPSILON_S = 1e-3  # timestamps are rounded to the stream's time base


class _Picture(NamedTuple):
    image: np.ndarray
    wall_time: float
    mono_time: float
    media_time: float  # seconds, stream clock
    number: int  # decoded frames before this one in this container


class _Decoder:
    """One open container. Every method blocks: call them from one worker thread at a time."""

    def __init__(self, settings: SourceSettings, container: av.container.InputContainer) -> None:
        self._settings = settings
        self._where = f"{settings.name}: {redact_url(settings.url)!r}"
        self._container = container
        self._stream = container.streams.video[0]
        self._packets: Iterator[Packet] = container.demux(self._stream)
        self._pending: deque[VideoFrame] = deque()
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.source_fps = float(rate) if rate else None
        self.width: int | None = self._stream.codec_context.width or None
        self.height: int | None = self._stream.codec_context.height or None
        self._period = 1.0 / settings.fps_cap if settings.fps_cap else None
        self._due: float | None = None
        # Read by the actor between calls, never during one.
        self.decoded = 0
        self.skipped = 0
        self.errors: list[str] = []

    @classmethod
    def open(cls, settings: SourceSettings) -> _Decoder:
        shown = redact_url(settings.url)
        options = dict(settings.options)
        if settings.url.lower().startswith("rtsp"):
            options.setdefault("rtsp_transport", settings.rtsp_transport)
        timeout = (settings.open_timeout_s, settings.read_timeout_s) if settings.live else None
        no_answer = f"no answer within {settings.open_timeout_s} s"
        start = time.monotonic()
        try:
            container = av.open(settings.url, options=options, timeout=timeout)
        except av.error.ExitError:
            raise SourceError(f"{settings.name}: cannot open {shown!r}: {no_answer}") from None
        except av.error.FFmpegError as exc:
            # FFmpeg's RTSP demuxer reports its interrupted open as invalid data: say what it was.
            timed_out = timeout is not None and time.monotonic() - start >= timeout[0]
            reason = no_answer if timed_out else exc.strerror
            raise SourceError(f"{settings.name}: cannot open {shown!r}: {reason}") from None
        except OSError as exc:  # PyAV's own file handling
            reason = exc.strerror or str(exc)
            raise SourceError(f"{settings.name}: cannot open {shown!r}: {reason}") from None
        if not container.streams.video:
            container.close()
            raise SourceError(f"{settings.name}: {shown!r} has no video stream")
        if container.streams.video[0].codec_context is None:  # a codec FFmpeg cannot decode
            container.close()
            raise SourceError(f"{settings.name}: {shown!r}: no decoder for its video stream")
        return cls(settings, container)

    def read(self) -> _Picture | None:
        """The next frame that passes the fps cap, as BGR; None at the end of the stream."""
        last_frame = time.monotonic()
        while True:
            while not self._pending:
                if self._settings.live and time.monotonic() - last_frame > self._read_timeout:
                    raise self._stalled()
                try:
                    packet = next(self._packets)
                except StopIteration:
                    return None
                except av.error.ExitError:  # FFmpeg's read timeout fired
                    raise self._stalled() from None
                except av.error.FFmpegError as exc:
                    raise SourceError(f"{self._where}: {exc.strerror}") from None
                try:
                    self._pending.extend(self._stream.decode(packet))
                except av.error.FFmpegError as exc:
                    self.errors.append(f"{self._where}: cannot decode a packet: {exc.strerror}")
            frame = self._pending.popleft()
            last_frame = time.monotonic()
            number = self.decoded
            self.decoded += 1
            media_time = frame.time if frame.time is not None else number / (self.source_fps or 25)
            if not self._keep(media_time):
                self.skipped += 1  # never converted: the point of capping before conversion
                continue
            self.width, self.height = frame.width, frame.height
            image = frame.to_ndarray(format="bgr24")
            return _Picture(image, time.time(), time.monotonic(), media_time, number)

    def close(self) -> None:
        close = getattr(self._packets, "close", None)  # the demux generator frees its packet
        if close is not None:
            close()
        self._container.close()

    @property
    def _read_timeout(self) -> float:
        return self._settings.read_timeout_s

    def _stalled(self) -> SourceError:
        return SourceError(f"{self._where}: no frame for {self._read_timeout} s")

    def _keep(self, media_time: float) -> bool:
        """At most one frame per period of stream time; frames that come too soon are skipped."""
        if self._period is None:
            return True
        if self._due is None or media_time < self._due - self._period - _JUMP_S:
            self._due = media_time
        if media_time < self._due - _EPSILON_S:
            return False
        # max(): a source slower than the cap must not build up credit for a later burst.
        self._due = max(self._due + self._period, media_time)
        return True


class VideoSource:
    """lfr's own camera (``kind = "video"``, the kind of a ``[[cameras]]`` entry without one): the
    frames of one video file or live stream, in order, decoded with PyAV. A ``Source``, run by the
    camera actor like any plugin's.

    `Frame.index` counts every decoded frame of the source (skipped ones, earlier loops and earlier
    connections too), so it only ever increases.
    """

    def __init__(self, settings: SourceSettings) -> None:
        self.name = settings.name
        self.settings = settings
        self.source_state = SourceState.CONNECTING
        self.frames_decoded = 0
        self.frames_skipped = 0
        self.reconnects = 0
        self.errors = 0
        self.last_error = ""
        self.width: int | None = None
        self.height: int | None = None
        self.source_fps: float | None = None
        self._fps_in = RateMeter()
        self._stopping = False
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def live(self) -> bool:
        """Whether a frame not taken at once is lost: a stream, or a file played at its own rate
        (``realtime``) to stand in for one. A file played as fast as it decodes is not live:
        waiting loses nothing, so its frame channel blocks and every frame is processed."""
        return self.settings.live or self.settings.realtime

    def stop(self) -> None:
        """Ask the source to end soon; the actor cancels the iteration right after."""
        self._stopping = True

    def statistics(self) -> SourceStats:
        return SourceStats(
            state=self.source_state,
            url=redact_url(self.settings.url),
            frames_decoded=self.frames_decoded,
            frames_skipped=self.frames_skipped,
            reconnects=self.reconnects,
            fps_in=self._fps_in.rate(),
            width=self.width,
            height=self.height,
            source_fps=self.source_fps,
            errors=self.errors,
            last_error=self.last_error,
        )

    async def frames(self) -> AsyncIterator[Frame]:
        """Returns at the end of a file (or after `stop()`), and also, with state failed, when a
        file cannot be played: retrying could not help, so there is nothing to restart."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(1)
        self.source_state = SourceState.CONNECTING
        try:
            if self._stopping:
                return
            # aclosing: a generator closed at a yield closes the one it reads too, right away.
            async with aclosing(self._live() if self.settings.live else self._file()) as plays:
                async for frame in plays:
                    yield frame
        finally:
            if self.source_state is not SourceState.FAILED:
                self.source_state = SourceState.ENDED

    async def _file(self) -> AsyncGenerator[Frame, None]:
        while not self._stopping:
            before = self.frames_decoded
            try:
                async with aclosing(self._play()) as play:
                    async for frame in play:
                        yield frame
            except SourceError as exc:
                self._fail(str(exc))
                return
            if self.frames_decoded == before:
                self._fail(f"{self.name}: no frame decoded from {redact_url(self.settings.url)!r}")
                return
            if not self.settings.loop:
                return

    async def _live(self) -> AsyncGenerator[Frame, None]:
        s = self.settings
        delays = backoff_delays(s.reconnect_initial_s, s.reconnect_max_s)
        while not self._stopping:
            before = self.frames_decoded
            try:
                async with aclosing(self._play()) as play:
                    async for frame in play:
                        yield frame
                error = f"{self.name}: {redact_url(s.url)!r}: stream ended"
            except SourceError as exc:
                error = str(exc)
            self._error(error)
            if self.frames_decoded > before:  # it worked for a while: back to a short delay
                delays = backoff_delays(s.reconnect_initial_s, s.reconnect_max_s)
            self.source_state = SourceState.RECONNECTING
            delay = next(delays)
            log.warning("%s; reconnecting in %.1f s", error, delay)
            await anyio.sleep(delay)
            self.reconnects += 1

    async def _play(self) -> AsyncGenerator[Frame, None]:
        """Open the source once and yield its frames until its end; SourceError on failure."""
        # An open in flight is abandoned on cancel (it may take open_timeout_s); its container, if
        # any, is freed with the worker's result.
        decoder = await self._in_thread(_Decoder.open, self.settings, abandon=True)
        base_decoded, base_skipped = self.frames_decoded, self.frames_skipped
        paced = self.settings.realtime and not self.settings.live
        # Monotonic time of stream time 0. A paced file's frames are captured when played; a file
        # read as fast as it decodes is captured on its own clock (origin + media time), so the
        # tracker's time limits mean the same whatever the machine's speed or load, and an
        # offline run decides the same every time.
        origin: float | None = None
        last_capture = -float("inf")
        try:
            self.source_fps = decoder.source_fps
            self.width, self.height = decoder.width, decoder.height
            self.source_state = SourceState.LIVE
            while not self._stopping:
                try:
                    picture = await self._in_thread(decoder.read)
                finally:
                    self._take_counts(decoder, base_decoded, base_skipped)
                if picture is None:
                    return
                wall_time, mono_time = picture.wall_time, picture.mono_time
                if paced:
                    now = time.monotonic()
                    if origin is None or abs(origin + picture.media_time - now) > _JUMP_S:
                        origin = now - picture.media_time
                    await anyio.sleep(max(0.0, origin + picture.media_time - now))
                    wall_time, mono_time = time.time(), time.monotonic()  # its capture time
                elif not self.settings.live:
                    if origin is None or origin + picture.media_time <= last_capture:
                        # The first frame, or the file looped: its clock goes on from here.
                        origin = max(mono_time, last_capture + 1e-3) - picture.media_time
                    mono_time = last_capture = origin + picture.media_time
                yield Frame(
                    camera=self.name,
                    index=base_decoded + picture.number,
                    wall_time=wall_time,
                    mono_time=mono_time,
                    image=picture.image,
                )
        finally:
            with anyio.CancelScope(shield=True):
                await self._in_thread(decoder.close)

    async def _in_thread(self, func: Callable[..., T], *args: object, abandon: bool = False) -> T:
        return await anyio.to_thread.run_sync(
            func, *args, abandon_on_cancel=abandon, limiter=self._limiter
        )

    def _take_counts(self, decoder: _Decoder, base_decoded: int, base_skipped: int) -> None:
        decoded = base_decoded + decoder.decoded
        self._fps_in.mark(decoded - self.frames_decoded)
        self.frames_decoded = decoded
        self.frames_skipped = base_skipped + decoder.skipped
        self.width, self.height = decoder.width, decoder.height
        for error in decoder.errors:
            self._error(error, level=logging.DEBUG)
        decoder.errors.clear()

    def _error(self, message: str, level: int = logging.NOTSET) -> None:
        self.errors += 1
        self.last_error = message
        if level:
            log.log(level, "%s", message)

    def _fail(self, message: str) -> None:
        self._error(message, level=logging.ERROR)
        self.source_state = SourceState.FAILED
