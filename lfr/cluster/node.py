"""``lfr node``: one node of a deployment spread over machines.

A node joins the deployment's bus (lfr.cluster.bus), holds its share of the cameras by leases
(lfr.cluster.leases), runs them as an ordinary ``Deployment`` over just those cameras, with its
records under ``data_dir/<node>/``, and publishes its alerts, decisions and audit records
(lfr.cluster.publisher). When the cameras it holds change (a node died, one joined, a lease ran
out) the running deployment is stopped, drained and started again over the new set, with the
models loaded once for the node's life. Cameras it gives up are released only after they have
stopped.
"""

from __future__ import annotations

import logging
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from lfr.cluster.bus import Bus, Names, check_token, connect
from lfr.cluster.leases import CameraLeases, Heartbeat
from lfr.cluster.publisher import Publisher
from lfr.config import Config
from lfr.deployment import Deployment, DeploymentView, RunSummary
from lfr.keys import load_data_key
from lfr.notify.outbox import Outbox
from lfr.plugins import Registry
from lfr.vision.analyzer import FaceAnalyzer

log = logging.getLogger("lfr.cluster.node")


def camera_names(config: Config) -> list[str]:
    """Every camera of the config, lfr's own and plugins', in [[cameras]] order."""
    own = iter(config.cameras)
    plugin = {c.position: str(c.settings.get("name")) for c in config.plugin_cameras}
    count = len(config.cameras) + len(config.plugin_cameras)
    return [plugin[i] if i in plugin else next(own).name for i in range(count)]


def with_cameras(config: Config, names: Iterable[str], data_dir: Path) -> Config:
    """``config`` running only the cameras named, its records in ``data_dir``."""
    keep = set(names)
    own = [c for c in config.cameras if c.name in keep]
    kept_plugins = []
    place = 0
    plugin = {c.position: c for c in config.plugin_cameras}
    own_iter = iter(config.cameras)
    for i in range(len(config.cameras) + len(config.plugin_cameras)):
        if i in plugin:
            entry = plugin[i]
            if str(entry.settings.get("name")) in keep:
                kept_plugins.append(msgspec.structs.replace(entry, position=place))
                place += 1
        elif next(own_iter).name in keep:
            place += 1
    return msgspec.structs.replace(config, cameras=own, plugin_cameras=kept_plugins,
                                   data_dir=str(data_dir))


class Node:
    """A node of ``config``'s deployment on the NATS server(s) at ``url``."""

    def __init__(self, config: Config, url: str, name: str, registry: Registry,
                 analyzer: FaceAnalyzer) -> None:
        self.config, self.url, self.name = config, url, check_token(name, "node name")
        for camera in camera_names(config):
            check_token(camera, f"camera name (in {config.source_file or '<config>'})")
        self.names = Names(config.name)
        self._registry, self._analyzer = registry, analyzer
        self.data_dir = config.resolved_data_dir() / name
        self._stop = anyio.Event()
        self._changed = anyio.Event()
        self.summaries: list[RunSummary] = []
        self._running: set[str] = set()
        self._watchlist: dict[str, object] = {}

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()

    async def run(self) -> None:
        settings = self.config.cluster
        nc = await connect(self.url, f"lfr-node-{self.name}",
                           on_state=lambda s: log.info("%s: NATS %s", self.name, s))
        try:
            bus = await Bus(nc, self.names).open(
                replicas=settings.replicas, duplicate_window_s=settings.duplicate_window_s)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            leases = CameraLeases(bus, self.name, camera_names(self.config), settings)
            await leases.register()
            with Outbox(self.data_dir, load_data_key(self.config.data_key_file())) as outbox:
                publisher = Publisher(bus, self.name, outbox, self.data_dir)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_signals)
                    tg.start_soon(self._keep_leases, bus, leases, outbox)
                    tg.start_soon(publisher.run)
                    await self._run_cameras(leases)
                    # Stopped: give every lease back and publish what is left, briefly.
                    await leases.release(leases.held())
                    await self._beat(bus, leases, outbox, stopping=True)
                    with anyio.move_on_after(settings.heartbeat_s * 2):
                        await publisher.flush()
                    tg.cancel_scope.cancel()
        finally:
            await nc.close()

    async def _run_cameras(self, leases: CameraLeases) -> None:
        while not self._stop.is_set():
            self._changed = anyio.Event()
            wanted = leases.running()
            if not wanted:
                await self._changed.wait()
                continue
            self._running = set(wanted)
            deployment = Deployment(with_cameras(self.config, wanted, self.data_dir),
                                    self._registry, analyzer=self._analyzer)
            log.info("%s: running cameras %s", self.name, sorted(wanted))
            summary = await deployment.run(handle_signals=False, services=[self._until_changed])
            self._running = set()
            self.summaries.append(summary)
            if deployment.watchlist is not None:
                self._watchlist = {"sha256": deployment.watchlist.digest(),
                                   "people": len(deployment.watchlist.persons)}
            # What was given up has stopped now: other nodes may take it.
            await leases.release(leases.surplus())

    async def _until_changed(self, view: DeploymentView) -> None:
        await self._changed.wait()
        view.stop()

    async def _keep_leases(self, bus: Bus, leases: CameraLeases, outbox: Outbox) -> None:
        # One heartbeat before the first take: nodes started together see each other first.
        await self._beat(bus, leases, outbox)
        await anyio.sleep(self.config.cluster.heartbeat_s)
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await leases.renew()
                await self._beat(bus, leases, outbox)
                await leases.balance()
            except Exception as exc:  # the server away: leases run out by themselves
                log.debug("%s: lease round failed: %s", self.name, exc)
            if leases.running() != self._running:
                self._changed.set()
            await anyio.sleep(max(0.0, self.config.cluster.heartbeat_s
                                  - (time.monotonic() - started)))

    async def _beat(self, bus: Bus, leases: CameraLeases, outbox: Outbox,
                    stopping: bool = False) -> None:
        assert bus.nodes is not None
        unpublished = await anyio.to_thread.run_sync(outbox.unpublished_count)
        beat = Heartbeat(node=self.name, time=time.time(), cameras=sorted(self._running),
                         capacity=self.config.cluster.capacity,
                         heartbeat_s=self.config.cluster.heartbeat_s, unpublished=unpublished,
                         watchlist=self._watchlist, stopping=stopping)
        try:
            await bus.nodes.put(self.name, msgspec.json.encode(beat))
        except Exception as exc:
            if stopping:  # the server away at the end: the heartbeat simply ages
                log.debug("%s: last heartbeat failed: %s", self.name, exc)
                return
            raise

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.warning("%s: %s: stopping its cameras and giving their leases back",
                            self.name, signal.Signals(signum).name)
                self.stop()
                return


def run_node(config: Config, url: str, name: str, registry: Registry,
             analyzer: FaceAnalyzer) -> list[Any]:
    """Run a node until SIGINT/SIGTERM; the summaries of its deployments, in order."""
    node = Node(config, url, name, registry, analyzer)
    anyio.run(node.run)
    return node.summaries
