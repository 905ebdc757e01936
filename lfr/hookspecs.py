"""The plugin API: hooks through which backends are registered.

Each hook receives a ``register`` callback and is called once, at start-up (never per frame).
Built-in backends register through these same hooks (see ``lfr.builtin``).

    register(name, factory, settings=SettingsStruct)

``settings`` is a msgspec Struct declared with ``tag_field="kind", tag=name`` (see
``lfr.plugins.BackendSettings``): the deployment's config section for that backend is validated
against it, so a typo in a plugin's settings is reported like one in lfr's own.
``factory(settings, context)`` builds the backend; ``context`` is a ``lfr.plugins.BuildContext``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from lfr.plugins import Register

PROJECT = "lfr"
#: Bumped when a hook or a backend protocol changes incompatibly; plugins declare what they need.
PLUGIN_API_VERSION = 1

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def lfr_register_detectors(register: Register) -> None:
    """Register face detectors: objects with ``detect(image_bgr, score_threshold=None)``."""


@hookspec
def lfr_register_embedders(register: Register) -> None:
    """Register face embedders: objects with ``dim`` and ``embed(aligned_faces) -> ndarray``."""


@hookspec
def lfr_register_index_backends(register: Register) -> None:
    """Register watchlist index backends: ``build(vectors)``, ``search(queries, k)``."""


@hookspec
def lfr_register_notifiers(register: Register) -> None:
    """Register notifiers: ``async deliver(alert)`` (idempotent by ``alert.id``), ``aclose()``."""
