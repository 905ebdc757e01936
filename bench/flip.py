"""The flip only where it changes a decision: how often does embedding the mirrored face too
change an identification at the threshold, and what would flipping only near it keep?

    PYTHONPATH=. .venv/bin/python bench/flip.py [--dataset ../shared/data/lfw-dev] [--json]

A deployment enrols its watchlist with the flip (enrolment cost does not matter) and embeds each
camera face once. Per search this compares, on the `lfr eval identify` protocol (400 listed, one
image each, at most 10 mated searches per person, seeds 1-5, every other person's images as
non-mated searches):

- always flip: the probe embedded with its mirror (today's default);
- never flip: the probe embedded as it is, against the same (flipped) gallery;
- flip within a margin: the probe embedded as it is; when its best score lies within ``margin``
  of the threshold, it is embedded again with its mirror and that score decides. The cost is one
  embedding per search plus one for the share of searches within the margin.

Reports TPIR at FPIR 1e-3 (the threshold from the non-mated scores), TPIR and false alerts at the
configured threshold (0.50), the share of searches that needed the flip, and how many decisions at
the threshold differ from always flipping. Embeddings come from the evaluation cache of
``lfr eval identify`` with and without the flip (computed here when missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from lfr.config import DEFAULT_THRESHOLD
from lfr.eval.dataset import default_cache_dir, default_dataset
from lfr.eval.identify import MISS, embed_dataset, identification_rates, pick, rate_key
from lfr.vision.defaults import default_analyzer
from lfr.vision.quality import QualityGate

MARGINS = (0.0, 0.02, 0.05, 0.1, 0.2)


def searches(people: dict[str, list[str]], index: dict[str, int], ok: np.ndarray, seed: int,
             listed_count: int, max_probes: int = 10
             ) -> tuple[list[int], list[int], list[int], list[int]]:
    """(gallery rows, mated rows, their owners, non-mated rows): `lfr eval identify`'s draw with
    one enrolment image (lfr.eval.identify.run_seed)."""
    rows = {name: [index[p] for p in paths] for name, paths in people.items()}
    found = {name: [i for i in idx if ok[i]] for name, idx in rows.items()}
    eligible = sorted(n for n in rows if len(rows[n]) >= 2 and len(found[n]) >= 1)
    rng = np.random.default_rng(seed)
    listed = sorted(str(n) for n in rng.choice(eligible, listed_count, replace=False))
    gallery: list[int] = []
    mated: list[int] = []
    owners: list[int] = []
    for g, name in enumerate(listed):
        enrol = pick(rng, found[name], 1)
        gallery += enrol
        probes = pick(rng, [i for i in rows[name] if i not in enrol], max_probes)
        mated += probes
        owners += [g] * len(probes)
    chosen = set(listed)
    non_mated = [i for n in sorted(rows) if n not in chosen for i in rows[n]]
    return gallery, mated, owners, non_mated


def decide(plain: np.ndarray, flipped: np.ndarray, threshold: float, margin: float | None
           ) -> tuple[np.ndarray, np.ndarray]:
    """Per search, the score row used (plain, or flipped when the plain best score lies within
    ``margin`` of the threshold; ``None``: always flipped) and whether the flip was needed."""
    if margin is None:
        return flipped, np.ones(len(plain), bool)
    near = np.abs(plain.max(axis=1) - threshold) <= margin
    return np.where(near[:, None], flipped, plain), near


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dataset", type=Path, default=default_dataset())
    parser.add_argument("--gallery-size", type=int, default=400)
    parser.add_argument("--seeds", default="1,2,3,4,5")
    parser.add_argument("--threshold", type=float, default=DEFAULT_THRESHOLD)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    gate = QualityGate(min_face_px=0)
    cache = default_cache_dir()
    people, _, flip = embed_dataset(args.dataset, default_analyzer(flip=True, gate=gate),
                                    cache=cache)
    people_plain, _, plain = embed_dataset(args.dataset, default_analyzer(flip=False, gate=gate),
                                           cache=cache)
    if plain.paths != flip.paths or people_plain != people:
        raise SystemExit("the two embedding sets cover different images")
    ok = flip.ok & plain.ok
    index = flip.index()
    key = rate_key(1e-3)
    variants: dict[str, float | None] = {"always flip": None}
    variants.update({f"flip within {m:g}" if m else "never flip": m for m in MARGINS})
    results: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
    for seed in (int(s) for s in args.seeds.split(",")):
        gallery, mated, owners, non_mated = searches(people, index, ok, seed, args.gallery_size)
        gal = flip.vectors[gallery]
        owner = np.asarray(owners)
        reference: dict[str, np.ndarray] = {}
        for name, margin in variants.items():
            m_rows, m_near = decide(plain.vectors[mated] @ gal.T, flip.vectors[mated] @ gal.T,
                                    args.threshold, margin)
            n_rows, n_near = decide(plain.vectors[non_mated] @ gal.T,
                                    flip.vectors[non_mated] @ gal.T, args.threshold, margin)
            own = m_rows[np.arange(len(mated)), owner]
            first = m_rows.argmax(axis=1) == owner
            mated_scores = np.where(first & ok[mated], own, MISS)
            non_scores = np.where(ok[non_mated], n_rows.max(axis=1), MISS)
            rates = identification_rates(mated_scores, non_scores, args.threshold)
            alerts = np.concatenate([mated_scores > args.threshold, non_scores > args.threshold])
            if margin is None:
                reference["alerts"] = alerts
            changed = int(np.sum(alerts != reference["alerts"]))
            out = results[name]
            for metric, value in (
                    ("tpir_at_fpir_0.001", rates.tpir_at_fpir[key] or 0.0),
                    ("tpir_at_threshold", rates.tpir_at_threshold),
                    ("false_alerts_at_threshold", rates.false_alerts_at_threshold),
                    ("flipped_share", float(np.concatenate([m_near, n_near]).mean())),
                    ("decisions_changed_vs_always", changed),
                    ("searches", len(alerts))):
                out.setdefault(metric, []).append(float(value))
    summary = {name: {metric: round(float(np.mean(values)), 4) for metric, values in r.items()}
               for name, r in results.items()}
    if args.json:
        print(json.dumps({"threshold": args.threshold, "seeds": args.seeds,
                          "gallery_size": args.gallery_size, "variants": summary}, indent=2))
        return 0
    print(f"threshold {args.threshold}, {args.gallery_size} listed, seeds {args.seeds} (means)")
    print(f"{'':18s} {'TPIR@FPIR1e-3':>13s} {'TPIR@t':>7s} {'false@t':>7s} {'flipped':>8s} "
          f"{'changed':>8s} (of {summary['always flip']['searches']:.0f} searches)")
    for name, r in summary.items():
        print(f"{name:18s} {r['tpir_at_fpir_0.001']:13.4f} {r['tpir_at_threshold']:7.4f} "
              f"{r['false_alerts_at_threshold']:7.1f} {r['flipped_share']:8.3f} "
              f"{r['decisions_changed_vs_always']:8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
