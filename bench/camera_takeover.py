"""How a surviving node takes a dead node's cameras: the time from its lease decision to the
taken camera's first frame, and the pause of the cameras it was already running.

    .venv/bin/python bench/camera_takeover.py [--nodes 3] [--cameras 6] [--fps 2] [--json]

What runs: a real nats-server on loopback and ``--nodes`` real ``lfr node`` processes sharing
``--cameras`` file cameras (the demo clip, looping in real time at ``--fps``, as
tests/test_cluster_nodes.py runs them), the real models on every frame. Once every camera runs,
the last node is killed with SIGKILL. Each node process is instrumented from outside lfr (this
script wraps ``lfr node``): it writes the wall time of every frame its cameras emit and of each
"takes camera" decision of its leases, so the same script measures any version of lfr.

- take_to_first_frame_s: per camera taken, from the surviving node's decision to take it (it
  saw the dead node's lease unrenewed for the lease time, and wrote its own) to that camera's
  first frame on it.
- kill_to_first_frame_s: from the SIGKILL to that first frame (the lease is its floor).
- pause_s: per camera the survivors were running already, the longest gap between two of its
  frames from the kill until 10 s after the last take; its normal gap is 1/--fps.
- restarted: those cameras that were started again meanwhile (their frame index went back).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO.parent / "shared" / "data" / "demo" / "video" / "short_hamilton_clip.mp4"
PEOPLE = REPO.parent / "shared" / "data" / "demo" / "people"


def run_instrumented_node(events: Path, argv: list[str]) -> int:
    """``lfr node`` with every emitted frame and every lease taken written to ``events``."""
    import logging

    from lfr.cli import main
    from lfr.pipeline.camera import SourceActor

    out = events.open("a", buffering=1)
    emit = SourceActor._emit

    async def timed_emit(self: SourceActor, frame: Any) -> None:
        await emit(self, frame)
        out.write(json.dumps({"t": time.time(), "frame": self.name, "index": frame.index})
                  + "\n")

    SourceActor._emit = timed_emit  # type: ignore[method-assign]

    class Takes(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            message = record.getMessage()
            if "takes camera" in message:
                out.write(json.dumps({"t": record.created, "take": message.split()[-1]}) + "\n")

    logging.getLogger("lfr.cluster.leases").addHandler(Takes())
    return int(main(argv) or 0)


def write_config(folder: Path, bundle: Path, cameras: int, fps: float) -> Path:
    entries = "".join(f"""
[[cameras]]
name = "cam{i}"
url = "{CLIP}"
realtime = true
loop = true
fps_cap = {fps:g}
""" for i in range(cameras))
    config = folder / "site.toml"
    config.write_text(f"""
name = "site"
data_dir = "data"
operator = "bench"

[watchlist]
bundle = "{bundle}"

[[notifiers]]
kind = "jsonl"
path = "alerts.jsonl"

[cluster]
merge = "off"
{entries}""")
    return config


def read_events(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.endswith("}")]


def running_now(events: list[dict[str, Any]], within_s: float = 3.0) -> set[str]:
    now = time.time()
    return {e["frame"] for e in events if "frame" in e and now - e["t"] < within_s}


def measure(args: argparse.Namespace) -> dict[str, Any]:
    sys.path.insert(0, str(REPO / "tests"))
    from natsserver import NatsServer

    from lfr.vision.defaults import default_analyzer
    from lfr.watchlist import build_watchlist

    with tempfile.TemporaryDirectory(prefix="lfr-bench-takeover-") as tmp:
        folder = Path(tmp)
        bundle = folder / "bundle"
        build_watchlist(PEOPLE, bundle, default_analyzer())
        config = write_config(folder, bundle, args.cameras, args.fps)
        server = NatsServer(folder / "nats-store")
        server.start()
        names = [f"node{i}" for i in range(args.nodes)]
        processes: dict[str, subprocess.Popen[bytes]] = {}
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(
            p for p in (os.environ.get("PYTHONPATH", ""), str(REPO)) if p)}
        try:
            for name in names:
                with (folder / f"{name}.log").open("ab") as log:
                    processes[name] = subprocess.Popen(
                        [sys.executable, __file__, "--node-events", str(folder / f"{name}.ev"),
                         "node", str(config), "--nats", server.url, "--node", name],
                        cwd=folder, env=env, stdout=log, stderr=log)

            def events(name: str) -> list[dict[str, Any]]:
                return read_events(folder / f"{name}.ev")

            deadline = time.monotonic() + args.settle_timeout
            while True:
                running = {n: running_now(events(n)) for n in names}
                if sum(len(r) for r in running.values()) == args.cameras and all(
                        len(r) == args.cameras // args.nodes for r in running.values()):
                    break
                if time.monotonic() > deadline:
                    raise SystemExit(f"cameras did not settle: {running}")
                time.sleep(1.0)
            time.sleep(args.steady)
            victim, survivors = names[-1], names[:-1]
            before = {n: running_now(events(n)) for n in names}
            lost = before[victim]
            processes[victim].send_signal(signal.SIGKILL)
            processes[victim].wait(10)
            killed_at = time.time()
            first: dict[str, float] = {}
            deadline = time.monotonic() + args.lease_timeout
            while len(first) < len(lost):
                for name in survivors:
                    for e in events(name):
                        if e.get("frame") in lost and e["t"] > killed_at:
                            first.setdefault(e["frame"], e["t"])
                if time.monotonic() > deadline:
                    raise SystemExit(f"lost cameras not taken: {sorted(lost - set(first))}")
                time.sleep(0.5)
            time.sleep(10.0)
            takes: dict[str, float] = {}
            for name in survivors:
                for e in events(name):
                    if e.get("take") in lost and e["t"] > killed_at:
                        takes.setdefault(e["take"], e["t"])
            window_end = max(takes.values()) + 10.0
            pauses: dict[str, float] = {}
            restarted: list[str] = []
            for name in survivors:
                mine = [e for e in events(name) if e.get("frame") in before[name]]
                for camera in before[name]:
                    seen = [e for e in mine if e["frame"] == camera
                            and killed_at - 2.0 <= e["t"] <= window_end]
                    times = [e["t"] for e in seen]
                    # A camera started again reads its file from the start: its index drops.
                    if any(b["index"] < a["index"] for a, b in itertools.pairwise(seen)):
                        restarted.append(camera)
                    # A camera that never came back counts until the window's end.
                    pauses[camera] = max(b - a for a, b in itertools.pairwise(
                        [*times, window_end]))
        finally:
            for process in processes.values():
                if process.poll() is None:
                    process.send_signal(signal.SIGTERM)
            for process in processes.values():
                try:
                    process.wait(60)
                except subprocess.TimeoutExpired:
                    process.kill()
            server.stop(signal.SIGKILL)
    take_to_first = {c: round(first[c] - takes[c], 2) for c in sorted(lost) if c in takes}
    return {
        "nodes": args.nodes, "cameras": args.cameras, "fps": args.fps,
        "take_to_first_frame_s": take_to_first,
        "take_to_first_frame_median_s": round(statistics.median(take_to_first.values()), 2),
        "kill_to_first_frame_s": {c: round(first[c] - killed_at, 2) for c in sorted(lost)},
        "pause_s": {c: round(p, 2) for c, p in sorted(pauses.items())},
        "pause_max_s": round(max(pauses.values()), 2),
        "restarted": sorted(restarted),
        "normal_gap_s": round(1 / args.fps, 2),
    }


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "--node-events":
        raise SystemExit(run_instrumented_node(Path(sys.argv[2]), sys.argv[3:]))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodes", type=int, default=3)
    parser.add_argument("--cameras", type=int, default=6)
    parser.add_argument("--fps", type=float, default=2.0)
    parser.add_argument("--steady", type=float, default=10.0,
                        help="seconds of every camera running before the kill")
    parser.add_argument("--settle-timeout", type=float, default=180.0)
    parser.add_argument("--lease-timeout", type=float, default=90.0)
    parser.add_argument("--json", action="store_true", help="print the result as JSON only")
    args = parser.parse_args()
    result = measure(args)
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"{key}: {value}")


if __name__ == "__main__":
    main()
