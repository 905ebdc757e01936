"""Soak under overload: more cameras than the machine can process, for a bounded time.

    .venv/bin/python bench/soak.py [--seconds 60] [--cameras N] [--fps-cap 5] [--overload 4]
                                   [--clip PATH] [--json]

First measures how many frames per second this machine processes (one camera, offline, nothing
dropped), then runs enough real-time looping file cameras to offer ``--overload`` times that (by
default), for ``--seconds``. Sampled: the process's resident memory (VmRSS from /proc/self/status)
every second; the latency of every processed frame (capture to matcher done); per camera the frames
emitted, processed and dropped (frames are perishable: a camera's queue keeps the newest).

What it should show: memory flat after warm-up, latency bounded (it does not grow with the run),
and the excess dropped and counted per camera rather than queued.

Measured on 2 shared cores: with glibc's default malloc arenas, RSS climbs for about two minutes
(decoder and inference worker threads each fill an arena) and then stays level, and Python's own
heap (``sys.getallocatedblocks``) stays flat throughout; with ``MALLOC_ARENA_MAX=2`` RSS is level
after 20 s. Run 180 s or more to see the plateau without it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import anyio
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lfr.config import parse_config  # noqa: E402
from lfr.deployment import Deployment, DeploymentView  # noqa: E402
from lfr.plugins import load_plugins  # noqa: E402
from lfr.vision.defaults import default_analyzer  # noqa: E402
from lfr.watchlist import build_watchlist  # noqa: E402

DEMO = REPO.parent / "shared" / "data" / "demo"
CLIP = DEMO / "video" / "short_hamilton_clip.mp4"
PEOPLE = DEMO / "people"


def rss_mb() -> float:
    """Resident set size of this process, from /proc/self/status."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024.0
    raise RuntimeError("no VmRSS in /proc/self/status")


def config_for(
    tmp: Path, bundle: Path, clip: Path, cameras: int, fps_cap: float, realtime: bool, name: str
) -> Any:
    return parse_config(
        {
            "name": name,
            "location": "soak bench",
            "data_dir": str(tmp / name),
            "watchlist": {"bundle": str(bundle)},
            "cameras": [
                {
                    "name": f"cam{i:02d}",
                    "url": str(clip),
                    "realtime": realtime,
                    "loop": realtime,
                    "fps_cap": fps_cap,
                }
                for i in range(cameras)
            ],
            "notifiers": [{"kind": "jsonl"}],
        },
        "soak",
    )


def capacity(tmp: Path, bundle: Path, clip: Path, fps_cap: float) -> float:
    """Frames per second this machine takes through the whole pipeline (nothing dropped)."""
    config = config_for(tmp, bundle, clip, 1, fps_cap, realtime=False, name="calibrate")
    deployment = Deployment(config, load_plugins(), offline=True, once=True)
    start = time.monotonic()
    summary = anyio.run(deployment.run, False)
    return summary.frames / (time.monotonic() - start)


def pct(values: list[float], q: float) -> float | None:
    return round(float(np.percentile(values, q)) * 1000, 1) if values else None


def soak(
    tmp: Path, bundle: Path, clip: Path, cameras: int, fps_cap: float, seconds: float
) -> dict[str, Any]:
    config = config_for(tmp, bundle, clip, cameras, fps_cap, realtime=True, name="soak")
    latencies: dict[str, list[tuple[float, float]]] = {f"cam{i:02d}": [] for i in range(cameras)}
    memory: list[tuple[float, float]] = []
    blocks: list[int] = []
    t0 = time.monotonic()

    async def take_latencies(view: DeploymentView) -> None:
        with view.subscribe_frames(capacity=1024) as frames:
            async for report in frames:
                frame = report.faces.frame
                latencies[frame.camera].append(
                    (report.decided_mono - t0, report.decided_mono - frame.mono_time))

    async def sample_memory(view: DeploymentView) -> None:
        while True:
            memory.append((time.monotonic() - t0, rss_mb()))
            blocks.append(sys.getallocatedblocks())  # Python objects: a leak of them shows here
            await anyio.sleep(1.0)

    async def stop_after(view: DeploymentView) -> None:
        await anyio.sleep(seconds)
        view.stop()

    deployment = Deployment(config, load_plugins())

    async def main() -> Any:
        return await deployment.run(services=[take_latencies, sample_memory, stop_after])

    summary = anyio.run(main)
    elapsed = time.monotonic() - t0
    memory.append((elapsed, rss_mb()))
    # Steady state: after the first 20% (models loaded, queues filled, allocator warmed up).
    warm = elapsed * 0.2
    steady = [(t, m) for t, m in memory if t >= warm]
    times = np.array([t for t, _ in steady])
    mbs = np.array([m for _, m in steady])
    slope = float(np.polyfit(times, mbs, 1)[0]) * 60 if len(steady) >= 3 else 0.0
    per_camera = []
    for name, samples in latencies.items():
        cam = summary.cameras.get(name, {})
        emitted = int(cam.get("frames_emitted", 0))
        dropped = int(cam.get("dropped_frames", 0))
        per_camera.append(
            {
                "camera": name,
                "emitted": emitted,
                "processed": len(samples),
                "dropped": dropped,
                "dropped_pct": round(100.0 * dropped / emitted, 1) if emitted else 0.0,
                "latency_p50_ms": pct([s for _, s in samples], 50),
                "latency_p95_ms": pct([s for _, s in samples], 95),
            }
        )
    every = [s for samples in latencies.values() for s in samples]
    quarters = []
    for q in range(4):
        lo, hi = elapsed * q / 4, elapsed * (q + 1) / 4
        window = [s for t, s in every if lo <= t < hi]
        quarters.append(
            {
                "from_s": round(lo, 1),
                "to_s": round(hi, 1),
                "frames": len(window),
                "latency_p50_ms": pct(window, 50),
                "latency_p95_ms": pct(window, 95),
            }
        )
    return {
        "seconds": round(elapsed, 1),
        "cameras": cameras,
        "fps_cap": fps_cap,
        "offered_fps": round(cameras * fps_cap, 1),
        "processed_fps": round(summary.frames / summary.seconds, 2) if summary.seconds else 0.0,
        "frames_processed": summary.frames,
        "faces": summary.faces,
        "alerts": summary.alerts,
        "dropped_frames": summary.dropped_frames,
        "restarts": summary.restarts,
        "latency_p50_ms": pct([s for _, s in every], 50),
        "latency_p95_ms": pct([s for _, s in every], 95),
        "latency_max_ms": round(max((s for _, s in every), default=0.0) * 1000, 1),
        "latency_by_quarter": quarters,
        "memory_mb": {
            "after_warmup": round(float(mbs[0]), 1) if len(mbs) else None,
            "end": round(float(mbs[-1]), 1) if len(mbs) else None,
            "max": round(float(mbs.max()), 1) if len(mbs) else None,
            "growth_after_warmup": round(float(mbs[-1] - mbs[0]), 1) if len(mbs) else None,
            "slope_mb_per_min": round(slope, 2),
            "last_quarter_growth": round(float(mbs[-1] - mbs[len(mbs) * 3 // 4]), 1)
            if len(mbs) >= 4
            else None,
            "python_blocks_after_warmup": blocks[len(blocks) // 5] if blocks else None,
            "python_blocks_end": blocks[-1] if blocks else None,
            "samples": [[round(t, 1), round(m, 1)] for t, m in memory],
        },
        "per_camera": per_camera,
    }


def render(result: dict[str, Any], machine: dict[str, Any]) -> list[Table]:
    head = Table(title="soak", show_header=False, title_justify="left")
    mem = result["memory_mb"]
    rows = [
        ("machine capacity (1 camera, offline)", f"{machine['capacity_fps']:.1f} frames/s"),
        (
            "cameras x fps cap",
            f"{result['cameras']} x {result['fps_cap']:g} = "
            f"{result['offered_fps']:g} frames/s offered "
            f"({result['offered_fps'] / machine['capacity_fps']:.1f}x capacity)",
        ),
        ("run", f"{result['seconds']:.0f} s"),
        (
            "processed",
            f"{result['frames_processed']} frames ({result['processed_fps']:.1f}/s), "
            f"{result['faces']} faces, {result['alerts']} alerts",
        ),
        ("dropped", f"{result['dropped_frames']} frames"),
        (
            "latency p50 / p95 / max",
            f"{result['latency_p50_ms']} / {result['latency_p95_ms']} / "
            f"{result['latency_max_ms']} ms",
        ),
        (
            "RSS after warm-up / end / max",
            f"{mem['after_warmup']} / {mem['end']} / {mem['max']} MB",
        ),
        (
            "RSS growth after warm-up",
            f"{mem['growth_after_warmup']} MB ({mem['slope_mb_per_min']} MB/min), "
            f"{mem['last_quarter_growth']} MB in the last quarter",
        ),
        (
            "Python heap blocks after warm-up / end",
            f"{mem['python_blocks_after_warmup']} / {mem['python_blocks_end']}",
        ),
        ("actor restarts", str(result["restarts"])),
    ]
    for key, value in rows:
        head.add_row(key, value)
    quarters = Table(title="latency over the run", title_justify="left")
    for column in ("from s", "to s", "frames", "p50 ms", "p95 ms"):
        quarters.add_column(column, justify="right")
    for q in result["latency_by_quarter"]:
        quarters.add_row(
            str(q["from_s"]),
            str(q["to_s"]),
            str(q["frames"]),
            str(q["latency_p50_ms"]),
            str(q["latency_p95_ms"]),
        )
    cams = Table(title="per camera", title_justify="left")
    for column in ("camera", "emitted", "processed", "dropped", "dropped %", "p50 ms", "p95 ms"):
        cams.add_column(column, justify="right")
    for c in result["per_camera"]:
        cams.add_row(
            c["camera"],
            str(c["emitted"]),
            str(c["processed"]),
            str(c["dropped"]),
            f"{c['dropped_pct']:.1f}",
            str(c["latency_p50_ms"]),
            str(c["latency_p95_ms"]),
        )
    return [head, quarters, cams]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="soak length (default 60)")
    parser.add_argument(
        "--cameras",
        type=int,
        help="default: --overload x what this machine processes, at --fps-cap each",
    )
    parser.add_argument("--fps-cap", type=float, default=5.0, help="per camera (default 5)")
    parser.add_argument(
        "--overload",
        type=float,
        default=4.0,
        help="offered frames / machine capacity when --cameras is not given",
    )
    parser.add_argument("--clip", type=Path, default=CLIP)
    parser.add_argument("--people", type=Path, default=PEOPLE, help="watchlist photos")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    console = Console(stderr=True)
    with tempfile.TemporaryDirectory(prefix="lfr-soak-") as tmp_name:
        tmp = Path(tmp_name)
        bundle = tmp / "watchlist"
        build_watchlist(args.people, bundle, default_analyzer())
        capacity_fps = capacity(tmp, bundle, args.clip, args.fps_cap)
        cameras = args.cameras or max(1, math.ceil(args.overload * capacity_fps / args.fps_cap))
        console.print(
            f"capacity {capacity_fps:.1f} frames/s; soaking {cameras} cameras at "
            f"{args.fps_cap:g} fps for {args.seconds:g} s"
        )
        result = soak(tmp, bundle, args.clip, cameras, args.fps_cap, args.seconds)
    machine = {
        "capacity_fps": round(capacity_fps, 2),
        "cpus": len(os.sched_getaffinity(0)),
        # glibc's per-thread malloc arenas grow RSS for minutes before it levels off; =2 keeps it
        # flat from the start (see the docstring).
        "malloc_arena_max": os.environ.get("MALLOC_ARENA_MAX"),
    }
    if args.json:
        sys.stdout.write(json.dumps({"machine": machine, **result}) + "\n")
    else:
        for table in render(result, machine):
            console.print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
