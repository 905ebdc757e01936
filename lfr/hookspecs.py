"""The plugin API: hooks through which backends are registered (documented in docs/plugins.md).

Each hook receives a ``register`` callback and is called once, at start-up (never per frame).
Built-in backends register through these same hooks (see ``lfr.builtin``).

    register(name, factory, settings=SettingsStruct)

``settings`` is a msgspec Struct declared with ``tag=name`` on ``lfr.api.BackendSettings`` (or
``lfr.api.SourceBackendSettings`` for sources): the deployment's config section for that backend is
validated against it, so a typo in a plugin's settings is reported like one in lfr's own.
``factory(settings, context)`` builds the backend object; ``context`` is a ``lfr.api.BuildContext``.
The object must implement the protocol of its kind (``lfr.api``); lfr checks that when it builds it.

A plugin module (or object) may declare the plugin API versions it was written for,
``LFR_PLUGIN_API = 1`` (or a tuple of versions); a plugin that declares none of
``SUPPORTED_PLUGIN_API`` is reported and skipped rather than failing later in a hook.
"""

from __future__ import annotations

import pluggy

# hookimpl and the versions live in the leaf lfr.api; they are re-exported here for older imports.
from lfr.api import PLUGIN_API_VERSION, PROJECT, SUPPORTED_PLUGIN_API, Register, hookimpl

__all__ = ["PLUGIN_API_VERSION", "PROJECT", "SUPPORTED_PLUGIN_API", "hookimpl", "hookspec"]

hookspec = pluggy.HookspecMarker(PROJECT)


@hookspec
def lfr_register_detectors(register: Register) -> None:
    """Register face detectors (``lfr.api.Detector``): ``name`` and
    ``detect(image_bgr, score_threshold=None) -> list[Detection]``, boxes and 5 landmarks in the
    image's pixel coordinates, best first, scores in 0..1."""


@hookspec
def lfr_register_embedders(register: Register) -> None:
    """Register face embedders (``lfr.api.Embedder``): ``name``, ``dim`` and
    ``embed(aligned_faces) -> ndarray`` (N x dim float32, L2-normalised) of 112x112 BGR faces
    aligned to the ArcFace template."""


@hookspec
def lfr_register_index_backends(register: Register) -> None:
    """Register watchlist index backends (``lfr.api.IndexBackend``): ``name``, ``build(vectors)``,
    ``search(queries, k) -> (scores, rows)`` with exact cosine scores, best first, and ``len()``."""


@hookspec
def lfr_register_notifiers(register: Register) -> None:
    """Register notifiers (``lfr.api.Notifier``): ``name``, ``async deliver(alert)`` (raise to have
    it retried; ``alert.id`` is the idempotency key) and ``async aclose()``."""


@hookspec
def lfr_register_sources(register: Register) -> None:
    """Register frame sources (``lfr.api.Source``): ``name``, ``frames()`` (an async iterator of
    ``Frame``, ending when the source ends; raising restarts it) and ``stop()``. Settings subclass
    ``lfr.api.SourceBackendSettings`` (which has the camera's ``name``)."""
