"""A watchlist version published to a running node: how long until its camera decides on it, and
what pause the change makes, through a real nats-server and `lfr node`'s own code (in-process, so
its frames can be watched).

    PYTHONPATH=. .venv/bin/python bench/watchlist_node.py [--fps-cap 10] [--before 8] [--after 8]
        [--repeat 3] [--json]

Run it with another checkout on PYTHONPATH to measure that checkout's node (the bench uses only
``Node``, its ``_deployment`` and the public commands): before the switch between frames, a new
version stopped the node's deployment and started another.

One node, one live camera (the demo clip looping in real time, capped at ``--fps-cap``), on the
list of every demo person; after ``--before`` seconds the list without Miranda is published
(`lfr watchlist publish`) and the node runs ``--after`` seconds more. Per run:

- ``to_new_list_s``: from the publish command's return to the first frame decided on the new
  list (the node looks for a new version every heartbeat, 2 s by default);
- ``pause_s``: the longest gap between two consecutive decided frames from the publish to 3 s
  after that; ``usual_gap_s`` elsewhere; ``capture_gap_s``: the same on the frames' capture
  times (how long the camera was not read);
- ``deployments``: deployments the node ran (1: its cameras never stopped).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import io
import itertools
import json
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import anyio
from watchlist_switch import SHARED, lists

# lfr from PYTHONPATH (not this checkout's folder): the bench measures whichever node is given.
from lfr.audit import audit_records
from lfr.cli import main as lfr_main
from lfr.cluster.bus import find_nats_server
from lfr.cluster.node import Node
from lfr.config import parse_config
from lfr.pipeline.matcher import FrameReport
from lfr.pipeline.wiring import build_analyzer
from lfr.plugins import load_plugins

CLIP = SHARED / "video" / "short_hamilton_clip.mp4"


@contextlib.asynccontextmanager
async def nats_on_loopback(folder: Path) -> AsyncIterator[str]:
    """A nats-server with JetStream on a free loopback port (as bench/nodes.py starts one)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(  # noqa: ASYNC220 - once, before the node
        [str(find_nats_server()), "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
         str(folder / "store")], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        await anyio.sleep(1.0)
        yield f"nats://127.0.0.1:{port}"
    finally:
        server.terminate()
        server.wait(10)


def publish(bundle: Path, url: str) -> int:
    """`lfr watchlist publish`, its answer kept off this bench's stdout."""
    with contextlib.redirect_stdout(io.StringIO()):
        return lfr_main(["watchlist", "publish", str(bundle), "--nats", url, "--deployment",
                         "bench", "--operator", "bench", "--json"])


async def one_run(folder: Path, bundles: tuple[Path, Path], args: argparse.Namespace
                  ) -> dict[str, Any]:
    config = parse_config({
        "name": "bench", "data_dir": str(folder / "data"),
        "watchlist": {"bundle": str(bundles[0])},
        "cameras": [{"name": "cam", "url": str(CLIP), "realtime": True, "loop": True,
                     "fps_cap": args.fps_cap}],
        "notifiers": [{"kind": "jsonl"}], "cluster": {"merge": "off"}}, "bench")
    registry = load_plugins()
    analyzer = build_analyzer(config, registry)
    seen: list[tuple[int, FrameReport]] = []  # (deployment number, report)
    deployments: list[Any] = []
    async with nats_on_loopback(folder) as url:
        node = Node(config, url, "node0", registry, analyzer)

        async def watch() -> None:
            """Every deployment the node runs, its decided frames into ``seen``."""
            async with anyio.create_task_group() as tg:
                while True:
                    current = node._deployment
                    if current is not None and all(d is not current for d in deployments):
                        deployments.append(current)
                        tg.start_soon(collect, len(deployments), current.frames.subscribe(1024))
                    await anyio.sleep(0.005)

        first_frame = anyio.Event()
        published = 0.0

        async def collect(number: int, subscription: Any) -> None:
            async for report in subscription:
                seen.append((number, report))
                first_frame.set()

        async def drive() -> None:
            nonlocal published
            await first_frame.wait()
            await anyio.sleep(args.before)
            code = await anyio.to_thread.run_sync(publish, bundles[1], url)
            published = time.monotonic()
            assert code == 0, "publish failed"
            await anyio.sleep(args.after)
            node.stop()

        async with anyio.create_task_group() as tg:
            tg.start_soon(watch)
            tg.start_soon(drive)
            await node.run()
            tg.cancel_scope.cancel()
    # The first frame on the new list: one of a deployment started after the publish (a
    # restart), or one after the switch point the running deployment audited.
    switched = [r.data["switched"]["after_frames"].get("cam", -1)
                for r in audit_records(folder / "data" / "node0")
                if r.kind == "watchlist_loaded" and "switched" in r.data]
    first_number = seen[0][0]
    new = [report for number, report in seen
           if (number != first_number and report.decided_mono > published)
           or (switched and number == first_number and report.faces.frame.index > switched[0])]
    first_new = new[0].decided_mono
    window = (published, first_new + 3.0)
    frames = [report for _, report in seen]
    pause = usual = capture = usual_capture = 0.0
    for a, b in itertools.pairwise(frames):
        gap = b.decided_mono - a.decided_mono
        captured = b.faces.frame.mono_time - a.faces.frame.mono_time
        if window[0] <= b.decided_mono <= window[1]:
            pause, capture = max(pause, gap), max(capture, captured)
        else:
            usual, usual_capture = max(usual, gap), max(usual_capture, captured)
    return {"to_new_list_s": round(first_new - published, 3), "pause_s": round(pause, 3),
            "usual_gap_s": round(usual, 3), "capture_gap_s": round(capture, 3),
            "usual_capture_gap_s": round(usual_capture, 3), "deployments": len(deployments)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--fps-cap", type=float, default=10.0)
    parser.add_argument("--before", type=float, default=8.0, help="seconds on the first list")
    parser.add_argument("--after", type=float, default=8.0, help="seconds after the publish")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true", help="one JSON object on stdout")
    args = parser.parse_args(argv)
    runs = []
    with tempfile.TemporaryDirectory(prefix="lfr-switch-node-") as tmp:
        root = Path(tmp)
        bundles = lists(root)
        for n in range(args.repeat):
            folder = root / f"run{n}"
            folder.mkdir()
            runs.append(asyncio.run(one_run(folder, bundles, args)))
            print(json.dumps(runs[-1]), file=sys.stderr)
    result = {"runs": runs, "median": {key: statistics.median(r[key] for r in runs)
                                       for key in runs[0]}}
    if args.json:
        json.dump(result, sys.stdout)
        print()
    else:
        print("median", " ".join(f"{k}={v:g}" for k, v in result["median"].items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
