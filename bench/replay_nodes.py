"""bench/nodes.py --replay: real `lfr node` processes with the replay detector (see nodes.py)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tools"))

from lfr.cluster.bus import Bus, Names, connect  # noqa: E402
from lfr.cluster.status import read_alerts, read_status  # noqa: E402

# The walk-past the replay is made of: 480x270 at 8 fps, about 3 people in view at once (as the
# tests' SMALL_WALK), 60 passers of whom 12 are on the watchlist.
WALK = {"fps": 8.0, "width": 480, "height": 270, "concurrency": 3.0, "duration": (2.5, 3.5),
        "max_face": (100.0, 120.0), "threshold": 0.42, "log": False, "passers": 60,
        "watchlisted": 12, "seed": 7}
REPLAY = "walkpast.replay.npz"


def prepare(folder: Path, dataset: Path) -> dict[str, Any]:
    """The walk-past, its bundle (enrolled by the real models) and the replay file, once."""
    meta = folder / "replay.json"
    if meta.exists():
        return dict(json.loads(meta.read_text()))
    from make_replay import make_replay
    from make_walkpast import make_walkpast

    from lfr.cli.plugins import load_registry
    from lfr.cli.watchlist import prepare_watchlist
    from lfr.config import load_config

    print(f"making the walk-past and its replay in {folder} (once)", file=sys.stderr)
    made = make_walkpast(dataset, folder, **WALK)  # type: ignore[arg-type]
    config = load_config(folder / "walkpast.toml")
    analyzer = prepare_watchlist(config, True, load_registry())
    assert analyzer is not None
    summary = make_replay(folder / "walkpast.mp4", analyzer, folder / REPLAY, "yunet")
    info = {"frames": made["frames"], "width": WALK["width"], "height": WALK["height"],
            "threshold": WALK["threshold"], "faces": summary["faces"]}
    meta.write_text(json.dumps(info))
    return info


def write_config(folder: Path, source: Path, info: dict[str, Any], n_nodes: int,
                 n_cameras: int, args: argparse.Namespace) -> tuple[Path, str]:
    name = f"replay{n_nodes}x{n_cameras}"
    # Cameras start at frames spread over the walk-past, so they do not all see one person at
    # the same instant.
    cameras = "".join(f"""
[[cameras]]
kind = "replay"
name = "cam{i:03d}"
fps = {args.fps}
width = {info['width']}
height = {info['height']}
start = {(i * 37) % info['frames']}
""" for i in range(n_cameras))
    config = folder / f"{name}.toml"
    config.write_text(f"""
name = "{name}"
data_dir = "data"
operator = "bench"

[watchlist]
bundle = "{source / 'bundle'}"

[detector]
kind = "replay"
file = "{source / REPLAY}"

[embedder]
kind = "replay"
file = "{source / REPLAY}"

[matching]
threshold = {info['threshold']}

[cluster]
merge = "off"  # each camera's alert is its own: the stream's load, not the people's count
lease_s = {args.lease}
heartbeat_s = {args.heartbeat}
{cameras}""")
    return config, name


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU seconds of these processes so far (Linux /proc)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / tick


async def wait_for(check: Any, timeout_s: float, what: str,
                   processes: dict[str, subprocess.Popen[bytes]], logs: Path) -> float:
    started = time.monotonic()
    while not await check():
        for name, process in processes.items():
            if process.poll() is not None:
                tail = (logs / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"node {name} exited ({process.returncode}):\n{tail}")
        if time.monotonic() - started > timeout_s:
            raise RuntimeError(f"{what}: not after {timeout_s:g} s")
        await asyncio.sleep(0.25)
    return time.monotonic() - started


async def one_size(url: str, folder: Path, source: Path, info: dict[str, Any], n_nodes: int,
                   n_cameras: int, args: argparse.Namespace) -> dict[str, Any]:
    config, deployment = write_config(folder, source, info, n_nodes, n_cameras, args)
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # LFR_KEY_DIR: the bundle's (run_replay)
    processes: dict[str, subprocess.Popen[bytes]] = {}
    nc = await connect(url, "bench")
    bus = await Bus(nc, Names(deployment)).open(duplicate_window_s=600)
    share = math.ceil(n_cameras / n_nodes)
    launched = time.monotonic()
    processes_started = [f"node{i:02d}" for i in range(n_nodes)]
    try:
        for i in range(n_nodes):
            name = f"node{i:02d}"
            with (folder / f"{name}.log").open("ab") as log:
                processes[name] = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
                    [sys.executable, "-m", "lfr.cli", "node", str(config), "--nats", url,
                     "--node", name], cwd=folder, env=env, stdin=subprocess.DEVNULL,
                    stdout=log, stderr=log)

        async def spread() -> bool:
            status = await read_status(bus)
            held = [len(n["cameras"]) for n in status["nodes"] if n["alive"]]
            running = sum(c["state"] == "running" for c in status["cameras"])
            return running == n_cameras and bool(held) and max(held) <= share

        await wait_for(spread, 300, "every camera running, spread", processes, folder)
        spread_s = time.monotonic() - launched

        await asyncio.sleep(args.settle)  # the first minutes' churn is not the steady state
        before = (await read_alerts(bus))["stream_records"]
        pids = [p.pid for p in processes.values()]
        cpu_before, started = cpu_seconds(pids), time.monotonic()
        watch = await watch_settling(bus, n_nodes, n_cameras, args.window)
        elapsed = time.monotonic() - started
        cpu = (cpu_seconds(pids) - cpu_before) / elapsed
        load = os.getloadavg()[0]
        after = (await read_alerts(bus))["stream_records"]

        victim = f"node{n_nodes - 1:02d}"
        status = await read_status(bus)
        lost = {c["name"] for c in status["cameras"] if c["node"] == victim}
        processes[victim].send_signal(signal.SIGKILL)
        processes.pop(victim).wait(10)
        killed = time.monotonic()

        async def moved() -> bool:
            status = await read_status(bus)
            # Every lost camera named: a listing of the bucket that came back short (a loaded
            # server) proves nothing.
            running = {c["name"] for c in status["cameras"]
                       if c["state"] == "running" and c["node"] != victim}
            return lost <= running

        await wait_for(moved, 120 + args.lease, "the dead node's cameras running elsewhere",
                       processes, folder)
        failover_s = time.monotonic() - killed
        found = await read_alerts(bus)
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        for process in processes.values():
            try:
                process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
        await nc.close()
        # The nodes' logs outlive the temporary folder: DIR/logs/<deployment>/<node>.log.
        kept = args.replay.resolve() / "logs" / deployment
        kept.mkdir(parents=True, exist_ok=True)
        for name in processes_started:
            with contextlib.suppress(OSError):
                shutil.copy(folder / f"{name}.log", kept / f"{name}.log")
    frames_per_s = n_cameras * args.fps
    return {"nodes": n_nodes, "cameras": n_cameras, "spread_s": round(spread_s, 1),
            "alerts_per_s": round((after - before) / elapsed, 1),
            "nodes_cpu_cores": round(cpu, 2), "node_cpu_cores": round(cpu / n_nodes, 3),
            "cpu_ms_per_frame": round(1000 * cpu / frames_per_s, 2), **watch,
            "load_average": round(load, 1), "failover_cameras": len(lost),
            "failover_s": round(failover_s, 1),
            "failover_over_lease": round(failover_s / args.lease, 2),
            "stream_alerts": len(found["alerts"]), "duplicates": found["duplicates"]}


async def watch_settling(bus: Bus, n_nodes: int, n_cameras: int, window_s: float
                         ) -> dict[str, Any]:
    """Over ``window_s``, once a second: camera moves (a lease changing node), cameras not
    running on exactly one live node, and the slowest lease renewal round a heartbeat
    reported. Settled: no move, and every camera on exactly one node throughout."""
    from lfr.cluster.leases import decode_heartbeat
    from lfr.cluster.status import entries

    owners: dict[str, str] = {}
    moves, misplaced, renewal_s, short_reads = 0, 0, 0.0, 0
    end = time.monotonic() + window_s
    while time.monotonic() < end:
        status = await read_status(bus)
        if len(status["cameras"]) < n_cameras or len(status["nodes"]) < n_nodes:
            # Not every node or camera has written its key yet (settling, or a node starting).
            short_reads += 1
            await asyncio.sleep(1.0)
            continue
        now = {c["name"]: c["node"] for c in status["cameras"] if c["state"] == "running"}
        moves += sum(1 for camera, node in now.items() if owners.get(camera, node) != node)
        owners.update(now)
        listed = [c for n in status["nodes"] if n["alive"] for c in n["cameras"]]
        misplaced = max(misplaced, n_cameras - len(now), len(listed) - len(set(listed)))
        for value in (await entries(bus, bus.names.nodes_bucket)).values():
            beat = decode_heartbeat(value)
            if beat is not None and not beat.stopping:
                renewal_s = max(renewal_s, getattr(beat, "renewal_s", 0.0))  # 0: older nodes
        await asyncio.sleep(1.0)
    return {"moves": moves, "misplaced": misplaced, "settled": moves == 0 and misplaced == 0,
            "max_renewal_s": round(renewal_s, 3), "short_reads": short_reads}


async def run_async(args: argparse.Namespace, info: dict[str, Any]) -> list[dict[str, Any]]:
    from nodes import nats_on_loopback  # bench/nodes.py

    results = []
    with tempfile.TemporaryDirectory(prefix="lfr-bench-replay-") as tmp:
        folder = Path(tmp)
        async with nats_on_loopback(folder) as url:
            for size in args.sizes.split(","):
                n_nodes, n_cameras = (int(v) for v in size.split("x"))
                try:
                    result = await one_size(url, folder, args.replay.resolve(), info, n_nodes,
                                            n_cameras, args)
                except RuntimeError as exc:  # did not settle on this machine: say so, go on
                    result = {"nodes": n_nodes, "cameras": n_cameras,
                              "error": str(exc).splitlines()[0]}
                print(json.dumps(result), file=sys.stderr)
                results.append(result)
    return results


def run_replay(args: argparse.Namespace) -> list[dict[str, Any]]:
    args.replay.mkdir(parents=True, exist_ok=True)
    # The bench's own key, never the user's: the bundle is sealed with it and the nodes open it.
    os.environ["LFR_KEY_DIR"] = str(args.replay.resolve() / "keys")
    info = prepare(args.replay.resolve(), args.dataset)
    return asyncio.run(run_async(args, info))
