"""Exact vs annoy (lfr's built-ins) vs hnsw (this plugin): missed alerts at the threshold, build
time and query time, on clustered synthetic embeddings and on real lfw-dev embeddings.

    OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 python plugins/lfr-hnswlib/bench.py \
        --sizes 10000 100000 --lfw ../shared/data/lfw-dev --json bench.json

An alert is raised for a query when its best exact cosine is >= the threshold (0.50, lfr's
default). A *missed alert* is a query that alerts with the exact index and not with the backend
(the backend did not return any row above the threshold); *wrong person* is a query for which
the backend alerts with another person than the exact index does. Both come from rows the
approximate search did not find: scores are exact for every backend (exact re-ranking).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgspec
import numpy as np
from lfr.testing import clustered_embeddings
from lfr.watchlist.index import AnnoyIndex, ExactIndex, IndexBackend

THRESHOLD = 0.50


class Result(msgspec.Struct):
    dataset: str
    rows: int
    queries: int
    backend: str
    build_s: float
    query_ms_p50: float  # one query per call
    query_ms_p95: float
    alerts: int  # queries that alert with the exact index
    missed_alerts: int
    wrong_person: int


Variant = tuple[str, Callable[[Any], None]]  # (label, set the query-time parameter)


def backends(
    build_threads: int, m: int, ef_construction: int
) -> list[tuple[str, Callable[[], IndexBackend], list[Variant]]]:
    """Each backend is built once per dataset, then searched with each query-time variant."""
    from lfr_hnswlib import HnswIndex

    def search_k(value: int | None) -> Callable[[Any], None]:
        return lambda index: setattr(index, "search_k", value)

    def ef(value: int) -> Callable[[Any], None]:
        return lambda index: setattr(index, "ef_search", value)

    return [
        ("exact", ExactIndex, [("", lambda index: None)]),
        (
            "annoy 50 trees",
            lambda: AnnoyIndex(n_trees=50),
            [
                ("search_k default", search_k(None)),
                ("search_k 20k", search_k(20_000)),
                ("search_k 100k", search_k(100_000)),
            ],
        ),
        (
            f"hnsw M {m}",
            lambda: HnswIndex(m=m, ef_construction=ef_construction, build_threads=build_threads),
            [(f"ef {value}", ef(value)) for value in (100, 256, 512, 1024)],
        ),
    ]


def alerts_of(index: IndexBackend, queries: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per query: the alerted person's label, or -1 (distractor rows are labelled -2)."""
    # In chunks: the exact index scores every row at once (a million rows x 2,000 queries x 4
    # bytes would be 8 GB).
    found = [index.search(queries[i : i + 100], 10) for i in range(0, len(queries), 100)]
    scores = np.concatenate([s for s, _ in found])
    rows = np.concatenate([r for _, r in found])
    best = np.where(scores[:, 0] >= THRESHOLD, labels[rows[:, 0]], -1)
    return np.asarray(best)


def run(
    dataset: str,
    gallery: np.ndarray,
    labels: np.ndarray,
    queries: np.ndarray,
    make: list[tuple[str, Callable[[], IndexBackend], list[Variant]]],
    timed: int,
    skip: set[str],
) -> list[Result]:
    results = []
    truth: np.ndarray | None = None
    for name, factory, variants in make:
        if any(s in name for s in skip):
            continue
        index = factory()
        start = time.perf_counter()
        index.build(gallery)
        build_s = time.perf_counter() - start
        for label, apply in variants:
            apply(index)
            times = []
            for q in queries[:timed]:
                start = time.perf_counter()
                index.search(q[None, :], 10)
                times.append(time.perf_counter() - start)
            got = alerts_of(index, queries, labels)
            if truth is None:  # exact comes first
                truth = got
            alerted = truth >= 0
            result = Result(
                dataset=dataset,
                rows=len(gallery),
                queries=len(queries),
                backend=f"{name}, {label}" if label else name,
                build_s=round(build_s, 2),
                query_ms_p50=round(float(np.percentile(times, 50)) * 1000, 3),
                query_ms_p95=round(float(np.percentile(times, 95)) * 1000, 3),
                alerts=int(alerted.sum()),
                missed_alerts=int((alerted & (got < 0)).sum()),
                wrong_person=int((alerted & (got >= 0) & (got != truth)).sum()),
            )
            print(msgspec.json.encode(result).decode(), file=sys.stderr, flush=True)
            results.append(result)
        del index
    return results


def lfw_embeddings(images: Path) -> tuple[np.ndarray, list[str]]:
    """lfr's own embeddings of every lfw-dev image (the evaluation cache makes this quick)."""
    from lfr.eval.dataset import default_cache_dir, embed_images
    from lfr.vision.defaults import default_analyzer
    from lfr.vision.quality import QualityGate

    paths = sorted(str(p.relative_to(images)) for p in images.glob("*/*.jpg"))
    analyzer = default_analyzer(score_threshold=0.5, gate=QualityGate(min_face_px=0))
    found = embed_images(paths, images, analyzer, cache=default_cache_dir())
    ok = found.ok
    return found.vectors[ok], [p.split("/")[0] for p, good in zip(paths, ok, strict=True) if good]


def lfw_sets(
    vectors: np.ndarray, people: list[str], distractors: int, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Gallery: the first image of 70% of the people (plus ``distractors`` rows drawn from a
    Gaussian fitted to the embeddings, labelled -2); queries: every other image (the other 30% of
    the people are not enrolled: impostors)."""
    rng = np.random.default_rng(seed)
    names = sorted(set(people))
    enrolled = set(rng.permutation(names)[: int(0.7 * len(names))].tolist())
    ids = {n: i for i, n in enumerate(names)}
    first: dict[str, int] = {}
    queries = []
    for row, person in enumerate(people):
        if person in enrolled and person not in first:
            first[person] = row
        else:
            queries.append(row)
    rows = sorted(first.values())
    gallery = vectors[rows]
    labels = np.array([ids[people[r]] for r in rows])
    if distractors:
        mean, cov = vectors.mean(axis=0), np.cov(vectors, rowvar=False)
        fake = rng.multivariate_normal(mean, cov, distractors).astype(np.float32)
        fake /= np.linalg.norm(fake, axis=1, keepdims=True)
        gallery = np.concatenate([gallery, fake])
        labels = np.concatenate([labels, np.full(distractors, -2)])
    return gallery, labels, vectors[queries]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[10_000, 100_000])
    parser.add_argument("--probes", type=int, default=1000, help="queries of enrolled people")
    parser.add_argument("--impostors", type=int, default=1000, help="queries of other people")
    parser.add_argument("--timed", type=int, default=200, help="queries timed one by one")
    parser.add_argument("--lfw", type=Path, help="lfw-dev images folder (real embeddings)")
    parser.add_argument("--lfw-distractors", type=int, nargs="*", default=[0, 100_000])
    parser.add_argument("--skip", nargs="*", default=[], help="skip backends containing these")
    parser.add_argument("--build-threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--m", type=int, default=32, help="hnsw graph degree")
    parser.add_argument("--ef-construction", type=int, default=200)
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args(argv)
    make = backends(args.build_threads, args.m, args.ef_construction)
    results: list[Any] = []
    for size in args.sizes:
        data = clustered_embeddings(
            identities=size // 2,
            per_identity=2,
            probes=args.probes,
            impostors=args.impostors,
            seed=size,
        )
        results += run(
            "clustered synthetic",
            data.gallery,
            data.labels,
            data.queries,
            make,
            args.timed,
            set(args.skip),
        )
    if args.lfw:
        vectors, people = lfw_embeddings(args.lfw)
        for extra in args.lfw_distractors:
            gallery, labels, queries = lfw_sets(vectors, people, extra, seed=0)
            name = "lfw-dev" + (f" + {extra:,} fitted distractors" if extra else "")
            results += run(name, gallery, labels, queries, make, args.timed, set(args.skip))
    if args.json:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(results)))
    print(render(results))
    return 0


def render(results: list[Result]) -> str:
    lines = [
        "| data | rows | backend | build | query p50 / p95 | alerts | missed | wrong person |",
        "|---|---:|---|---:|---:|---:|---:|---:|",
    ]
    for r in results:
        lines.append(
            f"| {r.dataset} | {r.rows:,} | {r.backend} | {r.build_s:.1f} s | "
            f"{r.query_ms_p50:.2f} / {r.query_ms_p95:.2f} ms | {r.alerts} / {r.queries} | "
            f"{r.missed_alerts} | {r.wrong_person} |"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
