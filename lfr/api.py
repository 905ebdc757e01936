"""The public plugin API: everything a plugin author imports, in one place (docs/plugins.md).

    from lfr.api import BackendSettings, BuildContext, Register, hookimpl

Stable within a plugin API version (``PLUGIN_API_VERSION``); a plugin declares the versions it was
written for with ``LFR_PLUGIN_API = 1`` in its module, and lfr skips (and reports) one it cannot
load. The protocols are ``typing.runtime_checkable``: ``isinstance(obj, Detector)`` checks that
the members exist (lfr checks the same when it builds a backend).

docs/plugins.md's "Reference" lists every field, signature and threading rule of what is here
(tests/test_plugin_reference.py keeps the two in step).

This module is a leaf: it imports nothing from lfr but ``lfr.messages`` (itself a leaf), so lfr's
own modules import their protocols from here and a plugin importing it pulls in no pipeline.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import msgspec
import numpy as np
import pluggy

from lfr.messages import Alert, Detection, Frame

PROJECT = "lfr"  # the pluggy project name and the entry-point group
#: Bumped when a hook or a backend protocol changes incompatibly; plugins declare what they need.
PLUGIN_API_VERSION = 1
#: The versions this lfr can load (older ones stay here while a compatibility shim exists).
SUPPORTED_PLUGIN_API: frozenset[int] = frozenset({1})

hookimpl = pluggy.HookimplMarker(PROJECT)


class ConfigError(Exception):
    """A configuration problem, already phrased as ``file: $.path: message``."""


def validation_message(exc: msgspec.ValidationError, where: str) -> str:
    """msgspec's "problem - at `$.x.y`" as "WHERE.x.y: problem". ``where`` names the document
    (``"lfr.toml: $"``) or the part of it that was validated (``"lfr.toml: $.detector"``): every
    config, settings and data-file error in lfr reads the same way."""
    message = str(exc)
    text, sep, path = message.rpartition(" - at `")
    if not sep:
        return f"{where}: {message}"  # a problem with the document itself
    return f"{where}{path.rstrip('`')[1:]}: {text}"


class PluginError(ConfigError):
    """A plugin's backend could not be built, or broke its protocol; names the plugin."""


class BackendError(Exception):
    """A backend's call raised while running; the message names the backend and the plugin that
    provides it: "index backend 'broken' (plugin lfr-broken 0.1): search raised ValueError: ..."."""


# -- settings and registration -------------------------------------------------------------------

class BackendSettings(msgspec.Struct, forbid_unknown_fields=True, frozen=True, kw_only=True,
                      tag_field="kind"):
    """Base of every backend's settings; subclasses pass ``tag="<name>"``."""


class SourceBackendSettings(BackendSettings, frozen=True):
    """Base of a source backend's settings: every camera has a name (unique in a deployment)."""

    name: str


@dataclass(frozen=True)
class BuildContext:
    """What a factory may need besides its own settings."""

    data_dir: Path
    threads: int = 1
    # The config file's folder: a relative path in a backend's settings starts here, as every
    # path in a config does (resolve_path).
    config_dir: Path = field(default_factory=Path)

    def resolve_path(self, value: str) -> Path:
        """A path from a backend's settings: ``~`` expanded, relative to the config's folder."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.config_dir / path


Factory = Callable[[Any, BuildContext], Any]


class Register(Protocol):
    """The callback every register hook receives."""

    def __call__(self, name: str, factory: Factory, settings: type[BackendSettings]) -> None: ...


# -- the backend protocols -----------------------------------------------------------------------

@runtime_checkable
class Detector(Protocol):
    """Finds faces with 5 landmarks in a BGR uint8 image, in its pixel coordinates, best first.
    ``detect`` runs in a worker thread, one call at a time, the one object serving every camera."""

    name: str

    def detect(self, image: np.ndarray, score_threshold: float | None = None
               ) -> list[Detection]: ...


@runtime_checkable
class Embedder(Protocol):
    """Maps aligned 112x112 BGR uint8 faces to L2-normalised float32 vectors (N x dim).
    ``embed`` runs in a worker thread, one call at a time (possibly beside a ``detect``)."""

    name: str
    dim: int

    def embed(self, aligned_bgr: list[np.ndarray]) -> np.ndarray: ...


@runtime_checkable
class IndexBackend(Protocol):
    """Cosine search over L2-normalised float32 rows. ``build`` and ``search`` run on the event
    loop's thread, one call at a time: a slow search holds up the whole deployment."""

    name: str

    def build(self, vectors: np.ndarray) -> None:
        """Replace the contents with ``vectors`` (N x d float32, L2-normalised rows)."""
        ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores (Q x k' float32, exact cosine, best first) and row indices (Q x k' int64),
        k' = min(k, N): an empty index gives Q x 0 of each."""
        ...

    def __len__(self) -> int: ...


@runtime_checkable
class Notifier(Protocol):
    """Delivers alerts somewhere. ``name`` keys its delivery rows in the outbox (unique per run)."""

    name: str

    async def deliver(self, alert: Alert) -> None:
        """Deliver one alert; raise to signal failure (it is retried). Delivery is at least once:
        use ``alert.id`` as the idempotency key."""
        ...

    async def aclose(self) -> None: ...


class SourceState(StrEnum):
    """The state of a camera's stream (the actor running it has a state of its own)."""

    CONNECTING = "connecting"
    LIVE = "live"  # frames are flowing (a file being played too)
    RECONNECTING = "reconnecting"
    ENDED = "ended"  # end of a file, or stopped
    FAILED = "failed"  # a source that cannot be played; last_error says why


class SourceStats(msgspec.Struct, frozen=True, kw_only=True):
    """What a source may report about itself through its optional ``statistics()``.

    lfr adds what it measures itself (frames emitted, output rate, latency, restarts) and shows
    the result as the camera's row on the dashboard and in ``lfr run --json``.
    """

    state: SourceState
    url: str = ""  # what the camera reads, passwords redacted
    frames_decoded: int | None = None  # None: the same as the frames emitted
    frames_skipped: int = 0  # decoded but not emitted (an fps cap)
    reconnects: int = 0
    fps_in: float | None = None  # decoded frames per second; None: the output rate
    width: int | None = None
    height: int | None = None
    source_fps: float | None = None  # the stream's own frame rate
    errors: int = 0  # problems the source handled itself (a stall, a bad packet)
    last_error: str = ""


@runtime_checkable
class Source(Protocol):
    """A camera: ``frames()`` yields BGR frames (``Frame.camera`` is ``name``) until the source
    ends; raising is a crash (the supervisor calls ``frames()`` again, so a network source may
    reconnect there). ``stop()`` asks it to end soon; lfr cancels the iteration right after, so
    put cleanup in ``finally``.

    Optional: ``statistics() -> SourceStats``, a cheap snapshot (called from the event loop) of
    the source's own counters and state. A source that ends for good after a failure (a file that
    cannot be read) reports ``SourceState.FAILED`` and returns from ``frames()`` instead of
    raising, so it is not restarted in vain.

    Optional: ``live: bool`` (default True). A live source's frames perish (a camera will not
    wait): its frame channel keeps the newest and counts drops. A source with ``live = False``
    (recorded footage read as fast as it decodes) gets a blocking channel: every frame is
    processed, at the pipeline's pace.
    """

    name: str

    def frames(self) -> AsyncIterator[Frame]: ...

    def stop(self) -> None: ...


__all__ = [
    "PLUGIN_API_VERSION",
    "SUPPORTED_PLUGIN_API",
    "Alert",
    "BackendError",
    "BackendSettings",
    "BuildContext",
    "ConfigError",
    "Detection",
    "Detector",
    "Embedder",
    "Frame",
    "IndexBackend",
    "Notifier",
    "PluginError",
    "Register",
    "Source",
    "SourceBackendSettings",
    "SourceState",
    "SourceStats",
    "hookimpl",
]
