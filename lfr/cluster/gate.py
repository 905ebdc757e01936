"""On a node, the deployment's stream comes before its notifiers: each notifier is wrapped so
that it delivers an alert only once the stream has acknowledged it (the outbox marks that,
lfr.cluster.publisher). While the server is away an attempt fails with "not in the stream yet"
and the notifier's own retries (with backoff, from the outbox) deliver it once it is. An alert
the stream holds as a further sighting of another's open alert (lfr.cluster.sightings) is not
delivered: the officer already has that person's alert."""

from __future__ import annotations

import logging
import time
from typing import Any

import anyio

from lfr.messages import Alert
from lfr.notify.outbox import Outbox
from lfr.plugins import BackendKind, BackendSettings, BuildContext, Registry

log = logging.getLogger("lfr.cluster.gate")

# How long one attempt waits for the stream before it fails (and is retried later).
WAIT_S = 2.0


class NotInStream(Exception):
    """The alert is not in the deployment's stream yet."""


class StreamGate:
    def __init__(self, inner: Any, outbox: Outbox, wait_s: float = WAIT_S) -> None:
        self.inner, self.name = inner, inner.name
        self._outbox, self._wait_s = outbox, wait_s

    async def deliver(self, alert: Alert) -> None:
        deadline = time.monotonic() + self._wait_s
        while not await anyio.to_thread.run_sync(self._outbox.is_published, alert.id):
            if time.monotonic() >= deadline:
                raise NotInStream(f"alert {alert.id} is not in the deployment's stream yet: "
                                  "delivered once it is")
            await anyio.sleep(0.1)
        into = await anyio.to_thread.run_sync(self._outbox.merged_into, alert.id)
        if into is not None and into != alert.id:
            log.info("%s: alert %s joined open alert %s as a sighting: not delivered",
                     self.name, alert.id, into)
            return
        await self.inner.deliver(alert)

    async def aclose(self) -> None:
        await self.inner.aclose()

    def __getattr__(self, name: str) -> Any:  # the notifier's own extras (statistics, ...)
        return getattr(self.inner, name)


class GatedRegistry(Registry):
    """``registry`` whose notifiers wait for the stream."""

    def __init__(self, registry: Registry, outbox: Outbox) -> None:
        super().__init__()
        self.__dict__.update(registry.__dict__)
        self._inner, self._outbox = registry, outbox

    def create(self, kind: BackendKind, settings: BackendSettings, context: BuildContext) -> Any:
        backend = self._inner.create(kind, settings, context)
        return StreamGate(backend, self._outbox) if kind == "notifier" else backend
