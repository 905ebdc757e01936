"""The walk-past with and without per-entry calibration (``[matching] crowd_weight``), side by side.

The video (``tools/make_walkpast.py``) plays once through a real deployment with plain cosines
(``crowd_weight`` 0: a bundle built without ``--crowd``), every frame's faces recorded. The same
detections are then replayed (``lfr.eval.video.replay_video``, which reproduces the deployment's
own alerts) through a search whose entries carry crowd means, as ``lfr watchlist build --crowd``
writes them (``lfr.watchlist.check.crowd_means``, ``lfr.matching.entry_offsets``), at each weight.

The reference crowd: every photo of the dataset's people who neither walk in the video nor are
listed, so it shares no face with the searches the walk-past counts. Their embeddings come from the
evaluation cache of the dataset (the same detect, align and embed path ``--crowd`` runs).

    PYTHONPATH=. .venv/bin/python tools/measure_walkpast_crowd.py --walk /tmp/walk \\
        --dataset ../shared/data/lfw-dev --threshold 0.4871 --weights 0,0.5 --json
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import msgspec

from lfr.cli.plugins import load_registry
from lfr.cli.watchlist import prepare_watchlist
from lfr.config import load_config
from lfr.eval.dataset import default_cache_dir, embed_images
from lfr.eval.identify import list_people
from lfr.eval.video import load_truth, replay_video, run_video
from lfr.matching import Matcher, configured_watchlist, crowd_offsets
from lfr.vision.defaults import default_analyzer
from lfr.watchlist.check import Crowd, crowd_means
from lfr.watchlist.index import ExactIndex


class Row(msgspec.Struct, frozen=True):
    crowd_weight: float
    threshold: float
    identified: int
    watchlisted: int
    false_alerts: int
    duplicate_alerts: int
    late_alerts: int
    missed: list[str]
    false_alert_names: list[str]


def reference_crowd(dataset: Path, excluded: set[str]) -> Crowd:
    people = {n: p for n, p in list_people(dataset).items() if n not in excluded}
    paths = [p for ps in people.values() for p in ps]
    emb = embed_images(paths, dataset, default_analyzer(), cache=default_cache_dir())
    ok = emb.ok
    owner = {p: n for n, ps in people.items() for p in ps}
    kept = tuple(p for p, good in zip(emb.paths, ok, strict=True) if good)
    return Crowd(vectors=emb.vectors[ok], people=tuple(owner[p] for p in kept), paths=kept,
                 root=str(dataset), images=len(emb.paths))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--walk", type=Path, required=True, help="make_walkpast.py's output")
    parser.add_argument("--dataset", type=Path, required=True, help="the dataset it was made from")
    parser.add_argument("--threshold", type=float, required=True)
    parser.add_argument("--weights", default="0,0.5", help="crowd weights, comma-separated")
    parser.add_argument("--compare", default="", help="more thresholds to replay at")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    truth = load_truth(args.walk / "truth.json")
    config = load_config(args.walk / "walkpast.toml")
    config = msgspec.structs.replace(
        config, matching=msgspec.structs.replace(config.matching, threshold=args.threshold,
                                                 crowd_weight=0.0))
    registry = load_registry()
    analyzer = prepare_watchlist(config, True, registry)
    live, recording = run_video(config, truth, registry, analyzer=analyzer, record=True)
    assert recording is not None
    played = time.perf_counter() - start

    walking = {p.person for p in truth.passers} | set(truth.watchlist)
    crowd = reference_crowd(args.dataset, walking)
    watchlist = configured_watchlist(config)
    persons = list(watchlist.persons)
    # The bundle's rows are its persons' rows in order, as crowd_means wants them.
    means = crowd_means(crowd, persons, watchlist.vectors)
    thresholds = sorted({args.threshold, *(float(t) for t in args.compare.split(",") if t)})
    out: list[Row] = []
    for weight in (float(w) for w in args.weights.split(",")):
        offsets = crowd_offsets(means, weight)
        index = ExactIndex()
        index.build(watchlist.vectors)
        matcher = Matcher(watchlist.labels, index, args.threshold, config.matching.top_k,
                          {p.id: float(o) for p, o in zip(persons, offsets, strict=True)}
                          if weight else {})
        replayed = msgspec.structs.replace(recording, search=matcher.rank)
        for t in thresholds:
            r = replay_video(replayed, truth, recording.tracking, t, config.quality.min_face_px)
            out.append(Row(crowd_weight=weight, threshold=t, identified=r.identified,
                           watchlisted=r.watchlisted, false_alerts=r.false_alerts,
                           duplicate_alerts=r.duplicate_alerts, late_alerts=r.late_alerts,
                           missed=list(r.missed), false_alert_names=[
                               f"{a.person_id} on {a.passer} ({a.score:.3f})" for a in r.false]))
    result = {
        "walk": str(args.walk),
        "passers": len(truth.passers),
        "frames": truth.frames,
        "crowd_faces": len(crowd.vectors),
        "crowd_people": len(set(crowd.people)),
        "deployment": {"identified": live.identified, "false_alerts": live.false_alerts,
                       "duplicate_alerts": live.duplicate_alerts},
        "rows": msgspec.to_builtins(out),
        "play_seconds": round(played, 1),
    }
    if args.json:
        print(msgspec.json.encode(result).decode())
    else:
        for row in out:
            print(f"weight {row.crowd_weight:g} threshold {row.threshold:.4f}: identified "
                  f"{row.identified} of {row.watchlisted}, false alerts {row.false_alerts}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
