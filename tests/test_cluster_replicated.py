"""A three-server NATS cluster with replicated streams: one server killed while a node publishes,
nothing is lost or duplicated, and publishing pauses no longer than the client's reconnect (and
the stream's new leader election)."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from pathlib import Path

import anyio
import pytest
from natsserver import NatsServer, free_port

from lfr.cluster.bus import Bus, Names, connect
from lfr.cluster.publisher import Publisher
from lfr.cluster.status import read_alerts
from lfr.messages import Alert
from lfr.notify.outbox import Outbox

pytestmark = pytest.mark.anyio


@pytest.fixture
def three_servers(tmp_path: Path) -> Iterator[list[NatsServer]]:
    ports = [(free_port(), free_port()) for _ in range(3)]
    servers = []
    for i, (client, route) in enumerate(ports):
        routes = ",".join(f"nats://127.0.0.1:{r}" for j, (_, r) in enumerate(ports) if j != i)
        servers.append(NatsServer(tmp_path / f"store{i}", port=client, extra=(
            "-n", f"s{i}", "--cluster_name", "lfr", "--cluster", f"nats://127.0.0.1:{route}",
            "--routes", routes)))
    for server in servers:
        server.start()
    try:
        yield servers
    finally:
        for server in servers:
            server.stop(signal.SIGKILL)


def make_alert(n: int) -> Alert:
    return Alert(id=f"r{n:04d}", camera="cam1", time="2026-01-01T00:00:00.000+00:00",
                 wall_time=float(n), person_id="p1", name="P One", score=0.9, threshold=0.5,
                 box=(1, 2, 3, 4), frame_index=n, latency_s=0.1)


async def open_bus(url: str) -> Bus:
    """The replicated stream and buckets, once the cluster has elected its JetStream leader."""
    with anyio.fail_after(60):
        while True:
            nc = await connect(url, "test")
            try:
                return await Bus(nc, Names("rep")).open(replicas=3)
            except Exception:  # no JetStream leader yet
                await nc.close()
                await anyio.sleep(1)


@pytest.mark.timeout(240)
async def test_a_server_dies_nothing_is_lost(three_servers: list[NatsServer],
                                            tmp_path: Path) -> None:
    bus = await open_bus(",".join(s.url for s in three_servers))  # the client knows them all
    outbox = Outbox(tmp_path / "node1")
    publisher = Publisher(bus, "node1", outbox, tmp_path / "node1", interval_s=0.1)
    acked_at: list[float] = []

    async def raise_alerts(start: int, count: int) -> None:
        for n in range(start, start + count):
            outbox.add_alert(make_alert(n), [])
            before = publisher.stats.alerts
            await publisher.flush()
            if publisher.stats.alerts > before:
                acked_at.append(time.monotonic())
            await anyio.sleep(0.1)

    await raise_alerts(0, 20)
    connected = bus.nc.connected_url
    assert connected is not None
    killed = next(s for s in three_servers if s.port == connected.port)
    killed.stop(signal.SIGKILL)  # the one this client talks to
    killed_at = time.monotonic()
    await raise_alerts(20, 40)
    with anyio.fail_after(60):
        while outbox.unpublished_count():
            before = publisher.stats.alerts
            await publisher.flush()
            if publisher.stats.alerts > before:
                acked_at.append(time.monotonic())
            await anyio.sleep(0.2)
    # Publishing went on once the client had reconnected to another server.
    after = [t - killed_at for t in acked_at if t > killed_at]
    assert after and after[0] < 20, f"first acknowledgement {after[:1]} s after the kill"
    print(f"first acknowledgement {after[0]:.2f} s after the server was killed")
    with anyio.fail_after(60):
        while True:  # a read may time out while the replicas catch up after the kill
            try:
                found = await read_alerts(bus)
                break
            except TimeoutError:
                await anyio.sleep(1)
    assert {a["id"] for a in found["alerts"]} == {f"r{n:04d}" for n in range(60)}
    assert found["duplicates"] == 0 and found["stream_records"] == 60
    info = await bus.js.stream_info(bus.names.stream)
    assert info.config.num_replicas == 3
    outbox.close()
    await bus.nc.close()
