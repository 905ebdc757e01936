"""lfr watchlist check: photo issues, near-duplicate entries and crowd scores, on lfw-dev photos."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from bundles import vector_bundle
from paths import LFW

from lfr.cli import main
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist, load_bundle
from lfr.watchlist.bundle import (
    FORMAT_VERSION,
    ImageRecord,
    Manifest,
    PersonRecord,
    write_bundle,
)
from lfr.watchlist.check import Crowd, check_watchlist, photo_issues
from lfr.watchlist.pose import yaw_ratio
from lfr.watchlist.views import enrolment_views

PLANTED = "Planted_Alias"


def _people_with(photos: int) -> list[str]:
    return sorted(p.name for p in LFW.iterdir()
                  if p.is_dir() and len(list(p.glob("*.jpg"))) >= photos)


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return default_analyzer()


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, str]:
    """A watchlist source of 12 people, one photo each, where one person's second photo is
    listed again under another name; and a crowd folder of 10 other people."""
    root = tmp_path_factory.mktemp("planted")
    source, crowd = root / "source", root / "crowd"
    many = _people_with(3)
    listed = many[::36][:12]
    duplicated = listed[3]
    for name in listed:
        (source / name).mkdir(parents=True)
        shutil.copyfile(LFW / name / f"{name}_0001.jpg", source / name / f"{name}_0001.jpg")
    (source / PLANTED).mkdir()
    shutil.copyfile(LFW / duplicated / f"{duplicated}_0002.jpg", source / PLANTED / "alias.jpg")
    for name in [n for n in _people_with(2)[7::75] if n not in listed][:10]:
        shutil.copytree(LFW / name, crowd / name)
    return source, crowd, duplicated


@pytest.fixture(scope="module")
def planted_bundle(planted: tuple[Path, Path, str], analyzer: FaceAnalyzer,
                   tmp_path_factory: pytest.TempPathFactory) -> Path:
    bundle = tmp_path_factory.mktemp("planted-bundle") / "wl"
    assert build_watchlist(planted[0], bundle, analyzer).persons_enrolled == 13
    return bundle


def test_a_duplicated_identity_is_the_riskiest(
    planted: tuple[Path, Path, str], planted_bundle: Path
) -> None:
    duplicated = planted[2]
    watchlist = load_bundle(planted_bundle)
    record = watchlist.person(duplicated).images[0]
    assert record.face_px and record.det_score and record.sharpness  # measured at enrolment
    assert record.yaw is not None and abs(record.yaw) < 1
    checked = check_watchlist(watchlist, threshold=0.5, top=5)
    assert {c.id for c in checked.riskiest[:2]} == {duplicated, PLANTED}
    assert checked.riskiest[0].risk > 0.6  # the same man's two photos
    assert checked.riskiest[2].risk < 0.45  # nobody else comes close
    assert [tuple(sorted(p[:2])) for p in checked.near_duplicates] == [
        tuple(sorted((duplicated, PLANTED)))]
    assert "merge" in checked.riskiest[0].advice[0]


def test_check_command_with_a_crowd(
    planted: tuple[Path, Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LFR_CACHE_DIR", str(tmp_path / "cache"))
    source, crowd_dir, duplicated = planted
    bundle = tmp_path / "wl"
    assert main(["watchlist", "build", str(source), "-o", str(bundle), "--crowd",
                 str(crowd_dir), "--json"]) == 0
    built = json.loads(capsys.readouterr().out)
    assert built["check"]["crowd_faces"] > 10
    assert main(["watchlist", "check", str(bundle), "--crowd", str(crowd_dir), "--json",
                 "--top", "3"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["crowd"] == str(crowd_dir)
    assert report["crowd_left_out"] == 0
    assert report["crowd_faces"] == built["check"]["crowd_faces"]
    first = report["riskiest"][0]
    assert first["id"] in (duplicated, PLANTED)
    assert len(first["crowd_top"]) == 3 and first["crowd_tail"] is not None
    assert all(n["who"].split("/")[0] in set(p.name for p in crowd_dir.iterdir())
               for n in first["crowd_top"])
    # The crowd folder of a listed person is that person's: left out, not counted as strangers.
    shutil.copytree(crowd_dir / sorted(p.name for p in crowd_dir.iterdir())[0],
                    tmp_path / "crowd2" / duplicated)
    assert main(["watchlist", "check", str(bundle), "--crowd", str(tmp_path / "crowd2"),
                 "--json"]) == 0
    again = json.loads(capsys.readouterr().out)
    assert again["crowd_faces"] == 0 and again["crowd_left_out"] > 0


def test_check_errors(planted_bundle: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LFR_CACHE_DIR", str(tmp_path / "cache"))
    assert main(["watchlist", "check", str(tmp_path / "nope")]) == 2
    assert "nope: no such watchlist bundle" in capsys.readouterr().err
    bundle = str(planted_bundle)
    blank = tmp_path / "blank" / "someone"
    blank.mkdir(parents=True)
    cv2.imwrite(str(blank / "grey.jpg"), np.full((120, 120, 3), 128, np.uint8))
    assert main(["watchlist", "check", bundle, "--crowd", str(tmp_path / "blank"), "--json"]) == 2
    err = json.loads(capsys.readouterr().out)["error"]
    assert "blank: no face found in any of its 1 images" in err
    assert main(["watchlist", "check", bundle, "--crowd", str(tmp_path / "none")]) == 2
    assert "none: dataset folder not found" in capsys.readouterr().err
    assert main(["watchlist", "check", bundle, "--top", "0"]) == 2
    assert "--top 0" in capsys.readouterr().err
    other = tmp_path / "other"  # built by another embedder: its scores mean nothing here
    vector_bundle(other, ["a", "b"], np.eye(2, 128, dtype=np.float32))
    assert main(["watchlist", "check", str(other), "--crowd", str(tmp_path / "blank")]) == 2
    assert "embedder 'e'" in capsys.readouterr().err


def test_photo_issues_and_pose() -> None:
    good = ImageRecord(source="a.jpg", sha256="", outcome="enrolled", row=0, face_px=120,
                       det_score=0.95, sharpness=300, yaw=0.02)
    assert photo_issues(good) == []
    bad = ImageRecord(source="b.jpg", sha256="", outcome="enrolled", row=1, face_px=40,
                      det_score=0.6, sharpness=10, yaw=-0.4)
    issues = " ".join(photo_issues(bad))
    for word in ("small face", "weak detection", "blurred", "head turned"):
        assert word in issues
    assert photo_issues(ImageRecord(source="c.jpg", sha256="", outcome="enrolled")) == []
    frontal = [(40, 50), (80, 50), (60, 70), (45, 90), (75, 90)]
    turned = [(40, 50), (80, 50), (75, 70), (55, 90), (80, 90)]
    assert abs(yaw_ratio(frontal)) < 0.01
    assert yaw_ratio(turned) == pytest.approx(0.375)
    with pytest.raises(ValueError, match="5"):
        yaw_ratio([(0, 0)])


def test_crowd_alerts_count_faces_over_the_threshold(tmp_path: Path) -> None:
    ids = ["generic", "distinct"]
    vectors = np.eye(2, 8, dtype=np.float32)
    watchlist = vector_bundle(tmp_path / "wl", ids, vectors)
    near = np.array([[0.8, 0.0, 0.6, 0, 0, 0, 0, 0], [0.7, 0.0, 0.0, 0.714, 0, 0, 0, 0],
                     [0.0, 0.3, 0.954, 0, 0, 0, 0, 0]], np.float32)
    near /= np.linalg.norm(near, axis=1, keepdims=True)
    crowd = Crowd(vectors=near, people=("x", "y", "z"), paths=("x/1.jpg", "y/1.jpg", "z/1.jpg"),
                  root="crowd", images=3)
    report = check_watchlist(watchlist, threshold=0.5, crowd=crowd)
    by_id = {c.id: c for c in report.riskiest}
    assert by_id["generic"].crowd_alerts == 2 and by_id["distinct"].crowd_alerts == 0
    assert report.riskiest[0].id == "generic"
    assert by_id["generic"].crowd_top[0].who == "x/1.jpg"
    assert report.crowd_alerts == 2 and report.crowd_alerts_per_1000 == pytest.approx(666.667)
    assert "add a second photo" in by_id["generic"].advice[0]


def test_a_photo_unlike_its_entry_s_others_is_named(tmp_path: Path) -> None:
    # "mixed" has three photos: two of one face and one of somebody else.
    vectors = np.eye(4, 8, dtype=np.float32)
    vectors[1] = (vectors[0] + 0.2 * vectors[3]) / np.linalg.norm(vectors[0] + 0.2 * vectors[3])
    persons = (
        PersonRecord(id="mixed", name="Mixed", images=tuple(
            ImageRecord(source=f"mixed/{row}.jpg", sha256="", outcome="enrolled", row=row,
                        thumbnail=f"{row:05d}.jpg") for row in range(3))),
        PersonRecord(id="other", name="Other", images=(
            ImageRecord(source="other/3.jpg", sha256="", outcome="enrolled", row=3,
                        thumbnail="00003.jpg"),)),
    )
    manifest = Manifest(format_version=FORMAT_VERSION, created="2025-01-01T00:00:00.000+00:00",
                        detector="d", embedder="e", dim=8, persons=persons)
    write_bundle(tmp_path / "wl", manifest, vectors, {f"{r:05d}.jpg": b"x" for r in range(4)})
    report = check_watchlist(load_bundle(tmp_path / "wl"), threshold=0.5)
    by_id = {c.id: c for c in report.riskiest}
    assert len(by_id["mixed"].photo_issues) == 1
    assert by_id["mixed"].photo_issues[0].startswith("mixed/2.jpg: looks like none")
    assert by_id["other"].photo_issues == []


def test_enrolment_from_augmented_views(planted: tuple[Path, Path, str], analyzer: FaceAnalyzer,
                                        tmp_path: Path) -> None:
    source = tmp_path / "two"
    for name in sorted(p.name for p in planted[0].iterdir())[:2]:
        shutil.copytree(planted[0] / name, source / name)
    build_watchlist(source, tmp_path / "plain", analyzer)
    build_watchlist(source, tmp_path / "views", analyzer, views=True)
    plain, views = load_bundle(tmp_path / "plain"), load_bundle(tmp_path / "views")
    assert plain.labels == views.labels
    agreement = np.sum(plain.vectors * views.vectors, axis=1)
    assert np.all(agreement > 0.9) and np.all(agreement < 0.9999)  # the same face, other rows
    assert np.allclose(np.linalg.norm(views.vectors, axis=1), 1.0, atol=1e-4)
    image = cv2.imread(str(next((source / plain.labels[0]).iterdir())))
    face = analyzer.detect(image)[0]
    aligned = enrolment_views(image, face.detection.landmarks)
    assert len(aligned) == 8 and all(v.shape == (112, 112, 3) for v in aligned)
    assert np.array_equal(aligned[0], face.aligned)  # the first view is the plain alignment


def test_a_deployment_builds_its_bundle_with_its_crowd(
    planted: tuple[Path, Path, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from lfr.cli.plugins import load_registry
    from lfr.cli.watchlist import prepare_watchlist
    from lfr.config import load_config

    monkeypatch.setenv("LFR_CACHE_DIR", str(tmp_path / "cache"))
    source, crowd_dir, _ = planted
    config_file = tmp_path / "site.toml"
    config_file.write_text(f'name = "site"\n[watchlist]\nbundle = "wl"\nsource = "{source}"\n'
                           f'crowd = "{crowd_dir}"\n')
    prepare_watchlist(load_config(config_file), True, load_registry())
    watchlist = load_bundle(tmp_path / "wl")
    assert watchlist.manifest.crowd is not None
    assert watchlist.manifest.crowd.folder == str(crowd_dir) and watchlist.manifest.crowd.faces > 10
    means = [p.crowd_mean for p in watchlist.persons]
    assert all(m is not None and -1 < m < 1 for m in means) and len(set(means)) > 1
