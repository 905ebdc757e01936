"""Open-set identification and calibration: metric code on hand-made scores, the protocol on
synthetic embeddings (same seed, same numbers), label fixes, config writing, and the commands."""

from __future__ import annotations

import json
import math
import shutil
import tomllib

import numpy as np
import pytest
from paths import LFW

from lfr.cli import main
from lfr.config import MatchingConfig, load_config
from lfr.eval.calibrate import (
    TailModel,
    block_fpir,
    measure,
    measured_target,
    set_threshold_text,
    write_threshold,
)
from lfr.eval.dataset import EmbeddingSet
from lfr.eval.identify import (
    MISS,
    LabelFix,
    apply_label_fixes,
    det_curve,
    identification_rates,
    mean_report,
    person_max,
    rate_key,
    run_seed,
)
from lfr.tracking import TrackerSettings

# -- metrics on hand-made scores ------------------------------------------------------------------


def test_rates_on_hand_made_scores() -> None:
    # 1,000 non-mated searches: 997 far away, three close calls at 0.5, 0.6, 0.7.
    non_mated = [0.1] * 997 + [0.5, 0.6, 0.7]
    # Mated: two clear hits, one weak hit, one wrong person ranked first (MISS), one undetected.
    mated = [0.9, 0.8, 0.55, MISS, MISS]
    r = identification_rates(mated, non_mated, threshold=0.58, fpirs=(1e-2, 1e-3, 1e-4))
    # FPIR 1e-2 allows 10 false alerts: the threshold is the 11th highest score, 0.1.
    assert r.false_alerts_allowed == {"0.01": 10, "0.001": 1, "0.0001": 0}
    assert r.threshold_at_fpir["0.01"] == 0.1
    assert r.tpir_at_fpir["0.01"] == pytest.approx(3 / 5)
    # FPIR 1e-3 allows one: the threshold is the second highest, 0.6; 0.9 and 0.8 pass.
    assert r.threshold_at_fpir["0.001"] == 0.6
    assert r.tpir_at_fpir["0.001"] == pytest.approx(2 / 5)
    # 1e-4 of 1,000 searches is no false alert at all: not measurable, null.
    assert r.tpir_at_fpir["0.0001"] is None and r.threshold_at_fpir["0.0001"] is None
    # At 0.58: hits 0.9, 0.8 (0.55 is below); false alerts 0.6 and 0.7.
    assert r.tpir_at_threshold == pytest.approx(0.4)
    assert r.fnir_at_threshold == pytest.approx(0.6)
    assert r.false_alerts_at_threshold == 2
    assert r.fpir_at_threshold == pytest.approx(0.002)
    assert r.false_alerts_per_1000 == pytest.approx(2.0)


def test_rates_need_both_kinds_of_search() -> None:
    with pytest.raises(ValueError, match="mated"):
        identification_rates([], [0.1], 0.5)


def test_rate_keys() -> None:
    assert [rate_key(r) for r in (1e-2, 1e-3, 1e-4)] == ["0.01", "0.001", "0.0001"]


def test_det_curve_on_hand_made_scores() -> None:
    fpir, fnir = det_curve(np.array([0.9, 0.6, 0.3, MISS]), np.array([0.7, 0.5, 0.2, 0.1]))
    # Cut at each non-mated score, highest first: 0.7, 0.5, 0.2, 0.1.
    assert fpir.tolist() == [0.25, 0.5, 0.75, 1.0]
    # Mated at or below the cut: {MISS, 0.3, 0.6} at 0.7; {MISS, 0.3} at 0.5; {MISS} below.
    assert fnir.tolist() == [0.75, 0.5, 0.25, 0.25]


def test_person_max_over_grouped_rows() -> None:
    scores = np.array([[0.1, 0.5, 0.3, 0.2], [0.9, 0.0, 0.4, 0.8]])
    # Rows 0-1 are person 0, rows 2-3 person 1.
    assert person_max(scores, np.array([0, 2])).tolist() == [[0.5, 0.3], [0.9, 0.8]]
    assert person_max(scores, np.arange(4)) is scores


# -- the protocol on synthetic embeddings ---------------------------------------------------------


def synthetic(
    people: int = 60, seed: int = 0, undetected: int = 3
) -> tuple[EmbeddingSet, dict[str, list[str]]]:
    """People with 1-4 images each: an identity vector plus noise; some images without a face."""
    rng = np.random.default_rng(seed)
    dim = 32
    paths, vectors = [], []
    groups: dict[str, list[str]] = {}
    for p in range(people):
        identity = rng.normal(size=dim)
        name = f"P{p:03d}"
        for k in range(1 + p % 4):
            paths.append(f"{name}/{name}_{k:04d}.jpg")
            v = identity + 0.7 * rng.normal(size=dim)
            vectors.append(v / np.linalg.norm(v))
            groups.setdefault(name, []).append(paths[-1])
    vecs = np.array(vectors, np.float32)
    reasons = [""] * len(paths)
    for i in rng.choice(len(paths), undetected, replace=False):
        reasons[int(i)] = "no face found"
        vecs[int(i)] = 0
    return EmbeddingSet(
        paths=tuple(paths),
        vectors=vecs,
        det_scores=np.ones(len(paths)),
        reasons=tuple(reasons),
        model="synthetic",
    ), groups


def test_protocol_counts_and_same_seed_same_numbers() -> None:
    emb, people = synthetic()
    kwargs = {"gallery_size": 20, "enrol_images": 1, "max_probes": 10, "threshold": 0.5}
    one, scores = run_seed(emb, people, seed=7, **kwargs)
    again, scores_again = run_seed(emb, people, seed=7, **kwargs)
    other, _ = run_seed(emb, people, seed=8, **kwargs)
    assert one == again
    assert np.array_equal(scores.mated, scores_again.mated)
    assert other != one
    assert one.gallery_size == 20
    # Every image is enrolled (one per listed person), a mated or a non-mated search.
    assert one.mated + one.non_mated + 20 == len(emb.paths)
    assert one.undetected_mated <= one.undetected <= 3
    assert one.rank1 <= 1.0 and 0.0 <= one.tpir_at_threshold <= one.rank1
    capped, _ = run_seed(emb, people, seed=7, **{**kwargs, "max_probes": 1})
    assert capped.mated <= 20 and capped.non_mated == one.non_mated
    sizes = [g.gallery_size for g in one.gallery_growth]
    assert sizes == sorted(sizes) and 20 in sizes
    fpirs = [g.fpir_at_threshold for g in one.gallery_growth]
    assert fpirs == sorted(fpirs)  # more people listed, never fewer false alerts


def test_undetected_mated_images_are_misses() -> None:
    emb, people = synthetic(undetected=0)
    base, _ = run_seed(
        emb, people, seed=1, gallery_size=25, enrol_images=1, max_probes=10, threshold=-1.0
    )
    assert base.undetected == 0 and base.tpir_at_threshold == base.rank1
    # Take every face away from one mated image: it stays in the count, as a miss.
    reasons = list(emb.reasons)
    index = emb.index()
    listed_probe = next(p for p in emb.paths if p.endswith("_0003.jpg"))
    reasons[index[listed_probe]] = "no face found"
    blind = EmbeddingSet(
        paths=emb.paths,
        vectors=emb.vectors,
        det_scores=emb.det_scores,
        reasons=tuple(reasons),
        model="synthetic",
    )
    report, scores = run_seed(
        blind, people, seed=1, gallery_size=25, enrol_images=1, max_probes=10, threshold=-1.0
    )
    assert report.mated + report.non_mated == base.mated + base.non_mated
    assert report.undetected == 1
    assert np.isneginf(scores.mated).sum() + np.isneginf(scores.non_mated).sum() >= 1


def test_several_enrolment_images_and_too_large_gallery() -> None:
    emb, people = synthetic()
    report, _ = run_seed(
        emb, people, seed=3, gallery_size=10, enrol_images=2, max_probes=10, threshold=0.5
    )
    assert report.enrol_images == 2 and report.gallery_size == 10
    with pytest.raises(ValueError, match="gallery size 999"):
        run_seed(
            emb, people, seed=3, gallery_size=999, enrol_images=1, max_probes=10, threshold=0.5
        )


def test_mean_over_seeds_keeps_per_seed_and_nulls() -> None:
    emb, people = synthetic()
    reports = [
        run_seed(emb, people, seed=s, gallery_size=20, enrol_images=1, max_probes=3, threshold=0.5)[
            0
        ]
        for s in (1, 2)
    ]
    mean = mean_report(reports)
    assert mean.seeds == [1, 2] and mean.per_seed == reports
    assert mean.tpir_at_threshold == pytest.approx(
        (reports[0].tpir_at_threshold + reports[1].tpir_at_threshold) / 2
    )
    assert mean.tpir_at_fpir["0.0001"] is None  # null in any seed: null in the mean


def test_label_fixes_apply_and_are_reported() -> None:
    people = {
        "A": ["A/A_0001.jpg"],
        "A_misspelt": ["A_misspelt/A_misspelt_0001.jpg"],
        "B": ["B/B_0001.jpg", "B/B_0002.jpg"],
        "C": ["C/C_0001.jpg"],
    }
    fixes = [
        LabelFix(action="merge", item="A_misspelt", into="A", note="two spellings"),
        LabelFix(action="relabel", item="B/B_0002.jpg", into="C", note="shows C"),
        LabelFix(action="exclude", item="C/C_0001.jpg", note="duplicate"),
        LabelFix(action="exclude", item="Z/Z_0001.jpg", note="not in this dataset"),
    ]
    fixed, applied = apply_label_fixes(people, fixes)
    assert fixed == {
        "A": ["A/A_0001.jpg", "A_misspelt/A_misspelt_0001.jpg"],
        "B": ["B/B_0001.jpg"],
        "C": ["B/B_0002.jpg"],
    }
    assert applied == fixes[:3]  # what did not apply is not reported as applied


# -- calibration ----------------------------------------------------------------------------------


def test_block_scaling_round_trip() -> None:
    assert block_fpir(1e-3, 100, 50) == 1e-3  # smaller than measured: as measured
    scaled = block_fpir(1e-3, 100, 1000)
    assert scaled == pytest.approx(1 - (1 - 1e-3) ** 10)
    assert measured_target(scaled, 100, 1000) == pytest.approx(1e-3)


def test_tail_model_threshold_and_rate_agree() -> None:
    rng = np.random.default_rng(0)
    scores = rng.normal(0.1, 0.08, 50_000)
    model = TailModel.fit(scores)
    # Inside the data: the empirical quantile.
    t, extrapolated = model.threshold(1e-2)
    assert not extrapolated and model.rate(t) <= 1e-2
    assert model.rate(t) == pytest.approx(1e-2, rel=0.05)
    # Beyond it (1e-5 of 50,000 is half a search): the fitted tail, and rate() agrees with it.
    t5, extrapolated = model.threshold(1e-5)
    assert extrapolated and t5 > scores.max() - 0.05
    assert model.rate(t5) == pytest.approx(1e-5, rel=1e-6)
    assert model.rate(t5 + 0.05) < model.rate(t5) < model.rate(t)


def test_calibration_scores_a_person_by_their_best_enrolled_photo() -> None:
    """Two photos enrolled per listed person: a search scores each person by the better of
    their photos. P0's three photos are e0, e1 and their mean; whichever one is left out to
    search, its best enrolled match scores 0.707 (one photo alone would give 0 or 0.707)."""
    eye = np.eye(16, dtype=np.float32)
    half = (eye[0] + eye[1]) / np.sqrt(2)
    rows = [eye[0], eye[1], half]  # P0
    rows += [eye[i] for i in (2, 2, 2, 3, 3, 3, 4, 4, 4)]  # P1..P3: three equal photos each
    rows += [0.6 * eye[0] + 0.8 * eye[8], eye[9], eye[10], eye[11]]  # P4..P7: one photo each
    vectors = np.stack(rows).astype(np.float32)
    people = {"P0": [0, 1, 2], "P1": [3, 4, 5], "P2": [6, 7, 8], "P3": [9, 10, 11]}
    people |= {f"P{4 + i}": [12 + i] for i in range(4)}
    ok = np.ones(len(vectors), bool)
    for seed in range(5):
        samples = measure(vectors, ok, people, 4, seed=seed, draws=1, enrol_images=2)
        assert samples.gallery_size == 4
        assert sorted(np.round(samples.mated, 3)) == [0.707, 1.0, 1.0, 1.0]
        # Strangers: P4 looks like P0's first photo whenever it is enrolled (0.6), or like
        # the mean photo (0.424); nobody else resembles anyone.
        assert sorted(np.round(samples.non_mated, 3))[:3] == [0.0, 0.0, 0.0]
        assert round(float(samples.non_mated.max()), 3) in (0.6, 0.424)


CONFIG = """# my deployment
name = "x"

[matching]  # tuned by hand
top_k = 3
threshold = 0.5   # keep this comment

[quality]
min_face_px = 30
"""


def test_set_threshold_keeps_everything_else() -> None:
    out = set_threshold_text(CONFIG, 0.4321)
    assert out == CONFIG.replace("threshold = 0.5   #", "threshold = 0.4321   #")
    no_line = CONFIG.replace("threshold = 0.5   # keep this comment\n", "")
    out = set_threshold_text(no_line, 0.4)
    assert tomllib.loads(out)["matching"] == {"top_k": 3, "threshold": 0.4}
    assert out.startswith("# my deployment") and "[quality]\nmin_face_px = 30" in out
    bare = 'name = "x"'
    assert tomllib.loads(set_threshold_text(bare, 0.45)) == {
        "name": "x",
        "matching": {"threshold": 0.45},
    }
    with pytest.raises(ValueError, match="by hand"):
        set_threshold_text('name = "x"\nmatching.threshold = 0.5\n', 0.4)


def test_write_threshold_validates_and_names_the_file(tmp_path) -> None:
    path = tmp_path / "c.toml"
    path.write_text(CONFIG)
    write_threshold(path, 0.47)
    assert load_config(path).matching.threshold == pytest.approx(0.47)
    assert load_config(path).quality.min_face_px == 30
    with pytest.raises(ValueError, match=str(tmp_path / "missing.toml")):
        write_threshold(tmp_path / "missing.toml", 0.4)


def test_tracker_settings_follow_the_config_defaults() -> None:
    assert MatchingConfig().tracking == TrackerSettings()


# -- the commands, on a small slice of lfw-dev ----------------------------------------------------


@pytest.fixture(scope="module")
def small_lfw(tmp_path_factory):
    """20 people with 2+ photos and 20 with one, copied to a temporary folder."""
    root = tmp_path_factory.mktemp("lfw-small")
    names = sorted(p.name for p in LFW.iterdir() if p.is_dir())
    multi = [n for n in names if len(list((LFW / n).glob("*.jpg"))) >= 2][:20]
    single = [n for n in names if len(list((LFW / n).glob("*.jpg"))) == 1][:20]
    for name in multi + single:
        for photo in sorted((LFW / name).glob("*.jpg"))[:3]:
            (root / name).mkdir(exist_ok=True)
            shutil.copyfile(photo, root / name / photo.name)
    return root


def run_json(capsys, argv: list[str]) -> dict:
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1
    return json.loads(out)


@pytest.mark.slow
def test_identify_command(small_lfw, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LFR_CACHE_DIR", str(tmp_path / "cache"))
    base = ["eval", "identify", "--dataset", str(small_lfw), "--gallery-size", "10", "--json"]
    one = run_json(capsys, [*base, "--seed", "4"])
    for key in (
        "tpir_at_fpir",
        "false_alerts_allowed",
        "threshold",
        "tpir_at_threshold",
        "fpir_at_threshold",
        "mated",
        "non_mated",
        "undetected",
    ):
        assert key in one
    assert list(one)[:8] == [
        "tpir_at_fpir",
        "false_alerts_allowed",
        "threshold",
        "tpir_at_threshold",
        "fpir_at_threshold",
        "mated",
        "non_mated",
        "undetected",
    ]
    assert one["tpir_at_fpir"]["0.01"] is None  # ~40 non-mated: no FPIR of 1 % is measurable
    assert one["threshold"] == MatchingConfig().threshold
    # ~40 non-mated searches: no tail to fit, and the report says why rather than guess.
    tail = one["extrapolated"]
    assert tail["model"] is None and tail["tpir_at_fpir"] == {"1/6000": None, "1/60000": None}
    assert f"{one['non_mated']} non-mated searches" in tail["reason"]
    assert "1 in 6,000" in tail["method"]
    assert main([*base[:-1], "--seed", "4"]) == 0
    assert "not extrapolated:" in capsys.readouterr().err
    plot = tmp_path / "det.png"
    both = run_json(capsys, [*base, "--seeds", "4,5", "--plot", str(plot)])
    assert plot.read_bytes().startswith(b"\x89PNG")
    assert [s["seeds"] for s in both["per_seed"]] == [[4], [5]]
    first = dict(both["per_seed"][0], seconds=0)
    assert first == dict(one, seconds=0)  # seed 4 alone or among others: the same numbers
    assert both["mated"] == pytest.approx(
        (both["per_seed"][0]["mated"] + both["per_seed"][1]["mated"]) / 2
    )


def test_identify_command_errors(tmp_path, capsys) -> None:
    assert main(["eval", "identify", "--dataset", str(tmp_path / "nope")]) == 2
    assert "nope: dataset folder not found" in capsys.readouterr().err
    assert main(["eval", "identify", "--dataset", str(tmp_path), "--seeds", "1,x"]) == 2
    assert "--seeds" in capsys.readouterr().err
    for flag in ("--max-probes", "--enrol-images", "--gallery-size"):
        assert main(["eval", "identify", "--dataset", str(tmp_path), flag, "0"]) == 2
        assert f"{flag} 0: must be >= 1" in capsys.readouterr().err


@pytest.mark.slow
def test_calibrate_command_writes_the_config(small_lfw, tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("LFR_CACHE_DIR", str(tmp_path / "cache"))
    config = tmp_path / "site.toml"
    config.write_text(CONFIG)
    result = run_json(
        capsys,
        [
            "calibrate",
            "--footfall",
            "1000",
            "--false-alerts-per-day",
            "1",
            "--watchlist-size",
            "10",
            "--dataset",
            str(small_lfw),
            "--write",
            str(config),
            "--json",
        ],
    )
    assert result["target_fpir"] == pytest.approx(1e-3)
    assert result["tail_fit"]  # ~60 searches cannot show 1e-3 directly
    lo, hi = result["threshold_ci"]
    assert lo <= result["threshold"] <= hi or math.isclose(lo, hi)
    assert load_config(config).matching.threshold == pytest.approx(result["threshold"], abs=1e-4)
    assert "# keep this comment" in config.read_text()
    assert (
        main(
            [
                "calibrate",
                "--footfall",
                "10",
                "--false-alerts-per-day",
                "20",
                "--watchlist-size",
                "5",
                "--dataset",
                str(small_lfw),
            ]
        )
        == 2
    )
    assert "at most the footfall" in capsys.readouterr().err
