"""Open-set identification (1:N against a watchlist) on a folder-per-person dataset.

Protocol (``lfr eval identify``), per seed:

- N people are listed (default: half of those with K+1 or more images), each enrolled with K of
  their images (drawn among the images where a face was found).
- Mated searches: the listed people's other images, at most ``max_probes`` each. A search is a
  hit at threshold t when the person's own entry ranks first and scores above t; an image where no
  face was found is a miss.
- Non-mated searches: every image of every person not listed; one is a false alert at t when its
  best score over the gallery is above t.
- TPIR at FPIR x: the threshold is set so that at most floor(x * non-mated) searches alert (see
  ``lfr.eval.metrics``), reported with that count so readers see how few false alerts a rate
  rests on. It is null where the data allow no false alert at all (fewer than 1/x non-mated).
- Per-entry calibration (``[matching] crowd_weight``, see ``lfr.matching``): the reference crowd
  must not hold the searches it is scored on, so it is cross-fitted: the people not listed are
  split in two at random, each half's faces measure every entry's crowd mean for the other half's
  non-mated searches (mated searches take either half's, alternately). Each entry's offset comes
  from ``lfr.matching.crowd_offsets``, as in a deployment. Gallery growth stays on plain cosines.
- NPL's rates (1 in 6,000 and 1 in 60,000) are beyond what a few thousand non-mated searches
  count: TPIR there is read at a threshold extrapolated from the fitted non-mated tail, each
  candidate model checked against the measured 1e-2 and 1e-3 thresholds (``lfr.eval.tail``).
- Gallery growth: the people not listed are split in two; one half is enrolled as distractors in
  growing galleries, the other half searches them, so FPIR can be read against gallery size.

Everything is drawn from ``numpy.random.default_rng(seed)`` over sorted names: the same seed gives
the same numbers. Embeddings are computed once per image and cached (``lfr.eval.dataset``).
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import msgspec
import numpy as np
from rich.table import Table

from lfr.eval.dataset import EmbeddingSet, Progress, embed_images
from lfr.eval.metrics import rate_key, rates_at, threshold_at_false_rate
from lfr.eval.tables import metric_table
from lfr.eval.tail import Extrapolation, extrapolate, mean_extrapolation
from lfr.vision.analyzer import FaceAnalyzer

FPIRS = (1e-2, 1e-3, 1e-4)
MISS = -math.inf  # the score of a search that found no face, or ranked someone else first
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


class LabelFix(msgspec.Struct, frozen=True, kw_only=True):
    """A correction to a dataset's labels, applied only when asked and always reported."""

    action: Literal["merge", "relabel", "exclude"]
    item: str  # a person folder (merge) or an image path relative to the dataset
    into: str = ""  # merge / relabel: the person it really is
    note: str = ""


# LFW label errors found on lfw-dev (highest non-mated scores, lowest mated ones), each checked by
# eye. Identical twins (Carolina and Isabela Moraes) are no label error and stay as they are.
LFW_LABEL_FIXES: tuple[LabelFix, ...] = (
    LabelFix(
        action="merge", item="Hasan_Wirayuda", into="Hassan_Wirajuda", note="one man, two spellings"
    ),
    LabelFix(action="merge", item="John_Gruden", into="Jon_Gruden", note="one man, two spellings"),
    LabelFix(action="merge", item="Noer_Muis", into="Noer_Moeis", note="one man, two spellings"),
    LabelFix(
        action="merge",
        item="Virgina_Ruano_Pascal",
        into="Ruano_Pascual",
        note="Virginia Ruano Pascual under two names",
    ),
    LabelFix(
        action="merge", item="Jeff_Roehm", into="Harold_Scott", note="the same man under two names"
    ),
    LabelFix(
        action="relabel",
        item="Carlos_Ruckauf/Carlos_Ruckauf_0001.jpg",
        into="Eduardo_Duhalde",
        note="shows Eduardo Duhalde",
    ),
    LabelFix(
        action="relabel",
        item="Colin_Montgomerie/Colin_Montgomerie_0004.jpg",
        into="unknown:Colin_Montgomerie_0004",
        note="shows another golfer, not named",
    ),
    LabelFix(
        action="exclude",
        item="Carlos_Beltran/Carlos_Beltran_0001.jpg",
        note="the same photo as Raul_Ibanez_0001: one of the two names is wrong",
    ),
    LabelFix(
        action="exclude",
        item="Raul_Ibanez/Raul_Ibanez_0001.jpg",
        note="the same photo as Carlos_Beltran_0001: one of the two names is wrong",
    ),
    LabelFix(
        action="exclude",
        item="Gabrielle_Rose/Gabrielle_Rose_0001.jpg",
        note="the same photo as Martha_Bowen_0002: one of the two names is wrong",
    ),
    LabelFix(
        action="exclude",
        item="Martha_Bowen/Martha_Bowen_0002.jpg",
        note="the same photo as Gabrielle_Rose_0001: one of the two names is wrong",
    ),
)


class DatasetError(ValueError):
    """The dataset folder cannot be used (names the folder and the problem)."""


def list_people(root: Path) -> dict[str, list[str]]:
    """``{person: [relative image paths]}`` from a ``<person>/<image>`` tree, sorted."""
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found")
    people: dict[str, list[str]] = {}
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        images = sorted(
            f"{folder.name}/{f.name}"
            for f in folder.iterdir()
            if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES
        )
        if images:
            people[folder.name] = images
    if not people:
        raise DatasetError(f"{root}: no <person>/<image> files found")
    return people


def apply_label_fixes(
    people: Mapping[str, Sequence[str]], fixes: Sequence[LabelFix]
) -> tuple[dict[str, list[str]], list[LabelFix]]:
    """The people with the fixes applied, and the fixes that applied to this dataset."""
    owner = {path: name for name, paths in people.items() for path in paths}
    applied = []
    for fix in fixes:
        if fix.action == "merge":
            moved = [p for p, n in owner.items() if n == fix.item]
            for path in moved:
                owner[path] = fix.into
        elif fix.item in owner:
            moved = [fix.item]
            if fix.action == "exclude":
                del owner[fix.item]
            else:
                owner[fix.item] = fix.into
        else:
            moved = []
        if moved:
            applied.append(fix)
    fixed: dict[str, list[str]] = {}
    for path, name in sorted(owner.items()):
        fixed.setdefault(name, []).append(path)
    return fixed, applied


# -- metrics ------------------------------------------------------------------------------------


class Rates(msgspec.Struct, frozen=True, kw_only=True):
    """Identification rates of one set of searches (see the module docstring)."""

    tpir_at_fpir: dict[str, float | None]
    false_alerts_allowed: dict[str, int]
    threshold_at_fpir: dict[str, float | None]
    threshold: float
    tpir_at_threshold: float
    fpir_at_threshold: float
    fnir_at_threshold: float
    false_alerts_at_threshold: int
    false_alerts_per_1000: float  # per 1,000 non-mated searches, at the threshold


def identification_rates(
    mated: Sequence[float] | np.ndarray,
    non_mated: Sequence[float] | np.ndarray,
    threshold: float,
    fpirs: Sequence[float] = FPIRS,
) -> Rates:
    """Rates from scores: ``mated`` holds the own entry's score when it ranks first (else
    ``MISS``), ``non_mated`` each search's best score over the gallery (``MISS``: no face)."""
    pos = np.asarray(mated, np.float64)
    neg = np.asarray(non_mated, np.float64)
    if not pos.size or not neg.size:
        raise ValueError(f"{pos.size} mated and {neg.size} non-mated searches: need both")
    tpir: dict[str, float | None] = {}
    allowed: dict[str, int] = {}
    at: dict[str, float | None] = {}
    for rate in fpirs:
        key = rate_key(rate)
        allowed[key] = math.floor(rate * neg.size + 1e-9)
        if allowed[key] < 1:  # not even one false alert allowed: the rate is not measurable
            tpir[key] = at[key] = None
            continue
        t = threshold_at_false_rate(neg, rate)
        at[key] = t
        tpir[key] = float(np.mean(pos > t))
    hit, false = rates_at(pos, neg, threshold)
    false_alerts = int(np.sum(neg > threshold))
    return Rates(
        tpir_at_fpir=tpir,
        false_alerts_allowed=allowed,
        threshold_at_fpir=at,
        threshold=threshold,
        tpir_at_threshold=hit,
        fpir_at_threshold=false,
        fnir_at_threshold=1.0 - hit,
        false_alerts_at_threshold=false_alerts,
        false_alerts_per_1000=1000.0 * false,
    )


def det_curve(mated: np.ndarray, non_mated: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(FPIR, FNIR) at every threshold given by a non-mated score, FPIR ascending."""
    neg = np.sort(non_mated[np.isfinite(non_mated)])[::-1]
    pos = np.sort(mated)
    fpir = np.arange(1, neg.size + 1) / non_mated.size
    fnir = np.searchsorted(pos, neg, side="right") / pos.size  # mated at or below the cut
    return fpir, fnir


def person_max(scores: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """Per person, the best score over their gallery rows (rows grouped, ``starts`` first)."""
    if scores.shape[1] == starts.size:
        return scores
    return np.maximum.reduceat(scores, starts, axis=1)


# -- protocol -----------------------------------------------------------------------------------


class GrowthPoint(msgspec.Struct, frozen=True):
    gallery_size: int
    non_mated: int
    false_alerts: float
    fpir_at_threshold: float


class NonMatedHit(msgspec.Struct, frozen=True):
    """One of the highest non-mated scores: often a label error worth a look."""

    probe: str
    gallery: str
    score: float


class IdentifyReport(msgspec.Struct, frozen=True, kw_only=True):
    """The JSON of ``lfr eval identify``; with several seeds each number is their mean."""

    tpir_at_fpir: dict[str, float | None]
    false_alerts_allowed: dict[str, float]
    threshold: float
    tpir_at_threshold: float
    fpir_at_threshold: float
    mated: float
    non_mated: float
    undetected: float  # searches where no face was found (misses when mated)
    fnir_at_threshold: float
    false_alerts_per_1000: float
    false_alerts_at_threshold: float
    threshold_at_fpir: dict[str, float | None]
    rank1: float  # mated searches whose own entry ranks first, at any score
    undetected_mated: float
    gallery_size: int
    enrol_images: int
    max_probes: int
    people: int
    images: int
    gallery_growth: list[GrowthPoint]
    top_non_mated: list[NonMatedHit]
    label_fixes: list[LabelFix]
    seeds: list[int]
    model: str
    crowd_weight: float = 0.0  # per-entry calibration weight (0: plain cosines)
    # TPIR at NPL's 1 in 6,000 and 1 in 60,000 from the fitted non-mated tail (lfr.eval.tail)
    extrapolated: Extrapolation | None = None
    seconds: float = 0.0
    per_seed: list[IdentifyReport] = msgspec.field(default_factory=list)


class SeedScores(msgspec.Struct, frozen=True):
    """The raw scores of one seed (for the DET plot)."""

    seed: int
    mated: np.ndarray
    non_mated: np.ndarray


def pick(rng: np.random.Generator, items: Sequence[int], k: int) -> list[int]:
    """``k`` of ``items`` at random, sorted (all of them when there are no more)."""
    if len(items) <= k:
        return list(items)
    return sorted(int(i) for i in rng.choice(np.asarray(items), k, replace=False))


def _growth_sizes(listed: int, most: int) -> list[int]:
    sizes = {max(1, listed // 4), max(1, listed // 2), listed, most}
    size = listed * 2
    while size < 0.9 * most:
        sizes.add(size)
        size *= 2
    return sorted(s for s in sizes if s <= most)


def run_seed(
    emb: EmbeddingSet,
    people: Mapping[str, Sequence[str]],
    *,
    seed: int,
    gallery_size: int | None,
    enrol_images: int,
    max_probes: int,
    threshold: float,
    fpirs: Sequence[float] = FPIRS,
    crowd_weight: float = 0.0,
    templates: np.ndarray | None = None,
) -> tuple[IdentifyReport, SeedScores]:
    """One draw of the protocol. ``templates``: per image, the row it gives when enrolled (such
    as the mean of augmented views), where it differs from its search embedding."""
    index = emb.index()
    ok = emb.ok
    vectors = emb.vectors
    rows = {name: [index[p] for p in paths] for name, paths in people.items()}
    found = {name: [i for i in idx if ok[i]] for name, idx in rows.items()}
    k = enrol_images
    eligible = sorted(n for n in rows if len(rows[n]) >= k + 1 and len(found[n]) >= k)
    n_listed = gallery_size if gallery_size is not None else len(eligible) // 2
    if n_listed < 1 or n_listed > len(eligible):
        raise DatasetError(
            f"gallery size {n_listed}: {len(eligible)} people have {k + 1} or "
            f"more images ({k} with a face)"
        )
    rng = np.random.default_rng(seed)
    listed = sorted(str(n) for n in rng.choice(eligible, n_listed, replace=False))
    gallery: list[int] = []
    starts: list[int] = []
    mated: list[int] = []
    mated_owner: list[int] = []
    for g, name in enumerate(listed):
        enrol = pick(rng, found[name], k)
        starts.append(len(gallery))
        gallery += enrol
        probes = pick(rng, [i for i in rows[name] if i not in enrol], max_probes)
        mated += probes
        mated_owner += [g] * len(probes)
    chosen = set(listed)
    others = [n for n in sorted(rows) if n not in chosen]
    non_mated = [i for n in others for i in rows[n]]

    gal = (vectors if templates is None else templates)[gallery]
    start_arr = np.asarray(starts, np.int64)
    owner = np.asarray(mated_owner, np.int64)
    m_scores = person_max(vectors[mated] @ gal.T, start_arr)
    own = m_scores[np.arange(len(mated)), owner]
    first = m_scores.argmax(axis=1) == owner
    m_ok = ok[mated]
    mated_scores = np.where(first & m_ok, own, MISS)
    nm_all = person_max(vectors[non_mated] @ gal.T, start_arr)
    if crowd_weight:
        m_scores, nm_all = _calibrated(
            vectors, found, others, gal, start_arr, m_scores, nm_all,
            [n for n in others for _ in rows[n]], seed=seed, weight=crowd_weight)
        own = m_scores[np.arange(len(mated)), owner]
        first = m_scores.argmax(axis=1) == owner
        mated_scores = np.where(first & m_ok, own, MISS)
    nm_ok = ok[non_mated]
    nm_scores = np.where(nm_ok, nm_all.max(axis=1), MISS)
    rates = identification_rates(mated_scores, nm_scores, threshold, fpirs)

    top = np.argsort(-nm_scores, kind="stable")[:5]
    tops = [
        NonMatedHit(
            probe=emb.paths[non_mated[t]],
            gallery=emb.paths[gallery[start_arr[int(nm_all[t].argmax())]]],
            score=round(float(nm_scores[t]), 4),
        )
        for t in top
        if nm_ok[t]
    ]
    growth = _growth(
        rng,
        vectors,
        ok,
        rows,
        found,
        others,
        listed_vectors=(gal, start_arr),
        k=k,
        threshold=threshold,
    )
    report = IdentifyReport(
        **msgspec.structs.asdict(rates),
        mated=len(mated),
        non_mated=len(non_mated),
        undetected=int((~m_ok).sum() + (~nm_ok).sum()),
        rank1=float(np.mean(first & m_ok)),
        undetected_mated=int((~m_ok).sum()),
        gallery_size=n_listed,
        enrol_images=k,
        max_probes=max_probes,
        people=len(rows),
        images=sum(len(r) for r in rows.values()),
        gallery_growth=growth,
        top_non_mated=tops,
        label_fixes=[],
        seeds=[seed],
        model=emb.model,
        crowd_weight=crowd_weight,
        extrapolated=extrapolate(mated_scores, nm_scores),
    )
    return report, SeedScores(seed, mated_scores, nm_scores)


def cross_fitted_offsets(
    vectors: np.ndarray,
    faces_of: Mapping[str, Sequence[int]],
    outsiders: Sequence[str],
    gallery: np.ndarray,
    starts: np.ndarray,
    *,
    rng: np.random.Generator,
    weight: float,
) -> tuple[np.ndarray, dict[str, int]]:
    """Each listed entry's crowd offset (``lfr.matching.crowd_offsets``) twice: measured on
    one half of the people ``outsiders`` (their rows ``faces_of``), then on the other; and each
    outsider's half. A search by an outsider is scored with the other half's offsets, so no
    face both calibrates an entry and counts as a search against it. Raises DatasetError when
    a half has no face."""
    from lfr.matching import crowd_offsets

    half = {name: int(rng.integers(2)) for name in outsiders}
    offsets = []
    for fold in (0, 1):
        faces = [i for name in outsiders if half[name] == fold for i in faces_of[name]]
        if not faces:
            raise DatasetError("too few people outside the gallery for a reference crowd")
        means = person_max(vectors[faces] @ gallery.T, starts).mean(axis=0)
        offsets.append(crowd_offsets(means, weight))
    return np.stack(offsets), half


def _calibrated(
    vectors: np.ndarray,
    found: Mapping[str, list[int]],
    others: list[str],
    gal: np.ndarray,
    starts: np.ndarray,
    mated: np.ndarray,
    non_mated: np.ndarray,
    non_mated_people: list[str],
    *,
    seed: int,
    weight: float,
) -> tuple[np.ndarray, np.ndarray]:
    """Mated and non-mated person scores with each entry's crowd offset, the crowd cross-fitted
    (module notes). Its own generator: the draws of the protocol stay as they were."""
    offsets, half = cross_fitted_offsets(vectors, found, others, gal, starts,
                                         rng=np.random.default_rng([seed, 15]), weight=weight)
    mated_fold = np.arange(len(mated)) % 2
    searcher_fold = 1 - np.array([half[name] for name in non_mated_people], np.int64)
    return mated - offsets[mated_fold], non_mated - offsets[searcher_fold]


def _growth(
    rng: np.random.Generator,
    vectors: np.ndarray,
    ok: np.ndarray,
    rows: Mapping[str, list[int]],
    found: Mapping[str, list[int]],
    others: list[str],
    *,
    listed_vectors: tuple[np.ndarray, np.ndarray],
    k: int,
    threshold: float,
) -> list[GrowthPoint]:
    """FPIR at the threshold as distractors join the gallery (searched by the other half)."""
    order = [others[i] for i in rng.permutation(len(others))]
    half = len(order) // 2
    distractors = [n for n in order[:half] if found[n]]
    searchers = [i for n in order[half:] for i in rows[n]]
    if not searchers:
        return []
    gal, starts = listed_vectors
    extra: list[int] = []
    extra_starts: list[int] = []
    for name in distractors:
        extra_starts.append(gal.shape[0] + len(extra))
        extra += pick(rng, found[name], k)
    all_gal = np.concatenate([gal, vectors[extra]]) if extra else gal
    all_starts = np.concatenate([starts, np.asarray(extra_starts, np.int64)])
    scores = person_max(vectors[searchers] @ all_gal.T, all_starts)
    running = np.maximum.accumulate(scores, axis=1)  # best over the first s people, per s
    alive = ok[searchers]
    listed = starts.size
    points = []
    for size in _growth_sizes(listed, all_starts.size):
        false = int(np.sum(alive & (running[:, size - 1] > threshold)))
        points.append(
            GrowthPoint(
                gallery_size=size,
                non_mated=len(searchers),
                false_alerts=false,
                fpir_at_threshold=false / len(searchers),
            )
        )
    return points


def mean_report(reports: Sequence[IdentifyReport]) -> IdentifyReport:
    """The mean of each number over seeds (null where any seed is null), seeds kept."""
    if len(reports) == 1:
        return reports[0]

    def mean(values: Sequence[Any]) -> Any:
        if any(v is None for v in values):
            return None
        return float(np.mean(values))

    def mean_dict(field: str) -> dict[str, Any]:
        dicts = [getattr(r, field) for r in reports]
        return {key: mean([d[key] for d in dicts]) for key in dicts[0]}

    first = reports[0]
    growth = []
    if all(len(r.gallery_growth) == len(first.gallery_growth) for r in reports):
        for i, point in enumerate(first.gallery_growth):
            pts = [r.gallery_growth[i] for r in reports]
            growth.append(
                GrowthPoint(
                    gallery_size=point.gallery_size,
                    non_mated=round(mean([p.non_mated for p in pts])),
                    false_alerts=mean([p.false_alerts for p in pts]),
                    fpir_at_threshold=mean([p.fpir_at_threshold for p in pts]),
                )
            )
    seen: dict[tuple[str, str], NonMatedHit] = {}
    for r in reports:
        for hit in r.top_non_mated:
            seen.setdefault((hit.probe, hit.gallery), hit)
    tops = sorted(seen.values(), key=lambda h: -h.score)[:10]
    numbers = (
        "mated",
        "non_mated",
        "undetected",
        "tpir_at_threshold",
        "fpir_at_threshold",
        "fnir_at_threshold",
        "false_alerts_per_1000",
        "false_alerts_at_threshold",
        "rank1",
        "undetected_mated",
    )
    return msgspec.structs.replace(
        first,
        **{f: mean([getattr(r, f) for r in reports]) for f in numbers},
        tpir_at_fpir=mean_dict("tpir_at_fpir"),
        false_alerts_allowed=mean_dict("false_alerts_allowed"),
        threshold_at_fpir=mean_dict("threshold_at_fpir"),
        gallery_growth=growth,
        top_non_mated=tops,
        seeds=[s for r in reports for s in r.seeds],
        extrapolated=(mean_extrapolation([r.extrapolated for r in reports if r.extrapolated])
                      if all(r.extrapolated for r in reports) else None),
        per_seed=list(reports),
    )


def embed_dataset(
    dataset: Path,
    analyzer: FaceAnalyzer,
    fix_labels: bool = False,
    cache: Path | None = None,
    progress: Progress | None = None,
) -> tuple[dict[str, list[str]], list[LabelFix], EmbeddingSet]:
    """A folder-per-person dataset's people (label fixes applied on request) and one embedding per
    image, computed once (cached) for identification and calibration alike."""
    people = list_people(dataset)
    applied: list[LabelFix] = []
    if fix_labels:
        people, applied = apply_label_fixes(people, LFW_LABEL_FIXES)
    emb = embed_images(
        [p for paths in people.values() for p in paths],
        dataset,
        analyzer,
        progress=progress,
        cache=cache,
    )
    return people, applied, emb


def run_identify(
    dataset: Path,
    analyzer: FaceAnalyzer,
    *,
    seeds: Sequence[int],
    threshold: float,
    gallery_size: int | None = None,
    enrol_images: int = 1,
    max_probes: int = 10,
    fix_labels: bool = False,
    cache: Path | None = None,
    progress: Progress | None = None,
    crowd_weight: float = 0.0,
) -> tuple[IdentifyReport, list[SeedScores]]:
    """Embed the dataset once (cached), then run the protocol for each seed."""
    start = time.perf_counter()
    if enrol_images < 1 or max_probes < 1:
        raise ValueError("enrol_images and max_probes must be >= 1")
    people, applied, emb = embed_dataset(dataset, analyzer, fix_labels, cache, progress)
    reports, scores = [], []
    for seed in seeds:
        report, seed_scores = run_seed(
            emb,
            people,
            seed=seed,
            gallery_size=gallery_size,
            enrol_images=enrol_images,
            max_probes=max_probes,
            threshold=threshold,
            crowd_weight=crowd_weight,
        )
        reports.append(msgspec.structs.replace(report, label_fixes=applied))
        scores.append(seed_scores)
    summary = mean_report(reports)
    return msgspec.structs.replace(summary, seconds=round(time.perf_counter() - start, 2)), scores


# -- output -------------------------------------------------------------------------------------


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def render_identify(report: IdentifyReport) -> Table:
    seeds = ", ".join(str(s) for s in report.seeds)
    title = (
        f"Identification (1:N), {report.gallery_size} listed, {report.enrol_images} "
        f"enrolment image(s), seed(s) {seeds}" + (" (means)" if len(report.seeds) > 1 else "")
    )
    table = metric_table(title)
    for key, tpir in report.tpir_at_fpir.items():
        allowed = report.false_alerts_allowed[key]
        t = report.threshold_at_fpir[key]
        table.add_row(
            f"TPIR @ FPIR {key}",
            f"{_fmt(tpir)} (threshold {_fmt(t, 3)}, {allowed:g} false alerts allowed)",
        )
    _extrapolation_rows(table, report.extrapolated)
    table.add_row(
        f"at threshold {report.threshold:.3f}",
        f"TPIR {report.tpir_at_threshold:.4f}, FNIR {report.fnir_at_threshold:.4f}, "
        f"FPIR {report.fpir_at_threshold:.5f}",
    )
    table.add_row("false alerts / 1,000 non-mated", f"{report.false_alerts_per_1000:.2f}")
    table.add_row("rank-1", f"{report.rank1:.4f}")
    table.add_row(
        "searches",
        f"{report.mated:g} mated, {report.non_mated:g} non-mated, "
        f"{report.undetected:g} without a face",
    )
    for point in report.gallery_growth:
        table.add_row(
            f"FPIR, gallery {point.gallery_size}",
            f"{point.fpir_at_threshold:.5f} ({point.false_alerts:g} of {point.non_mated})",
        )
    for hit in report.top_non_mated[:5]:
        table.add_row("high non-mated", f"{hit.probe} ~ {hit.gallery} {hit.score:.3f}")
    for fix in report.label_fixes:
        table.add_row(
            f"label fix ({fix.action})",
            f"{fix.item}{' -> ' + fix.into if fix.into else ''}: {fix.note}",
        )
    table.add_row("per-entry calibration", f"crowd weight {report.crowd_weight:g}"
                  + (" (crowd: half the people not listed)" if report.crowd_weight else ""))
    table.add_row("model", report.model)
    table.add_row("time", f"{report.seconds:.1f} s")
    return table


def _extrapolation_rows(table: Table, e: Extrapolation | None) -> None:
    if e is None:
        return
    if e.model is None:
        table.add_row("TPIR @ 1 in 6,000 / 60,000", f"not extrapolated: {e.reason}")
        return
    for key, tpir in e.tpir_at_fpir.items():
        table.add_row(
            f"TPIR @ FPIR {key} (extrapolated)",
            f"{_fmt(tpir)} (threshold {_fmt(e.threshold_at_fpir[key], 3)}, "
            f"{_fmt(e.non_mated_above[key], 1)} measured non-mated above it)",
        )
    table.add_row("tail model", f"{e.model}, fitted to the top {e.fitted_scores:g} "
                  "non-mated scores (--json: method)")
    for check in e.checks:
        misses = ", ".join(f"{k}: {check.predicted_threshold[k]:.3f} vs {v:.3f}"
                           for k, v in check.measured_threshold.items())
        npl = ", ".join(f"{k}: {v:.4f}" for k, v in check.tpir_at_fpir.items())
        table.add_row(f"tail check, {check.model}",
                      f"predicted vs measured threshold {misses} (miss {check.error:.3f}); "
                      f"its TPIR {npl}")


def plot_det(scores: Sequence[SeedScores], report: IdentifyReport, path: Path) -> None:
    """The DET curve (FNIR against FPIR, log-log) of each seed, as a PNG."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise ImportError("plotting needs matplotlib: pip install 'lfr[plot]'") from None
    fig, ax = plt.subplots(figsize=(6, 4.5), dpi=120)
    for s in scores:
        fpir, fnir = det_curve(s.mated, s.non_mated)
        ax.step(fpir, np.maximum(fnir, 1e-4), where="post", lw=1, label=f"seed {s.seed}")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.axvline(1e-3, color="grey", lw=0.5, ls="--")
    ax.axvline(1e-2, color="grey", lw=0.5, ls="--")
    ax.plot(
        [max(report.fpir_at_threshold, 1e-5)],
        [max(report.fnir_at_threshold, 1e-4)],
        "ko",
        label=f"threshold {report.threshold:.2f}",
    )
    ax.set_xlabel("FPIR (false positive identification rate)")
    ax.set_ylabel("FNIR (miss rate)")
    ax.set_title(f"DET, {report.gallery_size} listed, {report.enrol_images} image(s) each")
    ax.grid(True, which="both", lw=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
