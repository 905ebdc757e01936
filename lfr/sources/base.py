"""What every video source shares: settings, states, the statistics snapshot and small helpers."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Annotated, Literal
from urllib.parse import urlsplit, urlunsplit

import msgspec
from msgspec import Meta

from lfr.api import SourceBackendSettings
from lfr.api import SourceState as SourceState  # defined in the plugin API
from lfr.runtime.actor import ActorStats

# Network sources are live: they reconnect forever instead of ending.
LIVE_SCHEMES = frozenset({"rtsp", "rtsps", "rtmp", "rtmps", "http", "https", "udp", "tcp", "srt"})


class SourceError(Exception):
    """A source that cannot be opened or read; the message names the camera and the URL."""


class SourceSettings(SourceBackendSettings, frozen=True, tag="video"):
    """One camera: a video file, or a live rtsp:// / http(s):// stream. The settings of the
    built-in source ``video``, the kind of every ``[[cameras]]`` entry that names none."""

    name: str
    url: str
    fps_cap: float | None = None  # emit at most this many frames per second (stream time)
    realtime: bool = False  # files: pace at the file's own frame rate
    loop: bool = False  # files: start again at the end
    open_timeout_s: float = 10.0
    read_timeout_s: float = 5.0  # live: no frame for this long is a stall, then reconnect
    reconnect_initial_s: float = 0.5
    reconnect_max_s: float = 30.0
    rtsp_transport: Literal["udp", "tcp"] = "tcp"
    options: dict[str, str] = msgspec.field(default_factory=dict)  # passed to av.open
    # The smallest face (box width, frame pixels) that must be found on this camera: YuNet
    # shrinks or tiles this camera's frames for it (lfr.vision.tiling). None: [detector]'s.
    min_face_px: Annotated[float, Meta(gt=0)] | None = None

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("name: must not be empty")
        if not self.url:
            raise ValueError("url: must not be empty")
        if self.fps_cap is not None and self.fps_cap <= 0:
            raise ValueError(f"fps_cap: must be > 0, got {self.fps_cap}")
        for field in ("open_timeout_s", "read_timeout_s", "reconnect_initial_s"):
            if getattr(self, field) <= 0:
                raise ValueError(f"{field}: must be > 0, got {getattr(self, field)}")
        if self.reconnect_max_s < self.reconnect_initial_s:
            raise ValueError(
                f"reconnect_max_s: must be >= reconnect_initial_s ({self.reconnect_initial_s}),"
                f" got {self.reconnect_max_s}"
            )

    def __repr__(self) -> str:
        # URLs of real cameras carry passwords: keep them out of logs and tracebacks.
        return f"SourceSettings(name={self.name!r}, url={redact_url(self.url)!r}, ...)"

    @property
    def live(self) -> bool:
        return is_live_url(self.url)


class CameraStats(ActorStats, frozen=True, kw_only=True):
    """`state` is the actor's (running, restarting, ...); `source_state` is the stream's."""

    url: str  # password redacted
    source_state: str
    fps_in: float  # decoded frames per second
    fps_out: float  # emitted frames per second
    frames_decoded: int
    frames_skipped: int  # by fps_cap
    frames_emitted: int
    reconnects: int
    width: int | None
    height: int | None
    source_fps: float | None


def is_live_url(url: str) -> bool:
    return urlsplit(url).scheme.lower() in LIVE_SCHEMES


# Query parameters whose values are credentials (compared lower-case, without - and _).
SECRET_QUERY_KEYS = frozenset({
    "password", "passwd", "pass", "pwd", "token", "accesstoken", "authtoken", "key", "apikey",
    "secret", "clientsecret", "auth", "authorization", "signature", "sig", "credential",
    "credentials", "session", "sessionid",
})


def _secret_query_key(key: str) -> bool:
    plain = key.lower().replace("-", "").replace("_", "")
    return plain in SECRET_QUERY_KEYS or plain.endswith(("password", "token", "secret", "apikey"))


def redact_url(url: str) -> str:
    """A camera URL fit to be written anywhere: user info and secret-looking query values masked.

    rtsp://admin:p@ss@cam/x -> rtsp://***@cam/x; https://apikey@cam -> https://***@cam;
    ?user=a&password=b&token=c -> ?user=a&password=***&token=***. Paths are kept.
    """
    parts = urlsplit(url)
    if not parts.scheme or not parts.netloc:
        return url  # a file path
    netloc = parts.netloc
    if "@" in netloc:  # the host follows the last @: a password may hold @ itself
        netloc = "***@" + netloc.rpartition("@")[2]
    query = parts.query
    if query:
        pairs = []
        for pair in query.split("&"):
            key, eq, _ = pair.partition("=")
            pairs.append(f"{key}=***" if eq and _secret_query_key(key) else pair)
        query = "&".join(pairs)
    return urlunsplit(parts._replace(netloc=netloc, query=query))


def backoff_delays(initial_s: float, max_s: float) -> Iterator[float]:
    """initial, 2x initial, 4x initial, ... capped at max_s, forever."""
    delay = initial_s
    while True:
        yield delay
        delay = min(delay * 2, max_s)
