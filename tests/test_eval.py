"""Evaluation: pairs parsing, metrics on known answers, verification end to end on lfw-dev."""

from __future__ import annotations

import io
import shutil
from pathlib import Path

import cv2
import msgspec
import numpy as np
import pytest
from rich.console import Console

from lfr.eval import (
    FAILED_SCORE,
    PairsError,
    embed_images,
    kfold_accuracy,
    parse_pairs,
    render_verify,
    run_verify,
    tar_at_far,
    threshold_at_false_rate,
    tpir_at_fpir,
)
from lfr.eval.pairs import Pair
from lfr.eval.verify import score_pairs
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.defaults import default_analyzer
from lfr.vision.quality import QualityGate

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
REQUIRED_KEYS = {
    "accuracy",
    "accuracy_std",
    "pairs",
    "positives",
    "negatives",
    "tar_at_far_0.001",
    "failed_images",
}


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return default_analyzer(score_threshold=0.5, gate=QualityGate(min_face_px=0))


# --- pairs -----------------------------------------------------------------------------------


def test_parse_fold_prefixed_tsv(tmp_path: Path) -> None:
    f = tmp_path / "pairs.tsv"
    f.write_text("# fold\tname\timg1\timg2\n1\tAnn_V\t1\t3\n\n2\tAnn_V\t2\tBob_X\t12\n")
    assert parse_pairs(f) == [
        Pair(1, "Ann_V/Ann_V_0001.jpg", "Ann_V/Ann_V_0003.jpg", same=True),
        Pair(2, "Ann_V/Ann_V_0002.jpg", "Bob_X/Bob_X_0012.jpg", same=False),
    ]


def test_parse_lfw_pairs_txt_folds_by_position(tmp_path: Path) -> None:
    f = tmp_path / "pairs.txt"
    f.write_text("2\t1\nA\t1\t2\nA\t1\tB\t3\nC\t2\t4\nD\t1\tE\t2\n")
    pairs = parse_pairs(f)
    assert [(p.fold, p.same) for p in pairs] == [(1, True), (1, False), (2, True), (2, False)]
    assert pairs[3] == Pair(2, "D/D_0001.jpg", "E/E_0002.jpg", same=False)


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("1\tA\t1\t2\n1\tA\tone\t2\n", 2, "'one' is not a whole number"),
        ("1\tA\t1\t2\n1\tA\t1\n", 2, "got 2 field(s)"),
        ("1\tA\t0\t2\n", 1, "must be 1 or more"),
        ("1\t1\nA\t1\t2\n", 1, "the file has 1"),
        ("1\t1\nA\t1\tB\t2\nA\t1\t2\n", 2, "expected a same-person line"),
    ],
)
def test_malformed_pairs_name_file_and_line(
    tmp_path: Path, text: str, line: int, message: str
) -> None:
    f = tmp_path / "bad.txt"
    f.write_text(text)
    with pytest.raises(PairsError) as info:
        parse_pairs(f)
    assert f"{f}:{line}: " in str(info.value)
    assert message in str(info.value)


# --- metrics ---------------------------------------------------------------------------------


def test_kfold_accuracy_known_answer() -> None:
    # Fold 2 trains 0.45 (the only perfect cut), which misses fold 1's 0.85 negative: 3/4.
    # Fold 1 has two best cuts (0.45, 0.875); the middle one of the ties (0.875) is taken,
    # and rejects both fold-2 positives: 2/4.
    scores = [0.9, 0.8, 0.1, 0.85, 0.7, 0.6, 0.2, 0.3]
    labels = [True, True, False, False, True, True, False, False]
    result = kfold_accuracy(scores, labels, [1, 1, 1, 1, 2, 2, 2, 2])
    assert result.fold_accuracies == (0.75, 0.5)
    assert result.thresholds == pytest.approx((0.45, 0.875))
    assert result.accuracy == pytest.approx(0.625)
    assert result.accuracy_std == pytest.approx(0.125)
    with pytest.raises(ValueError, match="two folds"):
        kfold_accuracy(scores, labels, [1] * 8)


def test_tar_at_far_known_answer() -> None:
    negatives = [0.1] * 997 + [0.5, 0.6, 0.7]
    positives = [0.65, 0.55, 0.9, 0.61]
    scores = positives + negatives
    labels = [True] * 4 + [False] * 1000
    r = tar_at_far(scores, labels, 1e-3)  # one false accept allowed: cut at the 2nd highest
    assert (r.threshold, r.rate, r.false_rate, r.negatives) == (0.6, 0.75, 0.001, 1000)
    r = tar_at_far(scores, labels, 1e-2)  # ten allowed, ties at the cut are rejected
    assert (r.threshold, r.rate, r.false_rate) == (0.1, 1.0, 0.003)
    # Fewer negatives than 1/FAR: no false accept at all, the cut is the highest negative.
    assert threshold_at_false_rate([0.2, 0.4, 0.3], 1e-3) == 0.4


def test_tpir_at_fpir_known_answer() -> None:
    mated = [0.8, 0.5, FAILED_SCORE, 0.3]  # the third search ranked someone else first
    non_mated_max = [0.2, 0.4, 0.45, 0.1]
    r = tpir_at_fpir(mated, non_mated_max, 0.25)
    assert (r.threshold, r.rate, r.false_rate) == (0.4, 0.5, 0.25)


# --- verification end to end (real models, real LFW images) ----------------------------------


def _subset(tmp_path: Path, per_class: int) -> Path:
    """The first ``per_class`` same and different pairs of each fold of lfw-dev-pairs.tsv."""
    kept: list[str] = []
    counts: dict[tuple[str, int], int] = {}
    for line in (DATA / "lfw-dev-pairs.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        fields = line.split("\t")
        key = (fields[0], len(fields))
        counts[key] = counts.get(key, 0) + 1
        if counts[key] <= per_class:
            kept.append(line)
    f = tmp_path / "subset.tsv"
    f.write_text("\n".join(kept) + "\n")
    return f


def test_verify_subset_of_lfw_dev(tmp_path: Path, analyzer: FaceAnalyzer) -> None:
    report = run_verify(_subset(tmp_path, 4), DATA / "lfw-dev", analyzer)
    assert (report.pairs, report.positives, report.negatives, report.folds) == (80, 40, 40, 10)
    assert report.accuracy >= 0.9
    assert report.failed_images == ()
    as_json = msgspec.json.decode(msgspec.json.encode(report))
    assert as_json.keys() >= REQUIRED_KEYS
    assert as_json["tar_at_far_0.001"] == report.tar_at_far_0_001
    console = Console(file=io.StringIO(), width=100, color_system=None)
    console.print(render_verify(report))
    text = console.file.getvalue()  # type: ignore[attr-defined]
    assert f"{report.accuracy:.4f}" in text and "80 (40 same, 40 different)" in text


def test_failed_image_scores_minus_one_and_is_listed(
    tmp_path: Path, analyzer: FaceAnalyzer
) -> None:
    images = tmp_path / "images"
    for name, numbers in (("Akhmed_Zakayev", (1, 2)), ("Ann_Veneman", (3, 5))):
        (images / name).mkdir(parents=True)
        for n in numbers:
            rel = f"{name}/{name}_{n:04d}.jpg"
            shutil.copy(DATA / "lfw-dev" / rel, images / rel)
    (images / "Grey_Person").mkdir()
    cv2.imwrite(
        str(images / "Grey_Person/Grey_Person_0001.jpg"), np.full((250, 250, 3), 128, np.uint8)
    )
    pairs_file = tmp_path / "pairs.txt"  # LFW format, one fold: split round-robin for accuracy
    pairs_file.write_text(
        "2\nAkhmed_Zakayev 1 2\nAnn_Veneman 3 5\n"
        "Akhmed_Zakayev 1 Grey_Person 1\nAnn_Veneman 3 Akhmed_Zakayev 2\n"
    )
    grey = "Grey_Person/Grey_Person_0001.jpg"

    report = run_verify(pairs_file, images, analyzer)
    assert report.failed_images == (grey,)
    assert report.pairs == 4 and report.images == 5

    pairs = parse_pairs(pairs_file)
    embeddings = embed_images([p for q in pairs for p in (q.path_a, q.path_b)], images, analyzer)
    assert embeddings.failed == {grey: "no face found"}
    assert embeddings.get(grey) is None
    scores = score_pairs(pairs, embeddings)
    assert scores[2] == FAILED_SCORE
    assert scores[0] > 0.5 and scores[1] > 0.5 and -1.0 < scores[3] < 0.3


def test_embedding_cache_is_reused_and_invalidated(
    tmp_path: Path, analyzer: FaceAnalyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    images = tmp_path / "images"
    rels = ["Ann_Veneman/Ann_Veneman_0003.jpg", "Ann_Veneman/Ann_Veneman_0005.jpg"]
    for rel in rels:
        (images / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(DATA / "lfw-dev" / rel, images / rel)
    cache = tmp_path / "cache"
    first = embed_images(rels, images, analyzer, cache=cache)

    calls: list[int] = []
    real_detect = analyzer.detect

    def counting_detect(*args: object) -> object:
        calls.append(1)
        return real_detect(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(analyzer, "detect", counting_detect)
    seen: list[tuple[int, int]] = []
    again = embed_images(
        rels, images, analyzer, cache=cache, progress=lambda done, total: seen.append((done, total))
    )
    assert calls == [] and seen == [(1, 2), (2, 2)]
    assert np.array_equal(first.vectors, again.vectors) and again.model == first.model

    # A changed file is embedded afresh; the other entry still comes from the cache.
    cv2.imwrite(str(images / rels[0]), np.full((250, 250, 3), 128, np.uint8))
    changed = embed_images(rels, images, analyzer, cache=cache)
    assert calls == [1, 1, 1] and changed.failed == {rels[0]: "no face found"}
    assert np.array_equal(changed.vectors[1], first.vectors[1])
