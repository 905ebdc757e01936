"""`lfr demo` on a walk-past video, this build against another git revision, side by side.

    .venv/bin/python bench/walkpast_demo.py --rev 73ccde4 [--passers 60] [--repeat 2] [--json]

Makes a walk-past video from the dataset's faces (tools/make_walkpast.py) and a demo folder of it
(the watchlist's photos as ``people/``, the video in ``video/``), checks ``--rev`` out into a
temporary git worktree and runs ``lfr demo --data DIR --json`` of both builds with this Python
(the revision's code on PYTHONPATH), alternating, ``--repeat`` times each. Each run starts a fresh
process with a fresh output folder: start-up and enrolment are in its wall time. Per build: the
median wall time, frames the summary counts against the video's frames counted with PyAV,
dropped frames, and the alerts scored against the walk-past's truth (people identified while in
view, false alerts, median time from first appearance to the alert's evidence frame). The
ratio is this build's median wall time over the revision's; the CPU time (user + system, every
thread) is printed beside it, as a shared machine's load moves wall times more than CPU times.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import av
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lfr.eval.video import VideoAlert, load_truth, score_video  # noqa: E402


def make_demo_folder(dataset: Path, tmp: Path, args: argparse.Namespace) -> tuple[Path, Path]:
    """The walk-past (its truth) and a demo folder holding its watchlist and video."""
    walk = tmp / "walk"
    subprocess.run(
        [sys.executable, str(REPO / "tools" / "make_walkpast.py"), "--dataset", str(dataset),
         "--out", str(walk), "--passers", str(args.passers), "--watchlisted",
         str(args.watchlisted), "--seed", str(args.seed), "--size", args.size,
         "--fps", str(args.fps)],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    demo = tmp / "demo"
    shutil.copytree(walk / "watchlist", demo / "people")
    (demo / "video").mkdir()
    shutil.copy2(walk / "walkpast.mp4", demo / "video" / "walkpast.mp4")
    return walk, demo


def count_frames(video: Path) -> int:
    with av.open(str(video)) as container:  # independently of lfr
        return sum(1 for _ in container.decode(video=0))


def checkout(rev: str, where: Path) -> str:
    """``rev`` checked out (detached) at ``where``; returns its full commit id."""
    commit = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--verify", f"{rev}^{{commit}}"],
                            check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run(["git", "-C", str(REPO), "worktree", "add", "--detach", str(where), commit],
                   check=True, capture_output=True, text=True)
    return commit


def children_cpu_s() -> float:
    used = resource.getrusage(resource.RUSAGE_CHILDREN)
    return used.ru_utime + used.ru_stime


def run_demo(code: Path, demo: Path, out: Path) -> tuple[float, float, dict[str, Any]]:
    """One `lfr demo --data DEMO --json` of the code at ``code``, in a fresh process: its wall
    time, its CPU time (user + system, all threads) and its output."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    cpu = children_cpu_s()
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", "import sys; from lfr.cli import main; sys.exit(main())",
         "demo", "--data", str(demo), "--json", "--out", str(out)],
        cwd=code, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    cpu = children_cpu_s() - cpu
    if proc.returncode != 0:
        raise SystemExit(f"lfr demo of {code} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    result = json.loads(proc.stdout)
    # The code that ran is the code asked for, not an installed lfr.
    check = subprocess.run([sys.executable, "-c", "import lfr; print(lfr.__file__)"], cwd=code,
                           env=env, capture_output=True, text=True, check=True).stdout.strip()
    if not Path(check).resolve().is_relative_to(code.resolve()):
        raise SystemExit(f"{code}: PYTHONPATH ran lfr from {check}, not from the checkout")
    return seconds, cpu, result


def score(result: dict[str, Any], walk: Path) -> dict[str, Any]:
    truth = load_truth(walk / "truth.json")
    alerts = [VideoAlert(person_id=a["person_id"], score=a["score"], frame_index=a["frame_index"],
                         box=tuple(a["box"]), decided_frame=a["frame_index"])
              for a in result["alerts"]]
    summary = result["summary"]
    report = score_video(truth, alerts, frames=summary["frames"], threshold=0.0, fusion="")
    camera = summary["cameras"].get("walkpast", {})
    return {"frames": summary["frames"], "frames_decoded": camera.get("frames_decoded"),
            "dropped_frames": summary["dropped_frames"], "faces": summary["faces"],
            "alerts": len(alerts), "identified": report.identified,
            "watchlisted": report.watchlisted, "false_alerts": report.false_alerts,
            "time_to_alert_median_s": report.time_to_alert_s.median}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rev", default="73ccde4", help="git revision to compare against")
    parser.add_argument("--dataset", type=Path, default=REPO.parent / "shared" / "data" / "lfw-dev")
    parser.add_argument("--passers", type=int, default=60)
    parser.add_argument("--watchlisted", type=int, default=12)
    parser.add_argument("--seed", type=int, default=5)
    parser.add_argument("--size", default="640x360", help="WIDTHxHEIGHT")
    parser.add_argument("--fps", type=float, default=10.0)
    parser.add_argument("--repeat", type=int, default=1, help="runs of each build (alternating)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    console = Console(stderr=True)
    builds: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="lfr-walkdemo-") as tmp_name:
        tmp = Path(tmp_name)
        walk, demo = make_demo_folder(args.dataset, tmp, args)
        video_frames = count_frames(demo / "video" / "walkpast.mp4")
        console.print(f"walk-past: {args.passers} passers, {args.watchlisted} listed, "
                      f"{video_frames} frames at {args.size}")
        other = tmp / "rev"
        commit = checkout(args.rev, other)
        try:
            codes = {"this build": REPO, f"{args.rev}": other}
            runs: dict[str, list[float]] = {name: [] for name in codes}
            cpus: dict[str, list[float]] = {name: [] for name in codes}
            for i in range(args.repeat):
                order = list(codes) if i % 2 == 0 else list(reversed(codes))
                for name in order:
                    seconds, cpu, result = run_demo(codes[name], demo,
                                                    tmp / f"out-{i}-{name.replace(' ', '_')}")
                    runs[name].append(seconds)
                    cpus[name].append(cpu)
                    builds[name] = score(result, walk)
                    console.print(f"{name}: {seconds:.1f} s, {cpu:.1f} CPU s")
        finally:
            subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(other)],
                           check=False, capture_output=True)
    for name, times in runs.items():
        builds[name]["wall_s"] = [round(t, 2) for t in times]
        builds[name]["wall_s_median"] = round(statistics.median(times), 2)
        builds[name]["cpu_s"] = [round(t, 2) for t in cpus[name]]
        builds[name]["cpu_s_median"] = round(statistics.median(cpus[name]), 2)
        builds[name]["every_frame"] = builds[name]["frames"] == video_frames
    this, base = builds["this build"], builds[args.rev]
    ratio = this["wall_s_median"] / base["wall_s_median"]
    cpu_ratio = this["cpu_s_median"] / base["cpu_s_median"]
    out = {"rev": args.rev, "commit": commit, "video_frames": video_frames, "cpus": os.cpu_count(),
           "load_average": os.getloadavg(), "builds": builds, "ratio": round(ratio, 3),
           "cpu_ratio": round(cpu_ratio, 3),
           "target_met": ratio <= 0.25 and this["identified"] >= base["identified"]
           and this["false_alerts"] <= base["false_alerts"]}
    if args.json:
        print(json.dumps(out, indent=2))
        return
    table = Table(title=f"lfr demo on a walk-past ({video_frames} frames, {os.cpu_count()} CPUs)",
                  title_justify="left")
    for column in ("build", "wall s (median)", "CPU s (median)", "frames", "dropped",
                   "identified", "false alerts", "time to alert (median s)"):
        table.add_column(column)
    for name, b in builds.items():
        table.add_row(name, f"{b['wall_s_median']:.1f}", f"{b['cpu_s_median']:.1f}",
                      f"{b['frames']}/{video_frames}",
                      str(b["dropped_frames"]), f"{b['identified']}/{b['watchlisted']}",
                      str(b["false_alerts"]), str(b["time_to_alert_median_s"]))
    Console().print(table)
    verdict = "met" if out["target_met"] else "NOT met"
    Console().print(f"wall time ratio (this build / {args.rev}): {ratio:.3f} (CPU time "
                    f"{cpu_ratio:.3f}, load average {os.getloadavg()[0]:.1f}); target (<= 0.25, as "
                    f"many identified, no more false alerts) {verdict}")


if __name__ == "__main__":
    main()
