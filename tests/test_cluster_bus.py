"""The bus pieces of a deployment spread over nodes, against a real nats-server: alerts kept in
the outbox until the stream acknowledges them, no duplicate after a replay, camera leases shared
fairly and taken over when a node stops renewing."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import numpy as np
import pytest
from bundles import vector_bundle

from lfr.cluster.bus import Bus, BusError, Names, connect
from lfr.cluster.leases import CameraLeases, Heartbeat, spread_share
from lfr.cluster.publisher import Publisher
from lfr.cluster.status import read_alerts, read_status
from lfr.config import ClusterConfig, parse_config
from lfr.messages import Adjudication, Alert
from lfr.notify.outbox import Outbox
from lfr.watchlist import load_bundle
from tests.natsserver import NatsServer, serve

pytestmark = pytest.mark.anyio


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    yield from serve(tmp_path)


def make_alert(n: int) -> Alert:
    return Alert(id=f"alert{n:03d}", camera="cam1", time="2026-01-01T00:00:00.000+00:00",
                 wall_time=1.0 + n, person_id="p1", name="P One", score=0.9, threshold=0.5,
                 box=(1, 2, 3, 4), frame_index=n, latency_s=0.1, crop_jpeg=b"face-pixels")


async def test_alerts_wait_in_the_outbox_until_the_stream_acknowledges(
        nats_server: NatsServer, tmp_path: Path) -> None:
    nc = await connect(nats_server.url, "test")
    bus = await Bus(nc, Names("dep1")).open()
    outbox = Outbox(tmp_path / "node1")
    for n in range(3):
        outbox.add_alert(make_alert(n), ["console"])
    outbox.add_adjudication(Adjudication(alert_id="alert000", decision="confirmed",
                                         operator="ann"))
    publisher = Publisher(bus, "node1", outbox, tmp_path / "node1")

    nats_server.stop()
    assert not await publisher.flush()  # the server is away: nothing lost, all waiting
    assert outbox.unpublished_count() == 4
    nats_server.start()
    with anyio.fail_after(30):
        while not await publisher.flush():  # noqa: ASYNC110  (polls the server, no event)
            await anyio.sleep(0.2)
    assert outbox.unpublished_count() == 0
    assert (publisher.stats.alerts, publisher.stats.decisions) == (3, 1)

    # A crash between the stream's acknowledgement and the outbox's mark: published again,
    # dropped by the stream as a duplicate of the same alert id.
    # (A publish that timed out while the server was away may have been sent on reconnect and
    # counted as a duplicate already.)
    before = publisher.stats.duplicates
    outbox._write(("DELETE FROM published WHERE kind = 'alert'", ()))
    assert await publisher.flush()
    assert publisher.stats.duplicates - before == 3
    found = await read_alerts(bus)
    assert found["stream_records"] == 3 and found["duplicates"] == 0
    assert {a["id"] for a in found["alerts"]} == {"alert000", "alert001", "alert002"}
    decided = {a["id"]: a["decision"] for a in found["alerts"]}
    assert decided == {"alert000": "confirmed", "alert001": None, "alert002": None}
    raw = [m async for m in _stream_payloads(bus)]
    assert raw and not any(b"face-pixels" in m for m in raw)  # no image crosses
    outbox.close()
    await nc.close()


async def _stream_payloads(bus: Bus):  # type: ignore[no-untyped-def]
    from lfr.cluster.status import stream_messages

    for what in ("alert", "decision"):
        for _, data in await stream_messages(bus, what):
            yield data


async def test_audit_records_are_published_in_order_once(nats_server: NatsServer,
                                                         tmp_path: Path) -> None:
    from lfr.audit import AuditLog, Kind
    from lfr.cluster.status import audit_records_by_node

    nc = await connect(nats_server.url, "test")
    bus = await Bus(nc, Names("dep1")).open()
    data_dir = tmp_path / "node1"
    with AuditLog(data_dir) as audit, Outbox(data_dir) as outbox:
        audit.append(Kind.CHECKPOINT, {"frames": 1})
        assert await Publisher(bus, "node1", outbox, data_dir).flush()
        audit.append(Kind.CHECKPOINT, {"frames": 2})
        # A restarted node starts from the last record the stream has of it.
        assert await Publisher(bus, "node1", outbox, data_dir).flush()
    with Outbox(data_dir) as outbox:  # the log closed: its closing seal follows
        assert await Publisher(bus, "node1", outbox, data_dir).flush()
    records = (await audit_records_by_node(bus))["node1"]
    assert [r["seq"] for r in records] == [1, 2, 3, 4]  # open seal, 2 checkpoints, close seal
    assert [r["kind"] for r in records] == ["seal", "checkpoint", "checkpoint", "seal"]
    await nc.close()


def test_spread_share() -> None:
    assert spread_share(6, [None] * 3) == 2
    assert spread_share(7, [None] * 3) == 3
    assert spread_share(6, []) == 6
    # Nodes bounded by their capacity leave more to the others, never less than ceil.
    assert spread_share(6, [None, 1, 1]) == 4
    assert spread_share(6, [None, 5, 5]) == 2
    assert spread_share(6, [1, 1]) == 6  # too little capacity anywhere: unbounded


def test_cluster_settings_are_checked() -> None:
    config = parse_config({"name": "d", "cluster": {"lease_s": 6, "heartbeat_s": 1,
                                                      "capacity": 2}})
    assert config.cluster.capacity == 2
    from lfr.plugins import ConfigError

    with pytest.raises(ConfigError, match="heartbeat_s"):
        parse_config({"name": "d", "cluster": {"lease_s": 2, "heartbeat_s": 1}})
    with pytest.raises(BusError, match="deployment name"):
        Names("has.dot")


class FakeNode:
    """One node's leases driven by the test: heartbeats and ticks on demand."""

    def __init__(self, bus: Bus, name: str, cameras: list[str], settings: ClusterConfig) -> None:
        self.bus, self.name, self.settings = bus, name, settings
        self.leases = CameraLeases(bus, name, cameras, settings)

    async def beat(self, late_s: float = 0.0) -> None:
        assert self.bus.nodes is not None
        await self.bus.nodes.put(self.name, msgspec.json.encode(Heartbeat(
            node=self.name, time=time.time() - late_s, cameras=sorted(self.leases.running()),
            capacity=self.settings.capacity, heartbeat_s=self.settings.heartbeat_s)))

    async def tick(self) -> None:
        await self.leases.renew()
        await self.beat()
        await self.leases.balance()
        # The node stops its surplus, then gives it back.
        await self.leases.release(self.leases.surplus())


def assert_disjoint(nodes: list[FakeNode]) -> None:
    held = [n.leases.held() for n in nodes]
    for i, a in enumerate(held):
        for b in held[i + 1:]:
            assert not a & b, f"a camera held twice: {held}"


async def test_leases_spread_cameras_and_move_those_of_a_silent_node(
        nats_server: NatsServer) -> None:
    settings = ClusterConfig(lease_s=1.5, heartbeat_s=0.3)
    cameras = [f"cam{i}" for i in range(6)]
    nc = await connect(nats_server.url, "test")
    bus = await Bus(nc, Names("dep2")).open()
    nodes = [FakeNode(bus, f"node{i}", cameras, settings) for i in range(3)]
    for node in nodes:
        await node.beat()
    for _ in range(6):
        for node in nodes:
            await node.tick()
            assert_disjoint(nodes)
    assert sorted(len(n.leases.running()) for n in nodes) == [2, 2, 2]

    # node2 stops renewing (killed): its cameras move once its leases have run out.
    silent = nodes.pop()
    lost = silent.leases.held()
    started = time.monotonic()
    with anyio.fail_after(15):
        while any(c not in nodes[0].leases.held() | nodes[1].leases.held() for c in lost):
            for node in nodes:
                await node.tick()
                assert_disjoint(nodes)
            await anyio.sleep(settings.heartbeat_s)
    moved_after = time.monotonic() - started
    assert moved_after >= settings.lease_s - settings.heartbeat_s  # never before it ran out
    assert sorted(len(n.leases.running()) for n in nodes) == [3, 3]
    status = await read_status(bus)
    alive = {n["name"]: n["alive"] for n in status["nodes"]}
    assert alive == {"node0": True, "node1": True, "node2": False}
    assert {c["node"] for c in status["cameras"]} == {"node0", "node1"}
    await nc.close()


async def test_capacity_bounds_what_a_node_takes(nats_server: NatsServer) -> None:
    settings = ClusterConfig(lease_s=1.5, heartbeat_s=0.3, capacity=2)
    nc = await connect(nats_server.url, "test")
    bus = await Bus(nc, Names("dep3")).open()
    node = FakeNode(bus, "small", [f"cam{i}" for i in range(6)], settings)
    await node.leases.register()
    for _ in range(3):
        await node.tick()
    assert len(node.leases.running()) == 2
    status = await read_status(bus)
    states = sorted(c["state"] for c in status["cameras"])
    assert states == ["running"] * 2 + ["unassigned"] * 4
    await nc.close()


async def test_nodes_of_small_capacity_leave_their_part_to_the_others(
        nats_server: NatsServer) -> None:
    cameras = [f"cam{i}" for i in range(6)]
    nc = await connect(nats_server.url, "test")
    bus = await Bus(nc, Names("dep4")).open()
    big = FakeNode(bus, "big", cameras, ClusterConfig(lease_s=1.5, heartbeat_s=0.3))
    small = [FakeNode(bus, f"small{i}", cameras,
                      ClusterConfig(lease_s=1.5, heartbeat_s=0.3, capacity=1)) for i in range(2)]
    nodes = [big, *small]
    for node in nodes:
        await node.beat()
    for _ in range(4):
        for node in nodes:
            await node.tick()
            assert_disjoint(nodes)
    # ceil(6 / 3) = 2 would leave two cameras unassigned: the unbounded node runs them.
    assert [len(n.leases.running()) for n in nodes] == [4, 1, 1]
    settled = [n.leases.held() for n in nodes]
    for _ in range(3):
        for node in nodes:
            await node.tick()
    assert [n.leases.held() for n in nodes] == settled  # and nothing moves after that
    await nc.close()


async def test_a_node_late_with_its_heartbeat_moves_no_camera(nats_server: NatsServer) -> None:
    settings = ClusterConfig(lease_s=3.0, heartbeat_s=0.3)
    cameras = [f"cam{i}" for i in range(6)]
    nc = await connect(nats_server.url, "test")
    bus = await Bus(nc, Names("dep5")).open()
    nodes = [FakeNode(bus, f"node{i}", cameras, settings) for i in range(3)]
    for node in nodes:
        await node.beat()
    for _ in range(4):
        for node in nodes:
            await node.tick()
    assert sorted(len(n.leases.running()) for n in nodes) == [2, 2, 2]
    steady = [n.leases.held() for n in nodes[:2]]

    # node2's heartbeat is late (not alive: over 2 heartbeats) but it still renews, and one of
    # its cameras is free for a moment. The others, at their share of the nodes present, do not
    # take it: they would have to give it back as soon as node2 beats on time again.
    late, freed = nodes[2], sorted(nodes[2].leases.held())[0]
    await late.leases.release({freed})
    for _ in range(4):
        await late.leases.renew()
        await late.beat(late_s=3 * settings.heartbeat_s)
        for node in nodes[:2]:
            await node.tick()
            assert node.leases.alive_nodes == 2 and node.leases.present_nodes == 3
        await anyio.sleep(settings.heartbeat_s)
    assert [n.leases.held() for n in nodes[:2]] == steady
    await late.tick()  # on time again: it takes the free camera back; nothing else moved
    assert freed in late.leases.held()
    for _ in range(2):
        for node in nodes:
            await node.tick()
            assert_disjoint(nodes)
    assert [n.leases.held() for n in nodes[:2]] == steady
    await nc.close()


async def test_a_node_late_with_its_own_renewals_takes_nothing(nats_server: NatsServer) -> None:
    settings = ClusterConfig(lease_s=3.0, heartbeat_s=0.3)
    nc = await connect(nats_server.url, "test")
    bus = await Bus(nc, Names("dep6")).open()
    skew = [0.0]
    node = FakeNode(bus, "node0", [f"cam{i}" for i in range(4)], settings)
    node.leases = CameraLeases(bus, "node0", node.leases.cameras, settings,
                               clock=lambda: time.monotonic() + skew[0])
    await node.beat()
    await node.leases.balance()
    assert len(node.leases.held()) == 4
    await node.leases.release({"cam0", "cam1"})
    # Its renewals are two heartbeats behind (a stalled machine): it may lose what it holds
    # any moment, so it takes nothing more.
    skew[0] = 2.5 * settings.heartbeat_s
    await node.leases.balance()
    assert node.leases.held() == {"cam2", "cam3"}
    await node.leases.renew()  # caught up: it takes them again
    await node.leases.balance()
    assert node.leases.held() == {"cam0", "cam1", "cam2", "cam3"}
    assert node.leases.renewal_s >= 0.0
    await nc.close()


async def test_a_dead_nodes_cameras_move_even_if_its_heartbeat_never_listed_them(
        nats_server: NatsServer) -> None:
    settings = ClusterConfig(lease_s=3.0, heartbeat_s=0.3)
    cameras = [f"cam{i}" for i in range(6)]
    nc = await connect(nats_server.url, "test")
    bus = await Bus(nc, Names("dep7")).open()
    skew = [0.0]
    survivor, dying = (FakeNode(bus, f"node{i}", cameras, settings) for i in range(2))
    survivor.leases = CameraLeases(bus, "node0", cameras, settings,
                                   clock=lambda: time.monotonic() + skew[0])
    for node in (survivor, dying):
        await node.beat()
    await survivor.tick()
    await dying.leases.balance()  # takes the other three and dies before a heartbeat lists them
    assert len(dying.leases.held()) == 3
    # Late (a suspect, still present): the survivor starts reading every camera's lease.
    await dying.beat(late_s=2 * settings.heartbeat_s)
    for _ in range(2):
        await survivor.tick()
    assert len(survivor.leases.held()) == 3
    # A lease later it is gone, and the leases it never listed have run out since then.
    skew[0] = settings.lease_s
    await survivor.leases.renew()
    await dying.beat(late_s=settings.lease_s + 3 * settings.heartbeat_s)
    await survivor.leases.balance()
    assert survivor.leases.held() == set(cameras)
    await nc.close()


async def test_watchlist_versions_are_checked_and_destroyed(nats_server: NatsServer,
                                                           tmp_path: Path) -> None:
    from lfr.cluster import watchlist

    bundle = tmp_path / "bundle"
    vector_bundle(bundle, ["ann", "bob"], np.eye(2, 4, dtype=np.float32))
    nc = await connect(nats_server.url, "test")
    bus = await Bus(nc, Names("dep4")).open()
    first = await watchlist.publish(bus, bundle, "sup", only_if_none=True)
    assert first is not None and (first.version, first.people) == (1, 2)
    # A node starting with a bundle in its config publishes only when the store has none.
    assert await watchlist.publish(bus, bundle, "node1", only_if_none=True) is None
    second = await watchlist.publish(bus, bundle, "sup")
    assert second is not None and second.version == 2 and second.sha256 == first.sha256
    copy = await watchlist.fetch(bus, second, tmp_path / "copy" / "v2")
    assert sorted(p.name for p in copy.rglob("*") if p.is_file()) == sorted(
        p.name for p in bundle.rglob("*") if p.is_file())
    assert load_bundle(copy).persons == load_bundle(bundle).persons

    forged = msgspec.structs.replace(second, sha256="0" * 64)
    with pytest.raises(watchlist.WatchlistError, match="sha256"):
        await watchlist.fetch(bus, forged, tmp_path / "copy" / "forged")

    destroyed = await watchlist.destroy(bus, "sup")
    assert destroyed.destroyed and destroyed.version == 3
    assert (await watchlist.current(bus))[0] == destroyed
    assert bus.bundles is not None
    from nats.js.errors import NotFoundError

    with pytest.raises(NotFoundError):  # no bundle left in the store
        await bus.bundles.list(ignore_deletes=True)
    with pytest.raises(watchlist.WatchlistError, match="no published watchlist"):
        await watchlist.destroy(bus, "sup")
    await nc.close()


def test_the_cluster_example_config_is_valid() -> None:
    from paths import REPO

    from lfr.cluster.node import camera_names, with_cameras
    from lfr.config import load_config

    config = load_config(REPO / "examples" / "cluster.toml")
    assert config.cluster.capacity == 4
    names = camera_names(config)
    assert names == ["gate", "yard", "workshop", "office"]
    subset = with_cameras(config, {"yard", "office"}, Path("/tmp/x/van1"))
    assert [c.name for c in subset.cameras] == ["yard", "office"]
    assert subset.resolved_data_dir() == Path("/tmp/x/van1")


async def test_status_lists_every_key_while_keys_are_being_written(
        nats_server: NatsServer) -> None:
    """`lfr status` and `lfr report --nats` read the buckets while nodes write them: the list
    of keys comes whole (nats-py's kv.keys() could stop short while keys were written)."""
    from lfr.cluster.status import entries

    nc = await connect(nats_server.url, "test")
    bus = await Bus(nc, Names("busy")).open()
    assert bus.cameras is not None
    cameras = [f"cam{i:03d}" for i in range(200)]
    for camera in cameras:
        await bus.cameras.put(camera, b"node0")
    await bus.cameras.delete("cam007")  # a key deleted is not listed
    listed = set(cameras) - {"cam007"}
    writing = True

    async def keep_writing() -> None:
        n = 0
        while writing:
            await bus.cameras.put(cameras[100 + n % 100], f"node{n % 3}".encode())
            n += 1

    short = []
    async with anyio.create_task_group() as tg:
        tg.start_soon(keep_writing)
        for _ in range(20):
            found = await entries(bus, bus.names.cameras_bucket)
            if set(found) != listed:
                short.append(len(found))
        writing = False
    await nc.close()
    assert short == []
