"""Cameras shared out through a JetStream key-value bucket: a node holds a camera by a lease it
renews; compare-and-set on the key's revision decides every change.

The rules, with L = ``cluster.lease_s`` and H = ``cluster.heartbeat_s`` (every H a node renews
its leases and writes its heartbeat):

- A node takes a camera whose key is absent or released at once, and one held by another node
  only after it has itself seen that lease's revision unchanged for L (its own clock from when it
  first saw the revision, as Kubernetes' leader election does: no clocks are compared).
- A node stops a camera it could not renew for L - H (it checks every H), counted from when it
  sent its last renewal that succeeded. That renewal was stored after it was sent, so anyone
  who saw it waits longer than the holder runs: a camera never runs on two nodes at once
  (clocks running at about the same rate). A server away for less than L - H stops nothing;
  one away for longer stops every camera until it is back (safety over availability).
- A failed compare-and-set (another node wrote the key) means the lease is lost: the camera
  stops at once.
- With n nodes alive (a heartbeat within 2 H) a node holds at most ceil(cameras / n) cameras
  (more when nodes bounded by their capacity cannot take their part: ``spread_share``), and at
  most ``cluster.capacity``; over that it releases its surplus (after stopping it), under
  it it takes free or expired ones. Each node ranks cameras by a hash of (node, camera), so
  nodes starting together mostly reach for different cameras.
- No churn from a node that is merely late (a loaded machine): a node takes cameras only up to
  the share of the nodes *present* (a heartbeat within L, the time its cameras need to expire
  anyway), so it never takes what it would give back once the late node beats again; it gives up
  its surplus only when another node holds at least two cameras fewer (the move improves the
  spread by a whole camera); and it takes nothing while its own renewals are late.
- A renewal round writes every lease at once (one round trip, not one per camera), and reads of
  other nodes' heartbeats and leases go out together too.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
import msgspec

if TYPE_CHECKING:
    from lfr.cluster.bus import Bus
    from lfr.config import ClusterConfig

log = logging.getLogger("lfr.cluster.leases")


class Lease(msgspec.Struct, frozen=True):
    """A camera key's value; ``node`` empty: released."""

    node: str
    time: float  # wall clock of the write, for people reading the bucket; never compared


class Heartbeat(msgspec.Struct, frozen=True):
    """A node key's value."""

    node: str
    time: float  # wall clock of the write: alive while within 2 heartbeats of a reader's clock
    cameras: list[str]  # the cameras it runs now
    capacity: int | None
    heartbeat_s: float
    unpublished: int = 0  # alerts and decisions in its outbox waiting for the stream
    watchlist: dict[str, object] = msgspec.field(default_factory=dict)  # digest, people
    stopping: bool = False  # a clean stop: not alive from now on
    audit_public_key: str = ""  # PEM of the key that seals its audit log (lfr report --nats)
    renewal_s: float = 0.0  # how long its last lease renewal round took (bench/nodes.py)


_lease_decoder = msgspec.json.Decoder(Lease)
_heartbeat_decoder = msgspec.json.Decoder(Heartbeat)


def decode_lease(value: bytes | None) -> Lease | None:
    try:
        return _lease_decoder.decode(value or b"")
    except msgspec.DecodeError:
        return None


def decode_heartbeat(value: bytes | None) -> Heartbeat | None:
    try:
        return _heartbeat_decoder.decode(value or b"")
    except msgspec.DecodeError:
        return None


def is_alive(beat: Heartbeat, now_wall: float) -> bool:
    return not beat.stopping and now_wall - beat.time <= 2 * beat.heartbeat_s


def is_present(beat: Heartbeat, now_wall: float, lease_s: float) -> bool:
    """Alive, or late by less than a lease: its cameras cannot have expired yet, so nobody
    should count on taking them."""
    return not beat.stopping and now_wall - beat.time <= max(lease_s, 2 * beat.heartbeat_s)


T = TypeVar("T")

# Reads and writes in flight at once: enough for one round trip per round, without flooding
# the server when a node reads the leases of hundreds of cameras.
PARALLEL = 64


async def gather(calls: Iterable[Awaitable[T]]) -> list[T]:
    """Await these together (at most PARALLEL at a time), results in order; the first error
    propagates."""
    slots = asyncio.Semaphore(PARALLEL)

    async def one(call: Awaitable[T]) -> T:
        async with slots:
            return await call

    return list(await asyncio.gather(*(one(c) for c in calls)))


def spread_share(cameras: int, capacities: Sequence[int | None]) -> int:
    """The most cameras a node without a capacity should hold when these nodes (None: no
    bound) share the cameras: ceil(cameras / nodes) when none is bounded, more when bounded
    nodes cannot take their part (the smallest share at which all the cameras find a node)."""
    share = math.ceil(cameras / max(len(capacities), 1))
    while share < cameras and sum(share if c is None else min(share, c)
                                  for c in capacities) < cameras:
        share += 1
    return share


def _rank(node: str, camera: str) -> bytes:
    return hashlib.sha256(f"{node}\0{camera}".encode()).digest()


class CameraLeases:
    """One node's side of the camera leases. ``tick()`` every heartbeat; ``running()`` is what
    the node should run now; ``release_surplus()`` once the surplus has stopped."""

    def __init__(self, bus: Bus, node: str, cameras: Sequence[str], settings: ClusterConfig,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._bus, self.node, self.cameras = bus, node, list(cameras)
        self._settings, self._clock = settings, clock
        self._held: dict[str, int] = {}  # camera -> revision of our lease
        self._renewed: dict[str, float] = {}  # camera -> when the last good renewal was sent
        self._seen: dict[str, tuple[int, float]] = {}  # camera -> (revision, first seen)
        self._surplus: set[str] = set()  # held, to stop and release
        self._suspects: set[str] = set()  # cameras of nodes late with their heartbeat
        self._others: dict[str, tuple[int, int | None]] = {}  # present node -> (held, capacity)
        self._alive_capacities: list[int | None] = []  # of the other nodes alive
        self._writing = anyio.Lock()  # renewals, takes and releases: one at a time per camera
        self.alive_nodes = self.present_nodes = 1
        self.renewal_s = 0.0  # how long the last renewal round took

    async def register(self) -> None:
        """A released key for every camera of the config that has none yet, so a console
        lists the cameras nobody runs too."""
        from nats.js.errors import KeyWrongLastSequenceError

        assert self._bus.cameras is not None
        for camera in self.cameras:
            with contextlib.suppress(KeyWrongLastSequenceError):  # there already
                await self._bus.cameras.create(camera, self._value(""))

    def running(self) -> set[str]:
        return set(self._held) - self._surplus

    def held(self) -> set[str]:
        return set(self._held)

    def _drop(self, camera: str, why: str) -> None:
        log.warning("%s: camera %s stops: %s", self.node, camera, why)
        self._held.pop(camera, None)
        self._renewed.pop(camera, None)
        self._surplus.discard(camera)

    def _value(self, node: str) -> bytes:
        return msgspec.json.encode(Lease(node=node, time=time.time()))

    async def _cas(self, camera: str, revision: int | None) -> int | None:
        """Write our lease over ``revision`` (None: the key must not exist); the new revision,
        or None when another node wrote first. Connection errors propagate."""
        from nats.js.errors import KeyWrongLastSequenceError

        kv = self._bus.cameras
        assert kv is not None
        try:
            if revision is None:
                return int(await kv.create(camera, self._value(self.node)))
            return int(await kv.update(camera, self._value(self.node), last=revision))
        except KeyWrongLastSequenceError:
            return None

    async def renew(self) -> None:
        """Renew every lease held, all in one round trip; drop those lost to another node and
        those not renewed for a whole lease (the server away)."""
        # A heartbeat early: this runs once a heartbeat, so the camera has stopped by the time a
        # node that saw the last renewal may take it.
        limit = self._settings.lease_s - self._settings.heartbeat_s
        for camera in list(self._held):
            if self._clock() - self._renewed[camera] >= limit:
                self._drop(camera, f"lease not renewed for {limit:g} s")
        started = self._clock()
        async with self._writing:
            held = dict(self._held)
            results = await gather(self._renew_one(camera, revision)
                                   for camera, revision in held.items())
        for (camera, revision), (sent, new) in zip(held.items(), results, strict=True):
            if sent is None or self._held.get(camera) != revision:
                continue  # the server away (kept until the lease runs out), or dropped meanwhile
            if new is None:
                self._drop(camera, "its lease was taken by another node")
            else:
                self._held[camera], self._renewed[camera] = new, sent
        self.renewal_s = self._clock() - started

    async def _renew_one(self, camera: str, revision: int) -> tuple[float | None, int | None]:
        """(when the renewal was sent, the new revision or None when lost); (None, None) when
        the server could not be asked."""
        sent = self._clock()
        try:
            return sent, await self._cas(camera, revision)
        except Exception as exc:
            log.debug("%s: renewing %s failed: %s", self.node, camera, exc)
            return None, None

    def late(self) -> bool:
        """Some lease held has gone unrenewed for two heartbeats: this node is struggling (a
        loaded machine, a slow server) and may soon lose cameras, so it takes no more."""
        now = self._clock()
        return any(now - sent > 2 * self._settings.heartbeat_s
                   for sent in self._renewed.values())

    async def balance(self) -> None:
        """Count the nodes alive, then give up cameras over the fair share, or read the leases
        of the others and take free or expired ones up to it. A node at its share reads no
        lease: the bus's load grows with nodes + cameras, not nodes x cameras (a revision seen
        earlier stays a safe observation: unchanged since then means unrenewed since then).

        Two shares, so that a node late with its heartbeat moves nothing: the share of the
        nodes alive bounds what a node keeps, the (smaller or equal) share of the nodes present
        bounds what it takes."""

        assert self._bus.cameras is not None
        self.alive_nodes, self.present_nodes = await self.count_nodes()
        keep = self._share(self._alive_capacities)
        take = self._share([capacity for _, capacity in self._others.values()])
        running = sorted(self.running(), key=lambda c: _rank(self.node, c))
        revision: int | None
        if len(running) > keep and self._room_elsewhere(len(running)):
            self._surplus.update(running[keep:])
            log.info("%s: %d nodes alive, a share of %d: giving up %s", self.node,
                     self.alive_nodes, keep, sorted(running[keep:]))
            return
        if len(running) >= take or self.late():
            # A node late with its heartbeat may be dead: its leases' clocks start now, so its
            # cameras move a lease after its last renewal, not a lease after it is counted dead.
            await self._observe(self._suspects - set(self._held))
            return
        leases = await self._observe(set(self.cameras) - set(self._held))
        now = self._clock()
        wanted = take - len(running)
        for camera in sorted(self.cameras, key=lambda c: _rank(self.node, c)):
            if wanted <= 0:
                break
            if camera in self._held:
                continue
            found = leases[camera]
            revision = None  # no key yet
            if found is not None:
                revision, lease = found
                mine = lease is not None and lease.node == self.node
                free = lease is None or not lease.node
                expired = now - self._seen[camera][1] >= self._settings.lease_s
                # Our own name from before a restart: taken over by compare-and-set at once.
                if not (mine or free or expired):
                    continue
            async with self._writing:
                sent = self._clock()
                new = await self._cas(camera, revision)
                if new is not None:
                    log.info("%s: takes camera %s", self.node, camera)
                    self._held[camera], self._renewed[camera] = new, sent
                    wanted -= 1

    def _share(self, others: list[int | None]) -> int:
        """This node's share among itself and nodes of these capacities."""
        own = self._settings.capacity
        share = spread_share(len(self.cameras), [own, *others])
        return min(share, own) if own is not None else share

    def _room_elsewhere(self, held: int) -> bool:
        """Another node present holds at least two cameras fewer than ``held`` and has room
        under its capacity: giving one up improves the spread by a whole camera."""
        return any(count <= held - 2 and (capacity is None or count < capacity)
                   for count, capacity in self._others.values())

    async def _observe(self, cameras: set[str]) -> dict[str, tuple[int, Lease | None] | None]:
        """Read these cameras' leases (None: no key), noting when each revision was first
        seen."""
        from nats.js.errors import KeyNotFoundError

        assert self._bus.cameras is not None
        kv = self._bus.cameras

        async def read(camera: str) -> Any:
            with contextlib.suppress(KeyNotFoundError):
                return await kv.get(camera)
            return None

        names = sorted(cameras)
        leases: dict[str, tuple[int, Lease | None] | None] = {}
        for camera, entry in zip(names, await gather(read(c) for c in names), strict=True):
            if entry is None:
                leases[camera] = None
                continue
            seen = int(entry.revision or 0)
            leases[camera] = (seen, decode_lease(entry.value))
            if self._seen.get(camera, (None, 0.0))[0] != seen:
                self._seen[camera] = (seen, self._clock())  # after the read: never early
        return leases

    async def count_nodes(self) -> tuple[int, int]:
        """(nodes alive, nodes present), this one included; notes the cameras of nodes whose
        heartbeat is late (``_suspects``) and how many cameras each other node present holds."""
        from nats.js.errors import KeyNotFoundError

        nodes = self._bus.nodes
        assert nodes is not None
        names = [name for name in await self._bus.keys(self._bus.names.nodes_bucket)
                 if name != self.node]

        async def read(name: str) -> Heartbeat | None:
            with contextlib.suppress(KeyNotFoundError):  # deleted since the listing
                return decode_heartbeat((await nodes.get(name)).value)
            return None

        alive, present = 1, 1
        suspects: set[str] = set()
        on_time: set[str] = set()  # cameras listed by nodes on time with their heartbeat
        recently_late = False
        others: dict[str, tuple[int, int | None]] = {}
        capacities: list[int | None] = []
        now = time.time()
        for name, beat in zip(names, await gather(read(n) for n in names), strict=True):
            if beat is None:
                continue
            if is_alive(beat, now):
                alive += 1
                capacities.append(beat.capacity)
            if is_present(beat, now, self._settings.lease_s):
                present += 1
                others[name] = (len(beat.cameras), beat.capacity)
            late_s = now - beat.time
            if not is_alive(beat, now) or late_s > 1.5 * beat.heartbeat_s:
                suspects.update(beat.cameras)
                # Its heartbeat may not list a camera it took just before it died: until its
                # leases may have expired, every camera no node on time lists is a suspect.
                recently_late |= (not beat.stopping
                                  and late_s <= self._settings.lease_s + 2 * beat.heartbeat_s)
            else:
                on_time.update(beat.cameras)
        if recently_late:
            suspects.update(set(self.cameras) - on_time)
        self._suspects, self._others = suspects, others
        self._alive_capacities = capacities
        return alive, present

    async def release(self, cameras: set[str]) -> None:
        """Give these leases back (their cameras have stopped): released keys are free at once."""
        kv = self._bus.cameras
        assert kv is not None

        async def give_back(camera: str, revision: int) -> None:
            try:
                await kv.update(camera, self._value(""), last=revision)
            except Exception as exc:  # lost meanwhile, or the server away: it expires by itself
                log.debug("%s: releasing %s failed: %s", self.node, camera, exc)

        async with self._writing:  # not while a renewal of the same revision is in flight
            given = {camera: self._held[camera] for camera in sorted(cameras & set(self._held))}
            for camera in given:
                self._drop_quietly(camera)
            await gather(give_back(camera, revision) for camera, revision in given.items())

    def _drop_quietly(self, camera: str) -> None:
        self._held.pop(camera, None)
        self._renewed.pop(camera, None)
        self._surplus.discard(camera)

    def surplus(self) -> set[str]:
        return set(self._surplus)
