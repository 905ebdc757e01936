"""Which faces to embed, side by side on one walk-past: identified, false alerts, time to alert.

    .venv/bin/python bench/embedding_policy.py --walk /tmp/walk [--threshold 0.4871]
        [--variant '{"policy": "every_face"}'] [--variant '{}'] ... [--json]

``--walk``: a folder made by tools/make_walkpast.py (walkpast.mp4, truth.json, watchlist/). Every
frame is detected once; then each variant (``[pipeline.embedding]`` settings as JSON; default:
every_face and the defaults) replays the detections through its embedding planner and the alert
policy as the deployment's detector and matcher do (the policy's track news goes back to the
planner after each frame), embedding only the faces the planner chooses. A face's embedding is
computed once and shared by the variants, so they differ only in which faces they embed. Per
variant: faces embedded, people identified while in view, false alerts, late alerts and the time
from first appearance to the alert (scored as `lfr eval video` scores a deployment's alerts).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import av
import numpy as np
from rich.console import Console
from rich.table import Table

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from lfr.config import parse_config  # noqa: E402
from lfr.eval.video import VideoAlert, load_truth, score_video  # noqa: E402
from lfr.matching import Matcher  # noqa: E402
from lfr.messages import Face  # noqa: E402
from lfr.pipeline.detector import NO_CROP  # noqa: E402
from lfr.pipeline.embedding_plan import (  # noqa: E402
    EmbeddingPlanner,
    EmbeddingSettings,
    PlannedFace,
    TrackNews,
)
from lfr.pipeline.wiring import build_analyzer  # noqa: E402
from lfr.plugins import load_plugins  # noqa: E402
from lfr.policy import AlertPolicy  # noqa: E402
from lfr.tracking import Verdict  # noqa: E402
from lfr.vision.analyzer import AnalyzedFace, FaceAnalyzer  # noqa: E402
from lfr.watchlist import build_watchlist, load_bundle  # noqa: E402


class Replay:
    """One walk-past's detections, and the embeddings of the faces any variant chose."""

    def __init__(self, walk: Path, threshold: float) -> None:
        self.config = parse_config({"name": "policy", "data_dir": tempfile.gettempdir()},
                                   "policy")
        self.analyzer: FaceAnalyzer = build_analyzer(self.config, load_plugins())
        bundle = Path(tempfile.mkdtemp(prefix="lfr-policy-")) / "bundle"
        build_watchlist(walk / "watchlist", bundle, self.analyzer)
        self.search = Matcher.for_watchlist(load_bundle(bundle), threshold).rank
        self.threshold = threshold
        self.truth = load_truth(walk / "truth.json")
        with av.open(str(walk / "walkpast.mp4")) as container:
            self.frames = [self.analyzer.detect(frame.to_ndarray(format="bgr24"))
                           for frame in container.decode(video=0)]
        self._embeddings: dict[tuple[int, int], np.ndarray | None] = {}

    def embedding(self, frame: int, index: int, face: AnalyzedFace) -> np.ndarray | None:
        key = (frame, index)
        if key not in self._embeddings:
            self._embeddings[key] = self.analyzer.embed([face])[0].embedding
        return self._embeddings[key]

    def run(self, settings: EmbeddingSettings) -> dict[str, Any]:
        tracking = self.config.matching.tracking
        policy = AlertPolicy(self.search, self.threshold, tracking, self.config.matching.cooldown_s)
        planner = EmbeddingPlanner(settings, self.threshold, tracking.decision_px)
        fps, alerts, embedded = self.truth.fps, [], 0

        def raise_(verdicts: list[Verdict], decided: int) -> None:
            alerts.extend(VideoAlert(person_id=v.person_id, score=v.score,
                                     frame_index=v.face.frame_index, box=v.face.detection.box,
                                     decided_frame=decided) for v in verdicts)

        for n, found in enumerate(self.frames):
            chosen = planner.plan(n, [PlannedFace(f.detection.box, f.quality.score,
                                                  f.quality.passed) for f in found])
            faces = []
            for i, (face, embed) in enumerate(zip(found, chosen, strict=True)):
                if face.quality.passed:
                    embedded += embed
                    faces.append(Face(
                        camera="walk", frame_index=n, wall_time=0.0, mono_time=n / fps,
                        detection=face.detection, quality=face.quality.score,
                        embedding=self.embedding(n, i, face) if embed else None, crop=NO_CROP))
            step = policy.observe("walk", faces, n / fps)
            raise_(step.verdicts, n)
            planner.news([TrackNews(n, f.detection.box, s.decided, s.judged, s.evidence,
                                    s.best_score, track_id, f.embedding is not None)
                          for f, s, track_id in zip(faces, step.states, step.track_ids,
                                                    strict=True)])
        raise_(policy.flush(len(self.frames) / fps), len(self.frames))
        report = score_video(self.truth, alerts, frames=len(self.frames),
                             threshold=self.threshold, fusion=tracking.fusion)
        return {"faces": sum(f.quality.passed for found in self.frames for f in found),
                "embedded": embedded, "identified": report.identified,
                "watchlisted": report.watchlisted, "false_alerts": report.false_alerts,
                "late_alerts": report.late_alerts, "duplicate_alerts": report.duplicate_alerts,
                "time_to_alert_median_s": report.time_to_alert_s.median,
                "time_to_alert_p90_s": report.time_to_alert_s.p90}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--walk", type=Path, required=True, help="tools/make_walkpast.py output")
    parser.add_argument("--threshold", type=float, default=0.4871)
    parser.add_argument("--variant", action="append", type=json.loads,
                        help='[pipeline.embedding] settings as JSON, e.g. \'{"interval": 5}\'')
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args()
    variants = args.variant or [{"policy": "every_face"}, {}]
    replay = Replay(args.walk, args.threshold)
    rows = [{"settings": v, **replay.run(EmbeddingSettings(**v))} for v in variants]
    if args.json:
        print(json.dumps({"walk": str(args.walk), "threshold": args.threshold, "rows": rows},
                         indent=2))
        return
    table = Table(title=f"embedding policies on {args.walk}", title_justify="left")
    for column in ("settings", "embedded / faces", "identified", "false alerts", "late",
                   "time to alert median / p90 s"):
        table.add_column(column)
    for r in rows:
        table.add_row(json.dumps(r["settings"]), f"{r['embedded']} / {r['faces']}",
                      f"{r['identified']} / {r['watchlisted']}", str(r["false_alerts"]),
                      str(r["late_alerts"]),
                      f"{r['time_to_alert_median_s']} / {r['time_to_alert_p90_s']}")
    Console().print(table)


if __name__ == "__main__":
    main()
