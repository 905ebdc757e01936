"""Measure the watchlist (1:N) threshold on an LFW-style dataset (default: ../shared/data/lfw-dev).

For each gallery size, people are drawn with a fixed seed (those with 2+ images first, so there
are mated searches), each enrolled with one random image. Mated searches are the other images of
listed people (a hit only when the person's own entry ranks first); non-mated searches are
images of everyone else, scored by their best gallery match. Each person gives at most
``--max-probes-per-person`` searches, so a few heavily photographed people do not dominate.

    .venv/bin/python tools/measure_threshold.py [--json] [--sizes 100 400 1000] [--repeats 5]

LFW has a few label errors (one person under two names, a wrong face); at FPIR 1e-3 they set
the threshold, so ``--exclude`` can leave named people or images out for a second reading.
Embeddings are cached (``lfr.eval.default_cache_dir()``), so re-runs take seconds.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import msgspec
import numpy as np
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from lfr.eval.dataset import EmbeddingSet, default_cache_dir, embed_images
from lfr.eval.identify import pick
from lfr.eval.metrics import FAILED_SCORE, rates_at, tpir_at_fpir
from lfr.vision.defaults import default_analyzer
from lfr.vision.quality import QualityGate

DEFAULT_DATA = Path(__file__).resolve().parents[2] / "shared" / "data" / "lfw-dev"


class AtFpir(msgspec.Struct, frozen=True):
    fpir: float  # target
    threshold: float  # mean over repeats
    threshold_std: float
    tpir: float
    fpir_achieved: float


class AtThreshold(msgspec.Struct, frozen=True):
    threshold: float
    fpir: float
    tpir: float


class TopNonMated(msgspec.Struct, frozen=True):
    probe: str
    gallery: str
    score: float


class SizeResult(msgspec.Struct, frozen=True):
    gallery: int
    mated: int  # searches per repeat (mean)
    non_mated: int
    rank1: float  # share of mated searches whose own entry ranks first
    at_fpir: tuple[AtFpir, ...]
    at_threshold: tuple[AtThreshold, ...]
    top_non_mated: tuple[TopNonMated, ...]  # of the first repeat: often LFW label errors


def measure_size(
    emb: EmbeddingSet,
    people: dict[str, list[int]],
    size: int,
    seed: int,
    repeats: int,
    cap: int,
    fpirs: list[float],
    thresholds: list[float],
) -> SizeResult:
    vectors = emb.vectors
    multi = sorted(p for p, idx in people.items() if len(idx) >= 2)
    single = sorted(p for p, idx in people.items() if len(idx) == 1)
    if size > len(people) - 1:
        raise SystemExit(f"gallery size {size}: the dataset has only {len(people)} people")
    runs = []
    for r in range(repeats):
        rng = np.random.default_rng([seed, size, r])
        order = [*rng.permutation(multi).tolist(), *rng.permutation(single).tolist()]
        listed, others = order[:size], order[size:]
        enrol = [int(rng.choice(people[p])) for p in listed]
        mated = [
            (i, g)
            for g, p in enumerate(listed)
            for i in pick(rng, [i for i in people[p] if i != enrol[g]], cap)
        ]
        non_mated = [i for p in others for i in pick(rng, people[p], cap)]
        gallery = vectors[enrol]
        m_idx = np.array([i for i, _ in mated], np.int64)
        m_own = np.array([g for _, g in mated], np.int64)
        m_scores = vectors[m_idx] @ gallery.T
        own = m_scores[np.arange(len(mated)), m_own]
        first = m_scores.argmax(axis=1) == m_own
        mated_scores = np.where(first, own, FAILED_SCORE)
        nm_scores = vectors[non_mated] @ gallery.T
        nm_max = nm_scores.max(axis=1)
        top = np.argsort(-nm_max)[:3]
        tops = tuple(
            TopNonMated(
                probe=emb.paths[non_mated[t]],
                gallery=emb.paths[enrol[int(nm_scores[t].argmax())]],
                score=round(float(nm_max[t]), 4),
            )
            for t in top
        )
        runs.append((mated_scores, nm_max, float(first.mean()), tops))
    at_fpir = []
    for fpir in fpirs:
        res = [tpir_at_fpir(m, n, fpir) for m, n, _, _ in runs]
        th = [x.threshold for x in res]
        at_fpir.append(
            AtFpir(
                fpir=fpir,
                threshold=round(float(np.mean(th)), 4),
                threshold_std=round(float(np.std(th)), 4),
                tpir=round(float(np.mean([x.rate for x in res])), 4),
                fpir_achieved=float(np.mean([x.false_rate for x in res])),
            )
        )
    at_threshold = []
    for t in thresholds:
        rates = np.array([rates_at(m, n, t) for m, n, _, _ in runs])
        at_threshold.append(
            AtThreshold(
                threshold=t,
                tpir=round(float(rates[:, 0].mean()), 4),
                fpir=float(rates[:, 1].mean()),
            )
        )
    return SizeResult(
        gallery=size,
        mated=round(np.mean([len(m) for m, *_ in runs])),
        non_mated=round(np.mean([len(n) for _, n, *_ in runs])),
        rank1=round(float(np.mean([r[2] for r in runs])), 4),
        at_fpir=tuple(at_fpir),
        at_threshold=tuple(at_threshold),
        top_non_mated=runs[0][3],
    )


def render(results: list[SizeResult]) -> Table:
    table = Table(title="Watchlist threshold (1:N, one enrolment image each)")
    for name in (
        "gallery",
        "mated / non-mated",
        "rank-1",
        "operating point",
        "threshold",
        "FPIR",
        "TPIR",
    ):
        table.add_column(name, justify="right")
    for r in results:
        first = (str(r.gallery), f"{r.mated} / {r.non_mated}", f"{r.rank1:.3f}")
        for a in r.at_fpir:
            table.add_row(
                *first,
                f"FPIR {a.fpir:g}",
                f"{a.threshold:.3f} ± {a.threshold_std:.3f}",
                f"{a.fpir_achieved:.4f}",
                f"{a.tpir:.3f}",
            )
            first = ("", "", "")
        for t in r.at_threshold:
            table.add_row(
                *first,
                "cosine",
                f"{t.threshold:.3f}",
                f"{t.fpir:.4f}",
                f"{t.tpir:.3f}",
                end_section=t is r.at_threshold[-1],
            )
    return table


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="<Name>/<image>.jpg tree")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 400, 1000])
    parser.add_argument("--fpir", type=float, nargs="+", default=[1e-2, 1e-3])
    parser.add_argument("--thresholds", type=float, nargs="+", default=[0.363, 0.40, 0.45, 0.50])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=5, help="gallery draws averaged")
    parser.add_argument("--max-probes-per-person", type=int, default=10)
    parser.add_argument("--det-threshold", type=float, default=0.5)
    parser.add_argument("--cache", type=Path, default=default_cache_dir())
    parser.add_argument("--no-cache", action="store_true")
    parser.add_argument(
        "--exclude",
        nargs="+",
        default=[],
        metavar="NAME_OR_IMAGE",
        help="people (Name) or images (Name/Name_0001.jpg) to leave out, e.g. known label errors",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    args = parser.parse_args(argv)

    start = time.perf_counter()
    files = sorted(p.relative_to(args.data).as_posix() for p in args.data.glob("*/*.jpg"))
    if not files:
        raise SystemExit(f"{args.data}: no <Name>/<image>.jpg files found")
    analyzer = default_analyzer(score_threshold=args.det_threshold, gate=QualityGate(min_face_px=0))
    err = Console(stderr=True)
    with Progress(console=err, transient=True) as bar:
        task = bar.add_task("embedding", total=len(files))
        emb = embed_images(
            files,
            args.data,
            analyzer,
            progress=lambda done, total: bar.update(task, completed=done),
            cache=None if args.no_cache else args.cache,
        )
    embed_s = time.perf_counter() - start
    excluded = set(args.exclude)
    people: dict[str, list[int]] = defaultdict(list)
    for i, (path, ok) in enumerate(zip(emb.paths, emb.ok, strict=True)):
        name = path.split("/")[0]
        if ok and name not in excluded and path not in excluded:
            people[name].append(i)
    results = [
        measure_size(
            emb,
            people,
            size,
            args.seed,
            args.repeats,
            args.max_probes_per_person,
            args.fpir,
            args.thresholds,
        )
        for size in args.sizes
    ]
    summary = {
        "data": str(args.data),
        "model": emb.model,
        "images": len(files),
        "failed_images": sorted(emb.failed),
        "people": len(people),
        "seed": args.seed,
        "repeats": args.repeats,
        "max_probes_per_person": args.max_probes_per_person,
        "excluded": sorted(excluded),
        "embed_seconds": round(embed_s, 1),
        "seconds": round(time.perf_counter() - start, 1),
        "sizes": results,
    }
    if args.json:
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
        return 0
    out = Console()
    out.print(render(results))
    out.print(
        f"{len(files)} images, {len(people)} people, {len(emb.failed)} failed; "
        f"{args.repeats} draws, seed {args.seed}; embedding {embed_s:.0f} s, "
        f"total {summary['seconds']} s"
    )
    for r in results:
        tops = ", ".join(f"{t.probe} ~ {t.gallery} {t.score:.3f}" for t in r.top_non_mated)
        out.print(f"gallery {r.gallery}: highest non-mated: {tops}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
