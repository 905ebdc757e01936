"""The bus of a deployment spread over nodes, at scale: alerts per second through the stream,
and the time to move a dead node's cameras, from 2 to 20 nodes and 10 to 200 cameras.

    .venv/bin/python bench/nodes.py [--sizes 2x10,5x50,10x100,20x200] [--alerts 2000]
                                    [--lease 5] [--heartbeat 1] [--json]

What runs: a real nats-server (loopback, temporary store) and N simulated nodes in this one
process, each with its own NATS connection, its own SQLite outbox, lfr's camera leases
(lfr.cluster.leases) and publisher (lfr.cluster.publisher): everything of a node but the camera
pipeline (no video is decoded, no model runs: the vision side is measured by bench/capacity.py).

- spread: seconds from start until every camera is held and no node holds more than its share.
- alerts/s: --alerts alerts are put into the nodes' outboxes at once (spread evenly), then every
  node publishes; the rate is alerts acknowledged by the stream per second of wall time.
- failover: one node stops (as if killed: no release, no more heartbeats); seconds until every
  one of its cameras is held by another node. The floor is the lease (--lease): a node takes a
  camera only after seeing its lease unrenewed for that long.

Numbers depend on the machine (the development box has 2 shared cores: 20 nodes there share
them with the server); compare sizes within one run.

With ``--replay DIR``, the nodes are real ``lfr node`` processes running the whole camera
pipeline (camera, detector, matcher, tracker, outbox, publisher) with the replay detector: faces
and embeddings computed offline by the real models from a walk-past composed from a dataset
(lfw-dev by default), played back by cameras of kind "replay" (lfr.vision.replay). DIR caches
the walk-past, its watchlist bundle and the replay file (made on first use, about a minute).

    .venv/bin/python bench/nodes.py --replay /tmp/lfr-replay [--sizes 2x10,...] [--fps 2]
                                    [--window 20] [--settle 10] [--lease 10] [--heartbeat 2]
                                    [--json]

- spread: seconds from launching the processes (their start-up included) until every camera
  runs and no node runs more than its share.
- then --settle seconds, then a window of --window seconds over which:
- alerts/s: alert records that reached the deployment's stream per second (each camera loops
  the walk-past at --fps, from its own starting frame).
- cpu/node: the nodes' CPU (user + system) per node, in cores; ms/frame: all the nodes' CPU
  per frame the cameras gave (idle work included).
- settled: no camera moved to another node in the window (moves: how many did), and every
  camera ran on exactly one live node throughout; renew s: the slowest lease renewal round a
  node's heartbeat reported (a renewal later than lease - heartbeat stops the camera).
- load: the machine's 1-minute load average at the end of the window.

The nodes' logs are kept in DIR/logs/<deployment>/. Alerts are not merged across cameras
(``merge = "off"``): the walk-past's dozen listed people would otherwise cap the alerts at a
dozen per merge window, and the bench measures the stream's load.
- failover: the last node is killed with SIGKILL; seconds until every camera it ran runs on
  another node (floor: --lease).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import msgspec  # noqa: E402

from lfr.cluster.bus import Bus, Names, connect, find_nats_server  # noqa: E402
from lfr.cluster.leases import CameraLeases, Heartbeat  # noqa: E402
from lfr.cluster.publisher import Publisher  # noqa: E402
from lfr.cluster.status import read_alerts  # noqa: E402
from lfr.config import ClusterConfig  # noqa: E402
from lfr.messages import Alert  # noqa: E402
from lfr.notify.outbox import Outbox  # noqa: E402
from lfr.sealed import DataKey  # noqa: E402


class SimNode:
    def __init__(self, bus: Bus, name: str, cameras: list[str], settings: ClusterConfig,
                 folder: Path, key: DataKey) -> None:
        self.bus, self.name, self.settings = bus, name, settings
        self.leases = CameraLeases(bus, name, cameras, settings)
        self.outbox = Outbox(folder / name, key)
        self.publisher = Publisher(bus, name, self.outbox, folder / name, interval_s=0.05)
        self.task: asyncio.Task[None] | None = None
        self.stopped = False  # nats-py turns a cancelled request into a timeout: a flag stops it

    async def beat(self) -> None:
        assert self.bus.nodes is not None
        await self.bus.nodes.put(self.name, msgspec.json.encode(Heartbeat(
            node=self.name, time=time.time(), cameras=sorted(self.leases.running()),
            capacity=None, heartbeat_s=self.settings.heartbeat_s)))

    async def run(self) -> None:
        await self.beat()
        await asyncio.sleep(self.settings.heartbeat_s)
        while not self.stopped:
            started = time.monotonic()
            try:
                await self.leases.renew()
                await self.beat()
                await self.leases.balance()
                # The simulated cameras stop at once: their surplus goes back straight away.
                await self.leases.release(self.leases.surplus())
            except Exception as exc:  # a slow server: the next round retries
                print(f"{self.name}: {exc}", file=sys.stderr)
            await asyncio.sleep(max(0.0, self.settings.heartbeat_s
                                    - (time.monotonic() - started)))


async def stop(node: SimNode) -> None:
    """As if killed: no release, no more renewals or heartbeats."""
    node.stopped = True
    assert node.task is not None
    node.task.cancel()
    await asyncio.gather(node.task, return_exceptions=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def alert(node: str, n: int) -> Alert:
    return Alert(id=f"{node}-{n:06d}", camera="cam", time="2026-01-01T00:00:00.000+00:00",
                 wall_time=float(n), person_id="p", name="P", score=0.9, threshold=0.5,
                 box=(0, 0, 1, 1), frame_index=n, latency_s=0.0)


async def one_size(url: str, folder: Path, n_nodes: int, n_cameras: int, alerts: int,
                   settings: ClusterConfig) -> dict[str, Any]:
    names = Names(f"bench{n_nodes}x{n_cameras}")
    cameras = [f"cam{i:03d}" for i in range(n_cameras)]
    key = DataKey.generate("bench")  # never the user's key
    connections = [await connect(url, f"node{i}") for i in range(n_nodes)]
    buses = [await Bus(nc, names).open(duplicate_window_s=600) for nc in connections]
    nodes = [SimNode(bus, f"node{i:02d}", cameras, settings, folder / names.deployment, key)
             for i, bus in enumerate(buses)]
    await nodes[0].leases.register()
    share = math.ceil(n_cameras / n_nodes)
    started = time.monotonic()
    for node in nodes:
        node.task = asyncio.create_task(node.run())

    def spread() -> bool:
        held = [len(n.leases.running()) for n in nodes]
        return sum(held) == n_cameras and max(held) <= share

    while not spread():  # noqa: ASYNC110  (polls the nodes' state)
        await asyncio.sleep(0.1)
    spread_s = time.monotonic() - started

    per_node = alerts // n_nodes

    def store(node: SimNode) -> None:  # in a thread, as a node's matcher does
        for n in range(per_node):
            node.outbox.add_alert(alert(node.name, n), [])

    await asyncio.gather(*(asyncio.to_thread(store, node) for node in nodes))
    started = time.monotonic()
    await asyncio.gather(*(node.publisher.flush() for node in nodes))
    publish_s = time.monotonic() - started
    found = await read_alerts(buses[0])
    assert found["duplicates"] == 0 and len(found["alerts"]) == per_node * n_nodes, found

    victim = nodes[-1]
    lost = victim.leases.held()
    await stop(victim)
    killed = time.monotonic()
    survivors = nodes[:-1]

    def moved() -> bool:
        held = set().union(*(n.leases.held() for n in survivors))
        return lost <= held

    while not moved():  # noqa: ASYNC110
        await asyncio.sleep(0.1)
    failover_s = time.monotonic() - killed
    for node in survivors:
        await stop(node)
    for node in nodes:
        node.outbox.close()
    for nc in connections:
        await nc.close()
    return {"nodes": n_nodes, "cameras": n_cameras, "spread_s": round(spread_s, 2),
            "alerts": per_node * n_nodes, "alerts_per_s": round(per_node * n_nodes / publish_s),
            "failover_cameras": len(lost), "failover_s": round(failover_s, 2),
            "failover_over_lease": round(failover_s / settings.lease_s, 2)}


@contextlib.asynccontextmanager
async def nats_on_loopback(folder: Path) -> AsyncIterator[str]:
    """A real nats-server with JetStream on a free loopback port, its store in ``folder``: its
    URL, for the length of the block."""
    port = free_port()
    command = [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
               str(folder / "store")]
    # Started once, before any node: blocking here is fine.
    server = subprocess.Popen(command, stdout=subprocess.DEVNULL,  # noqa: ASYNC220
                              stderr=subprocess.DEVNULL)
    try:
        await asyncio.sleep(1.0)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


async def main_async(args: argparse.Namespace) -> list[dict[str, Any]]:
    settings = ClusterConfig(lease_s=args.lease, heartbeat_s=args.heartbeat)
    results = []
    with tempfile.TemporaryDirectory(prefix="lfr-bench-nodes-") as tmp:
        folder = Path(tmp)
        async with nats_on_loopback(folder) as url:
            for size in args.sizes.split(","):
                n_nodes, n_cameras = (int(v) for v in size.split("x"))
                result = await one_size(url, folder, n_nodes, n_cameras, args.alerts, settings)
                print(json.dumps(result), file=sys.stderr)
                results.append(result)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="2x10,5x50,10x100,20x200",
                        help="NODESxCAMERAS, comma-separated")
    parser.add_argument("--alerts", type=int, default=2000, help="alerts published per size")
    parser.add_argument("--lease", type=float, help="lease_s (default 5; 10 with --replay)")
    parser.add_argument("--heartbeat", type=float,
                        help="heartbeat_s (default 1; 2 with --replay)")
    parser.add_argument("--replay", type=Path, metavar="DIR",
                        help="run real `lfr node` processes with the replay detector; DIR keeps "
                        "the walk-past, bundle and replay file (made on first use)")
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared/data/lfw-dev",
                        help="--replay: the folder-per-person dataset the walk-past is made of")
    parser.add_argument("--fps", type=float, default=2.0, help="--replay: each camera's fps")
    parser.add_argument("--window", type=float, default=20.0,
                        help="--replay: seconds over which alerts, CPU and camera moves are "
                        "counted")
    parser.add_argument("--settle", type=float, default=10.0,
                        help="--replay: seconds waited after the cameras are spread, before "
                        "the window")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    replay = args.replay is not None
    args.lease = args.lease or (10.0 if replay else 5.0)
    args.heartbeat = args.heartbeat or (2.0 if replay else 1.0)
    if replay:
        from replay_nodes import run_replay  # bench/replay_nodes.py

        results = run_replay(args)
        print_replay(args, results)
        return
    results = asyncio.run(main_async(args))
    if args.json:
        print(json.dumps({"lease_s": args.lease, "heartbeat_s": args.heartbeat,
                          "sizes": results}))
    else:
        print(f"lease {args.lease:g} s, heartbeat {args.heartbeat:g} s")
        print(f"{'nodes':>5} {'cameras':>7} {'spread s':>8} {'alerts/s':>8} "
              f"{'failover s':>10} {'/lease':>6}")
        for r in results:
            print(f"{r['nodes']:>5} {r['cameras']:>7} {r['spread_s']:>8} "
                  f"{r['alerts_per_s']:>8} {r['failover_s']:>10} "
                  f"{r['failover_over_lease']:>6}")


def print_replay(args: argparse.Namespace, results: list[dict[str, Any]]) -> None:
    if args.json:
        print(json.dumps({"mode": "replay", "lease_s": args.lease, "heartbeat_s": args.heartbeat,
                          "fps": args.fps, "window_s": args.window, "sizes": results}))
        return
    print(f"lfr node processes, replay detector; lease {args.lease:g} s, heartbeat "
          f"{args.heartbeat:g} s, cameras at {args.fps:g} fps, alerts over {args.window:g} s")
    print(f"{'nodes':>5} {'cameras':>7} {'spread s':>8} {'cpu/node':>8} {'ms/frame':>8} "
          f"{'alerts/s':>8} {'settled':>7} {'moves':>5} {'renew s':>7} {'failover s':>10} "
          f"{'/lease':>6} {'dup':>4} {'load':>5}")
    for r in results:
        if "error" in r:
            print(f"{r['nodes']:>5} {r['cameras']:>7} {r['error']}")
            continue
        print(f"{r['nodes']:>5} {r['cameras']:>7} {r['spread_s']:>8} {r['node_cpu_cores']:>8} "
              f"{r['cpu_ms_per_frame']:>8} {r['alerts_per_s']:>8} {r['settled']!s:>7} "
              f"{r['moves']:>5} {r['max_renewal_s']:>7} {r['failover_s']:>10} "
              f"{r['failover_over_lease']:>6} {r['duplicates']:>4} {r['load_average']:>5}")


if __name__ == "__main__":
    main()
