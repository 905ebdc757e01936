"""End to end: `lfr demo --json` on the shared demo data, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys

import av
import pytest
from paths import CLIP, DEMO, REPO


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    proc = subprocess.run(
        [sys.executable, "-m", "lfr.cli", "demo", "--json", "--data", str(DEMO), "--out", str(out)],
        cwd=REPO, capture_output=True, text=True, timeout=900, check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout), out, proc


@pytest.mark.slow
def test_demo_alerts_on_miranda_in_the_clip(demo_run):
    result, _, _ = demo_run
    clip = [a for a in result["alerts"] if a["camera"] == "short_hamilton_clip"]
    people = [a["person_id"] for a in clip]
    # Miranda on stage from the first frame; Obama in the audience after the cut at frame 211
    # (3/4 view). One alert each: people are tracked, not alerted per frame.
    assert sorted(people) == ["lin_manuel_miranda", "obama"]
    (obama,) = [a for a in clip if a["person_id"] == "obama"]
    assert obama["frame_index"] >= 211
    for alert in result["alerts"]:
        assert set(alert) >= {"id", "person_id", "name", "score", "camera", "time"}
        assert alert["score"] >= alert["threshold"]


@pytest.mark.slow
def test_demo_processes_every_frame_and_photo(demo_run):
    result, _, _ = demo_run
    summary = result["summary"]
    assert summary["dropped_frames"] == 0
    clip = summary["cameras"]["short_hamilton_clip"]
    with av.open(str(CLIP)) as container:  # counted independently of lfr
        frames_in_clip = sum(1 for _ in container.decode(video=0))
    assert clip["frames_emitted"] == clip["frames_decoded"] == frames_in_clip
    photos = sorted(p.name for p in (DEMO / "scenes").iterdir())
    # every frame of the clip and every photo went through detection and matching
    assert summary["frames"] == clip["frames_emitted"] + len(photos)
    scene_alerts = {(a["camera"], a["person_id"]) for a in result["alerts"]}
    assert ("obama_and_biden.jpg", "obama") in scene_alerts
    assert ("obama_and_biden.jpg", "biden") in scene_alerts


@pytest.mark.slow
def test_demo_stdout_is_only_json_and_records_are_kept(demo_run):
    result, out, proc = demo_run
    assert proc.stdout.count("\n") == 1  # one JSON object, nothing else
    audit = (out / "data" / "audit.jsonl").read_text().splitlines()
    kinds = [json.loads(line)["kind"] for line in audit]
    # Seals (signatures over the chain) open and close the log around the run's records.
    assert kinds[:2] == ["seal", "deployment_start"] and kinds[-2:] == ["deployment_stop", "seal"]
    assert kinds.count("alert") == len(result["alerts"])
