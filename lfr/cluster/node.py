"""``lfr node``: one node of a deployment spread over machines.

A node joins the deployment's bus (lfr.cluster.bus), holds its share of the cameras by leases
(lfr.cluster.leases), runs them as an ordinary ``Deployment`` over just those cameras, with its
records under ``data_dir/<node>/``, and publishes its alerts, decisions and audit records
(lfr.cluster.publisher), one alert per person across the deployment (lfr.cluster.sightings).
When the cameras it holds change (a node died, one joined, a lease ran out) the camera taken
starts, or the camera lost stops, in the running deployment; its other cameras run on
undisturbed. A new watchlist version restarts the deployment over it, with the models loaded
once for the node's life. Cameras it gives up are released only after they have stopped.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import signal
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
import msgspec

from lfr.cluster import watchlist as watchlists
from lfr.cluster.bus import Bus, BusError, Names, check_token, connect
from lfr.cluster.credentials import Credentials
from lfr.cluster.gate import GatedRegistry
from lfr.cluster.leases import CameraLeases, Heartbeat
from lfr.cluster.publisher import Publisher
from lfr.cluster.sightings import OpenAlerts
from lfr.cluster.viewer import NodeViewers
from lfr.cluster.watchlist import Version
from lfr.config import Config, WatchlistConfig, resolve_backends
from lfr.deployment import CameraError, Deployment, DeploymentView, RunSummary, WatchlistSwitchError
from lfr.keys import load_data_key
from lfr.messages import Decision
from lfr.notify.outbox import Outbox
from lfr.plugins import BackendSettings, Registry
from lfr.sealed import DataKey
from lfr.users import Role
from lfr.vision.analyzer import FaceAnalyzer
from lfr.watchlist.bundle import destroy_bundle

log = logging.getLogger("lfr.cluster.node")


class DecisionRequest(msgspec.Struct, frozen=True):
    """What ``lfr decide`` sends the node that raised the alert."""

    alert_id: str
    decision: Decision
    by: str  # the person, as the console authenticated them
    role: Role
    note: str = ""


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
                 analyzer: FaceAnalyzer, credentials: Credentials | None = None) -> None:
        self._credentials = credentials
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
        # The published watchlist this node runs (lfr.cluster.watchlist): its version and local
        # copy; None before the first is loaded, or once destroyed.
        self._version: Version | None = None
        self._bundle: Path | None = None
        # Counts the watchlist changes the running deployment cannot take by switching (a
        # destroyed list; none running to switch): each stops it, to start again on the new one.
        self._restarts = 0
        self._destroyed: Version | None = None  # to audit once the cameras have stopped
        self._refused = 0  # the latest version the running cameras could not switch to
        self._published = anyio.Event()  # the store's current version changed
        self._last_bus_state = ""
        self._deployment: Deployment | None = None  # while one runs
        self._beat_now = anyio.Event()
        self._cameras_done = False  # stopping: no deployment runs again in this process
        self._data_key: DataKey | None = None  # loaded when the node joins
        self._viewers = NodeViewers(config)  # browsers watching its cameras (lfr console --web)
        # The outbox's backlog for the heartbeat, counted beside it (a slow count never delays
        # a renewal), in a thread of its own (never queued behind inference).
        self._unpublished = 0
        self._counting = anyio.CapacityLimiter(1)
        self._audit_key = ""  # the audit log's public key, once published

    def _bus_state(self, state: str) -> None:
        """NATS connection news, each once until it changes (a server away is retried
        twice a second)."""
        if state != self._last_bus_state:
            log.warning("%s: NATS %s", self.name, state)
            self._last_bus_state = state

    def stop(self) -> None:
        self._stop.set()
        self._changed.set()

    async def run(self) -> None:
        settings = self.config.cluster
        nc = await connect(self.url, f"lfr-node-{self.name}", credentials=self._credentials,
                           on_state=self._bus_state)
        try:
            bus = await Bus(nc, self.names).open(
                replicas=settings.replicas, duplicate_window_s=settings.duplicate_window_s,
                pictures_max_age_s=self.config.privacy.alert_retention_days * 86400.0)
            self.data_dir.mkdir(parents=True, exist_ok=True)
            leases = CameraLeases(bus, self.name, camera_names(self.config), settings)
            await leases.register()
            # The deployment's data key (lfr.cluster.credentials.with_deployment_key): it opens
            # the published bundles and seals this node's outbox.
            self._data_key = load_data_key(self.config.data_key_file())
            await self._first_watchlist(bus)
            with Outbox(self.data_dir, self._data_key) as outbox:
                open_alerts = None
                if settings.merge == "person":
                    assert bus.open_alerts is not None
                    open_alerts = OpenAlerts(bus.open_alerts, self.name, settings.merge_window_s)
                publisher = Publisher(bus, self.name, outbox, self.data_dir,
                                      open_alerts=open_alerts,
                                      audit_sighting=self._audit_sighting)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._watch_signals)
                    tg.start_soon(self._keep_leases, bus, leases, outbox)
                    tg.start_soon(publisher.run)
                    tg.start_soon(self._follow_watchlist, bus)
                    decisions = await nc.subscribe(self.names.decide(self.name),
                                                   cb=self._decide)
                    viewers = await nc.subscribe(self.names.viewer(self.name),
                                                 cb=self._viewers.answer)
                    await self._run_cameras(leases, GatedRegistry(self._registry, outbox))
                    self._cameras_done = True
                    await decisions.unsubscribe()
                    await viewers.unsubscribe()
                    # Stopped: give every lease back and publish what is left, briefly.
                    await leases.release(leases.held())
                    self._unpublished = await anyio.to_thread.run_sync(outbox.unpublished_count)
                    await self._beat(bus, leases, stopping=True)
                    with anyio.move_on_after(settings.heartbeat_s * 2):
                        await publisher.flush()
                    tg.cancel_scope.cancel()
        finally:
            await nc.close()

    async def _run_cameras(self, leases: CameraLeases, registry: Registry) -> None:
        """Run the cameras held in one deployment while the watchlist stays the same: a camera
        taken or given up starts or stops on its own, the others run on (``_follow_leases``).
        A new watchlist version is switched to between two frames (``_switch_running``); a
        destroyed one stops the deployment, which starts again on the next version. Notifiers
        (through ``registry``) deliver an alert only once the stream holds it."""
        sources = {str(getattr(s, "name", "")): s
                   for s in resolve_backends(self.config, registry).sources}
        while not self._stop.is_set():
            self._changed = anyio.Event()
            if self._destroyed is not None:
                await anyio.to_thread.run_sync(self._record_destroyed)
            bundle, generation = self._bundle, self._restarts
            if bundle is None:
                await self._changed.wait()
                continue
            self._deployment = None
            config = with_cameras(self.config, (), self.data_dir)
            config = msgspec.structs.replace(config, watchlist=WatchlistConfig(
                bundle=str(bundle)))
            deployment = Deployment(config, registry, analyzer=self._analyzer,
                                    watchlist_version=self._version.version
                                    if self._version else None, cameras_change=True)
            self._deployment = deployment
            if self._version is not None:  # what the heartbeat says this node runs
                self._watchlist = {"version": self._version.version,
                                   "sha256": self._version.sha256,
                                   "people": self._version.people}

            async def follow(view: DeploymentView, deployment: Deployment = deployment,
                             generation: int = generation) -> None:
                await self._follow_leases(view, deployment, leases, sources, generation)

            try:
                summary = await deployment.run(handle_signals=False,
                                               services=[follow, self._viewers.feed])
            finally:
                self._deployment = None
            self._running = set()
            self.summaries.append(summary)
            if not self._stop.is_set() and self._restarts == generation:
                # It ended by itself (its matcher failed for good): not again at once.
                log.warning("%s: its deployment ended by itself%s", self.name,
                            f" ({'; '.join(summary.failures)})" if summary.failures else "")
                with anyio.move_on_after(self.config.cluster.lease_s):
                    await self._changed.wait()
            # What was given up has stopped now: other nodes may take it.
            await leases.release(leases.surplus())

    async def _follow_leases(self, view: DeploymentView, deployment: Deployment,
                             leases: CameraLeases, sources: dict[str, BackendSettings],
                             generation: int) -> None:
        """A service of the node's deployment: starts the cameras whose lease it takes and
        stops those it loses or gives up, each on its own, until the node stops or the
        watchlist changes in a way the deployment cannot switch to (then it stops it). A
        surplus lease is released once its camera has stopped. A camera that cannot start is
        logged and not tried again while its lease is held; one whose source ended by itself
        is started again a lease later."""
        failed: set[str] = set()
        ended: dict[str, float] = {}  # camera -> when it was first seen ended
        settings = self.config.cluster
        while not self._stop.is_set() and self._restarts == generation:
            self._changed = anyio.Event()
            wanted = leases.running()
            failed &= wanted
            now = time.monotonic()
            for name in deployment.ended_cameras():
                if now - ended.setdefault(name, now) >= settings.lease_s:
                    wanted.discard(name)  # stopped below, started again next round
            held = set(deployment.camera_names())
            async with anyio.create_task_group() as stopping:
                for name in sorted(held - wanted):
                    stopping.start_soon(deployment.remove_camera, name)
            await leases.release(leases.surplus() - set(deployment.camera_names()))
            for name in held - wanted:
                ended.pop(name, None)
                await self._viewers.close_camera(name)
            for name in sorted(wanted - held - failed):
                try:
                    await deployment.add_camera(sources[name])
                except CameraError as exc:
                    log.error("%s: %s", self.name, exc)
                    failed.add(name)
                except RuntimeError:  # the deployment is stopping
                    return
            running = set(deployment.camera_names()) - deployment.ended_cameras()
            if running != self._running:
                self._running = running
                self._beat_now.set()  # the heartbeat says so at once
            with anyio.move_on_after(settings.heartbeat_s):
                await self._changed.wait()
        view.stop()

    # -- the watchlist ---------------------------------------------------------------------

    async def _first_watchlist(self, bus: Bus) -> None:
        """The store's version; when it has none, the config's bundle, published by the first
        node to get there (compare-and-set): the others load that one."""
        version, _ = await watchlists.current(bus)
        configured = self.config.watchlist
        if version is None and configured is not None:
            bundle = self.config.resolve_path(configured.bundle)
            if (bundle / "manifest.json").is_file():
                assert self._data_key is not None
                try:
                    published = await watchlists.publish(
                        bus, bundle, self.name, only_if_none=True,
                        key_id=self._data_key.fingerprint)
                except watchlists.WatchlistError as exc:  # sealed with another key
                    raise BusError(str(exc)) from None
                if published is not None:
                    log.info("%s: published %s as watchlist version %d", self.name, bundle,
                             published.version)
                version, _ = await watchlists.current(bus)
        if version is None:
            raise BusError(f"deployment {self.names.deployment!r}: no watchlist published and "
                           "none in the config's [watchlist] bundle: publish one (lfr watchlist "
                           "publish BUNDLE --nats URL --deployment NAME)")
        try:
            await self._load(bus, version)
        except watchlists.WatchlistError as exc:  # no key, another key: the node cannot run
            raise BusError(str(exc)) from None

    async def _follow_watchlist(self, bus: Bus) -> None:
        """A newer version is loaded as soon as the store says one was published (and at every
        heartbeat, should that word be lost with the server), then the running cameras switch
        to it between two frames (none stops); with none running, the next start runs it."""
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._watch_published, bus)
            await self._follow_versions(bus)

    async def _watch_published(self, bus: Bus) -> None:
        assert bus.watchlist is not None
        try:
            watcher = await bus.watchlist.watch(watchlists.CURRENT)
            async for entry in watcher:
                if entry is not None:  # None: the end of what was there when the watch began
                    self._published.set()
        except Exception as exc:  # no watch: the heartbeat's look at the store still comes
            log.debug("%s: not watching the watchlist store: %s", self.name, exc)

    async def _follow_versions(self, bus: Bus) -> None:
        while True:
            with anyio.move_on_after(self.config.cluster.heartbeat_s):
                await self._published.wait()
            self._published = anyio.Event()
            try:
                version, _ = await watchlists.current(bus)
                newest = max(self._version.version if self._version else 0, self._refused)
                if version is not None and version.version > newest:
                    previous = self._bundle, self._version
                    await self._load(bus, version)
                    if not await self._switch_running():
                        self._bundle, self._version = previous
                        self._refused = version.version
            except Exception as exc:  # the server away, a bad upload: keep the one in use
                log.warning("%s: watchlist not updated: %s", self.name, exc)

    async def _switch_running(self) -> bool:
        """The running deployment switches to the version just loaded, and the heartbeat says
        so once it has; False when it refused it (it runs the old one on). A destroyed version
        stops the cameras; a deployment not running (yet) starts on the new one."""
        deployment, version, bundle = self._deployment, self._version, self._bundle
        if deployment is None or version is None or version.destroyed or bundle is None:
            self._restarts += 1
            self._changed.set()
            return True
        try:
            await deployment.switch_watchlist(bundle, version.version)
        except WatchlistSwitchError as exc:
            from lfr.audit import Kind

            with contextlib.suppress(RuntimeError):  # stopped meanwhile: the log says why
                deployment.view.record_setting(Kind.WATCHLIST_REFUSED, {
                    "version": version.version, "sha256": version.sha256,
                    "operator": version.by, "node": self.name, "error": str(exc)})
            log.error("%s: watchlist version %d refused: %s", self.name, version.version, exc)
            return False
        except RuntimeError:  # starting or stopping: started again, on the new one
            self._restarts += 1
            self._changed.set()
            return True
        self._watchlist = {"version": version.version, "sha256": version.sha256,
                           "people": version.people}
        self._beat_now.set()
        return True

    async def _load(self, bus: Bus, version: Version) -> None:
        if version.destroyed:
            self._bundle, self._version, self._destroyed = None, version, version
            self._watchlist = {"version": version.version, "destroyed": True}
            log.warning("%s: watchlist destroyed by %s: cameras stop", self.name, version.by)
            return
        copies = self.data_dir / "watchlists"
        bundle = await watchlists.fetch(bus, version, copies / f"v{version.version}",
                                        key=self._data_key)
        self._bundle, self._version = bundle, version
        log.info("%s: watchlist version %d loaded", self.name, version.version)

    def _record_destroyed(self) -> None:
        """The cameras have stopped: delete this node's copies and audit it."""
        from lfr.audit import AuditLog, Kind

        version, self._destroyed = self._destroyed, None
        assert version is not None
        copies = self.data_dir / "watchlists"
        removed = sorted(p.name for p in copies.iterdir()) if copies.is_dir() else []
        for path in copies.iterdir() if copies.is_dir() else []:
            if (path / "manifest.json").is_file():
                destroy_bundle(path)
            else:
                shutil.rmtree(path, ignore_errors=True)
        with AuditLog(self.data_dir, **self.config.audit_log_options()) as audit:
            audit.append(Kind.WATCHLIST_DESTROYED, {
                "version": version.version, "operator": version.by, "node": self.name,
                "copies": removed})

    async def _decide(self, msg: Any) -> None:
        """A console's request to record a decision on one of this node's alerts: recorded
        like the dashboard's (outbox, audit log with who decided), then published to the
        stream by the publisher. The console authenticated the person; the bus's permissions
        say only consoles may ask."""
        from lfr.decisions import AlreadyDecided, NotAllowed
        from lfr.users import Principal

        try:
            request = msgspec.json.decode(msg.data, type=DecisionRequest)
            deployment = self._deployment
            if deployment is None:
                raise RuntimeError(f"node {self.name} runs no camera right now: try again")
            adjudication = deployment.view.adjudicate(
                request.alert_id, request.decision,
                Principal(name=request.by, role=request.role), request.note)
            reply: dict[str, Any] = {"ok": True, "node": self.name,
                                     "decision": msgspec.to_builtins(adjudication)}
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            reply = {"ok": False, "error": f"not a decision request: {exc}"}
        except KeyError as exc:
            reply = {"ok": False, "error": str(exc.args[0]) if exc.args else str(exc)}
        except (RuntimeError, ValueError, NotAllowed, AlreadyDecided) as exc:
            reply = {"ok": False, "error": str(exc)}
        await msg.respond(msgspec.json.encode(reply))

    def _audit_sighting(self, record: dict[str, Any]) -> bool:
        """A ``sighting`` audit record in the running deployment's log; False when none runs
        (the publisher writes it once one does). Stopping, the node writes it itself."""
        from lfr.audit import AuditLog, Kind

        deployment = self._deployment
        if deployment is None:
            if not self._cameras_done:
                return False
            with AuditLog(self.data_dir, **self.config.audit_log_options()) as audit:
                audit.append(Kind.SIGHTING, record)
            return True
        try:
            deployment.view.record_setting(Kind.SIGHTING, record)
        except RuntimeError:  # stopping or not started yet
            return False
        return True

    async def _keep_leases(self, bus: Bus, leases: CameraLeases, outbox: Outbox) -> None:
        """Renewals on a clock of their own, never behind balancing or anything else; the
        heartbeat goes out with them."""
        # One heartbeat before the first take: nodes started together see each other first.
        self._unpublished = await anyio.to_thread.run_sync(outbox.unpublished_count,
                                                           limiter=self._counting)
        await self._beat(bus, leases)
        await anyio.sleep(self.config.cluster.heartbeat_s)
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._renew_leases, bus, leases)
            tg.start_soon(self._count_unpublished, outbox)
            await self._balance_leases(bus, leases)
            tg.cancel_scope.cancel()

    async def _renew_leases(self, bus: Bus, leases: CameraLeases) -> None:
        """Every heartbeat: renew every lease and write the heartbeat, together (one round
        trip). A lease that could not be renewed for lease_s - heartbeat_s stops its camera."""
        heartbeat_s = self.config.cluster.heartbeat_s
        next_round = time.monotonic()
        while not self._stop.is_set():
            async with anyio.create_task_group() as tg:
                tg.start_soon(leases.renew)  # a lease not renewed (the server away) runs out
                tg.start_soon(self._beat_or_log, bus, leases)
            if leases.running() != self._running:
                self._changed.set()
            # On a fixed beat: a slow round is followed by the next one at once.
            next_round = max(next_round + heartbeat_s, time.monotonic())
            await anyio.sleep(max(0.0, next_round - time.monotonic()))

    async def _balance_leases(self, bus: Bus, leases: CameraLeases) -> None:
        """Every heartbeat: take or give up cameras towards the fair share; at once when the
        cameras running have changed (the heartbeat says so first, without waiting)."""
        heartbeat_s = self.config.cluster.heartbeat_s
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                await leases.balance()
            except Exception as exc:  # the server away: the next round retries
                log.debug("%s: lease balance failed: %s", self.name, exc)
            if leases.running() != self._running:
                self._changed.set()
            with anyio.move_on_after(max(0.0, heartbeat_s - (time.monotonic() - started))):
                await self._beat_now.wait()
            if self._beat_now.is_set():
                self._beat_now = anyio.Event()
                await self._beat_or_log(bus, leases)

    async def _beat_or_log(self, bus: Bus, leases: CameraLeases) -> None:
        try:
            await self._beat(bus, leases)
        except Exception as exc:  # the server away: the heartbeat simply ages
            log.debug("%s: heartbeat failed: %s", self.name, exc)

    async def _count_unpublished(self, outbox: Outbox) -> None:
        while True:
            await anyio.sleep(self.config.cluster.heartbeat_s)
            self._unpublished = await anyio.to_thread.run_sync(outbox.unpublished_count,
                                                               limiter=self._counting)

    async def _beat(self, bus: Bus, leases: CameraLeases, stopping: bool = False) -> None:
        assert bus.nodes is not None
        beat = Heartbeat(node=self.name, time=time.time(), cameras=sorted(self._running),
                         capacity=self.config.cluster.capacity,
                         heartbeat_s=self.config.cluster.heartbeat_s,
                         unpublished=self._unpublished, watchlist=self._watchlist,
                         stopping=stopping, audit_public_key=self._public_key(),
                         renewal_s=round(leases.renewal_s, 4))
        try:
            await bus.nodes.put(self.name, msgspec.json.encode(beat))
        except Exception as exc:
            if stopping:  # the server away at the end: the heartbeat simply ages
                log.debug("%s: last heartbeat failed: %s", self.name, exc)
                return
            raise

    def _public_key(self) -> str:
        """The audit log's public key, published beside it once a deployment has run."""
        from lfr.keys import PUBLIC_KEY_NAME

        if not self._audit_key:  # read once it is there: it does not change
            published = self.data_dir / PUBLIC_KEY_NAME
            self._audit_key = published.read_text() if published.is_file() else ""
        return self._audit_key

    async def _watch_signals(self) -> None:
        with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
            async for signum in signals:
                log.warning("%s: %s: stopping its cameras and giving their leases back",
                            self.name, signal.Signals(signum).name)
                self.stop()
                return


def run_node(config: Config, url: str, name: str, registry: Registry,
             analyzer: FaceAnalyzer, credentials: Credentials | None = None) -> list[Any]:
    """Run a node until SIGINT/SIGTERM; the summaries of its deployments, in order."""
    node = Node(config, url, name, registry, analyzer, credentials)
    anyio.run(node.run)
    return node.summaries
