from __future__ import annotations

import hashlib
import json
import shutil
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import cv2
import numpy as np
import pytest
from bundles import vector_bundle

from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import (
    BuildReport,
    EnrolOutcome,
    WatchlistError,
    build_watchlist,
    bundle_digest,
    bundle_info,
    destroy_bundle,
    load_bundle,
    rebuild_reason,
)
from lfr.watchlist.bundle import write_bundle
from lfr.watchlist.enrol import count_images, decode_image, display_name

DEMO = Path("/work/shared/data/demo")
PEOPLE = DEMO / "people"


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return default_analyzer()


@pytest.fixture(scope="module")
def demo(
    analyzer: FaceAnalyzer, tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, BuildReport, list[EnrolOutcome]]:
    seen: list[EnrolOutcome] = []
    output = tmp_path_factory.mktemp("demo") / "watchlist"
    report = build_watchlist(PEOPLE, output, analyzer, progress=seen.append)
    return output, report, seen


def read(path: Path) -> np.ndarray:
    image = cv2.imread(str(path))
    assert image is not None, path
    return image


def copy_bundle(demo: tuple[Path, BuildReport, list[EnrolOutcome]], tmp_path: Path) -> Path:
    return Path(shutil.copytree(demo[0], tmp_path / "copy"))


def write_image(path: Path, image: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), image)
    return path


@pytest.mark.parametrize(
    ("person_id", "name"),
    [
        ("lin_manuel_miranda", "Lin Manuel Miranda"),
        ("lin-manuel-miranda", "Lin Manuel Miranda"),
        ("obama", "Obama"),
        ("mcDonald_x", "McDonald X"),
    ],
)
def test_display_name(person_id: str, name: str) -> None:
    assert display_name(person_id) == name


def test_demo_folder_enrols_everyone(demo: tuple[Path, BuildReport, list[EnrolOutcome]]) -> None:
    output, report, seen = demo
    images = sorted(p for p in PEOPLE.glob("*/*") if p.is_file())
    assert count_images(PEOPLE) == len(images) == 15
    assert report.counts()["enrolled"] == 15 and report.problems() == []
    assert report.persons_enrolled == 6 and report.persons_without_images == ()
    assert json.loads(json.dumps(report.to_dict()))["counts"]["enrolled"] == 15
    assert [o.source for o in seen] == [f"{p.parent.name}/{p.name}" for p in images]
    watchlist = load_bundle(output)
    assert watchlist.name("lin_manuel_miranda") == "Lin Manuel Miranda"
    assert watchlist.name("kit_harington") == "Kit Harington"
    assert watchlist.labels.count("lin_manuel_miranda") == 1  # from a PNG with alpha
    assert watchlist.labels.count("obama") == 4
    obama = watchlist.person("obama")
    assert (
        obama.images[0].sha256
        == hashlib.sha256((PEOPLE / "obama" / "obama.jpg").read_bytes()).hexdigest()
    )


def test_load_round_trip(demo: tuple[Path, BuildReport, list[EnrolOutcome]]) -> None:
    output, report, _ = demo
    watchlist = load_bundle(output)
    assert watchlist.vectors.shape == (15, 128) and watchlist.vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(watchlist.vectors, axis=1), 1.0, atol=1e-4)
    assert watchlist.digest() == report.digest == bundle_digest(output)
    # Rows of one person look alike more than rows of two people.
    obama = watchlist.vectors[[i for i, p in enumerate(watchlist.labels) if p == "obama"]]
    biden = watchlist.vectors[[i for i, p in enumerate(watchlist.labels) if p == "biden"]]
    assert (obama @ obama.T).min() > (obama @ biden.T).max()
    thumb = cv2.imdecode(
        np.frombuffer(watchlist.thumbnail_jpeg("rose_leslie"), np.uint8), cv2.IMREAD_COLOR
    )
    assert thumb is not None and max(thumb.shape[:2]) == 128
    assert len(watchlist) == 6 and "obama" in watchlist and "nobody" not in watchlist
    with pytest.raises(KeyError):
        watchlist.name("nobody")
    info = watchlist.info()
    json.dumps(info)
    assert info["persons"] == 6 and info["rows"] == 15 and info["dim"] == 128
    assert info["digest"] == report.digest and info["embedder"] == "sface+flip"
    assert info["expired"] is False and watchlist.dim == 128
    assert watchlist.category("obama") == ""
    assert info["images"] == {
        "enrolled": 15,
        "no_face": 0,
        "several_faces": 0,
        "face_too_small": 0,
        "low_quality": 0,
        "unreadable": 0,
    }
    assert {
        "id": "biden",
        "name": "Biden",
        "category": "",
        "expiry": None,
        "enrolled": 2,
        "rejected": 0,
    } in info["persons_detail"]  # type: ignore[operator]


def test_bad_images_get_their_outcome_and_the_rest_is_enrolled(
    analyzer: FaceAnalyzer, tmp_path: Path
) -> None:
    source = tmp_path / "source"
    good = (PEOPLE / "obama" / "obama.jpg").read_bytes()
    person = source / "obama"
    person.mkdir(parents=True)
    (person / "a_good.jpg").write_bytes(good)
    (person / "b_truncated.jpg").write_bytes(good[: len(good) // 2])
    (person / "c_empty.jpg").write_bytes(b"")
    (person / "d_text.jpg").write_text("not a picture\n")
    write_image(person / "e_grey.png", np.full((200, 200), 128, np.uint8))
    obama = read(PEOPLE / "obama" / "obama.jpg")
    write_image(person / "f_greyscale.png", cv2.cvtColor(obama, cv2.COLOR_BGR2GRAY))
    write_image(
        person / "g_tiny.jpg",
        cv2.resize(obama, None, fx=1 / 14, fy=1 / 14, interpolation=cv2.INTER_AREA),
    )
    # A small bystander in the corner is not a reason to reject; two similar faces are.
    bystander = cv2.resize(read(PEOPLE / "biden" / "biden2.jpg"), None, fx=0.3, fy=0.3)
    with_bystander = obama.copy()
    with_bystander[-bystander.shape[0] :, -bystander.shape[1] :] = bystander
    write_image(person / "h_bystander.jpg", with_bystander)
    shutil.copy(DEMO / "scenes" / "two_people.jpg", person / "i_two_people.jpg")
    (person / "notes.txt").write_text("ignored: not an image file name")
    write_image(source / "nobody" / "blank.png", np.zeros((64, 64, 3), np.uint8))

    report = build_watchlist(source, tmp_path / "out", analyzer)
    outcomes = {o.source: o.outcome for o in report.outcomes}
    assert outcomes == {
        "obama/a_good.jpg": "enrolled",
        "obama/b_truncated.jpg": "unreadable",
        "obama/c_empty.jpg": "unreadable",
        "obama/d_text.jpg": "unreadable",
        "obama/e_grey.png": "no_face",
        "obama/f_greyscale.png": "enrolled",
        "obama/g_tiny.jpg": "face_too_small",
        "obama/h_bystander.jpg": "enrolled",
        "obama/i_two_people.jpg": "several_faces",
        "nobody/blank.png": "no_face",
    }
    reasons = {o.source: o.reason for o in report.outcomes}
    assert reasons["obama/c_empty.jpg"] == "empty file"
    assert "2 faces" in reasons["obama/i_two_people.jpg"]
    assert "too small" in reasons["obama/g_tiny.jpg"]
    assert report.persons_without_images == ("nobody",) and report.persons_enrolled == 1
    assert report.counts()["unreadable"] == 3
    assert "obama/c_empty.jpg: unreadable (empty file)" in report.problems()
    assert "nobody: no image enrolled; left out of the watchlist" in report.problems()

    watchlist = load_bundle(tmp_path / "out")
    assert watchlist.labels == ("obama",) * 3 and "nobody" not in watchlist
    assert watchlist.info()["persons_without_images"] == ["nobody"]
    # The bystander picture enrolled the large face: it looks like the plain Obama picture.
    assert float(watchlist.vectors[0] @ watchlist.vectors[2]) > 0.8
    records = {i.source: i for i in watchlist.person("obama").images}
    # Not images: nothing of them hashed (a truncated image is one, and is hashed).
    assert records["obama/c_empty.jpg"].sha256 == records["obama/d_text.jpg"].sha256 == ""
    truncated = (person / "b_truncated.jpg").read_bytes()
    assert records["obama/b_truncated.jpg"].sha256 == hashlib.sha256(truncated).hexdigest()
    assert records["obama/d_text.jpg"].row is None and records["obama/d_text.jpg"].thumbnail is None


def test_nothing_enrolled_writes_nothing(analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    write_image(tmp_path / "src" / "nobody" / "grey.png", np.full((80, 80, 3), 90, np.uint8))
    with pytest.raises(WatchlistError, match="no image could be enrolled"):
        build_watchlist(tmp_path / "src", tmp_path / "out", analyzer)
    assert not (tmp_path / "out").exists()


def test_decode_image_handles_alpha_and_grey() -> None:
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 2] = 255  # red, half of it transparent
    rgba[:2, ..., 3] = 255
    _, png = cv2.imencode(".png", rgba)
    decoded = decode_image(png.tobytes())
    assert decoded is not None and decoded.shape == (4, 4, 3)
    assert decoded[0, 0].tolist() == [0, 0, 255] and decoded[3, 3].tolist() == [255, 255, 255]
    _, grey = cv2.imencode(".png", np.full((5, 6), 7, np.uint8))
    decoded = decode_image(grey.tobytes())
    assert decoded is not None and decoded.shape == (5, 6, 3) and decoded.dtype == np.uint8
    assert decode_image(b"") is None and decode_image(b"GIF89a nonsense") is None


def write_csv(path: Path, header: str, rows: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


def test_csv_source(analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    pictures = tmp_path / "pictures"
    pictures.mkdir()
    shutil.copy(PEOPLE / "rose_leslie" / "img1.jpg", pictures / "rose.jpg")
    soon = (date.today() + timedelta(days=30)).isoformat()
    source = write_csv(
        tmp_path / "list.csv",
        "ID,Name,Image,category,notes,expiry",
        [
            f"rose,Rose Leslie,pictures/rose.jpg,missing person,seen in Leeds,{soon}",
            f"kit_harington,,{PEOPLE / 'kit_harington' / 'john2.jpeg'},,,",
            "kit_harington,,pictures/missing.jpg,,,",
            f"old,Old Entry,{PEOPLE / 'obama' / 'obama.jpg'},,,2001-01-01",
        ],
    )
    # Absolute paths outside the CSV's folder: allowed here (tests/test_bounded_inputs.py: refused
    # by default).
    report = build_watchlist(source, tmp_path / "out", analyzer, expiry=soon, allow_outside=True)
    assert [(o.person_id, o.source, o.outcome) for o in report.outcomes] == [
        ("rose", "pictures/rose.jpg", "enrolled"),
        ("kit_harington", str(PEOPLE / "kit_harington" / "john2.jpeg"), "enrolled"),
        ("kit_harington", "pictures/missing.jpg", "unreadable"),
        ("old", str(PEOPLE / "obama" / "obama.jpg"), "enrolled"),
    ]
    watchlist = load_bundle(tmp_path / "out")
    rose = watchlist.person("rose")
    assert (rose.name, rose.category, rose.notes, rose.expiry) == (
        "Rose Leslie",
        "missing person",
        "seen in Leeds",
        soon,
    )
    assert watchlist.name("kit_harington") == "Kit Harington"  # derived from the id
    # A person whose own expiry has passed stays in the manifest but is not searched.
    assert watchlist.expired_persons == ("old",) and "old" not in watchlist.labels
    assert watchlist.labels == ("rose", "kit_harington")
    assert watchlist.info()["expiry"] == soon


def test_csv_missing_columns(analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    source = write_csv(tmp_path / "people.csv", "id,picture", ["a,a.jpg"])
    with pytest.raises(
        WatchlistError, match=r"people\.csv: missing required column\(s\) name, image"
    ):
        build_watchlist(source, tmp_path / "out", analyzer)


def test_csv_row_errors_are_listed_together(analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    source = write_csv(
        tmp_path / "people.csv",
        "id,name,image,expiry",
        [",Nobody,a.jpg,", "a,Alpha,a.jpg,", "a,Other,b.jpg,", "b,Beta,,", "c,C,c.jpg,soon"],
    )
    with pytest.raises(WatchlistError) as error:
        build_watchlist(source, tmp_path / "out", analyzer)
    message = str(error.value)
    assert "people.csv" in message and "line 2: empty id" in message
    assert "line 4: name 'Other' differs from 'Alpha'" in message
    assert "line 5: empty image" in message and "line 6: expiry 'soon'" in message


def test_missing_source(analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    with pytest.raises(WatchlistError, match="no such folder or CSV"):
        build_watchlist(tmp_path / "nope", tmp_path / "out", analyzer)
    (tmp_path / "empty").mkdir()
    with pytest.raises(WatchlistError, match="no person folders"):
        build_watchlist(tmp_path / "empty", tmp_path / "out", analyzer)


def test_expired_bundle_is_refused(analyzer: FaceAnalyzer, tmp_path: Path) -> None:
    source = tmp_path / "source" / "rose_leslie"
    source.mkdir(parents=True)
    shutil.copy(PEOPLE / "rose_leslie" / "img2.jpg", source)
    with pytest.raises(WatchlistError, match="in the past"):
        build_watchlist(source.parent, tmp_path / "out", analyzer, expiry="2001-02-03")
    tomorrow = date.today() + timedelta(days=1)
    build_watchlist(source.parent, tmp_path / "out", analyzer, expiry=tomorrow.isoformat())
    assert load_bundle(tmp_path / "out").labels == ("rose_leslie",)
    # A date is valid through that day (UTC) and expires at the next midnight.
    end = datetime.combine(tomorrow + timedelta(days=1), datetime.min.time(), UTC)
    assert load_bundle(tmp_path / "out", now=end - timedelta(seconds=1))
    with pytest.raises(WatchlistError, match=r"expired at .*; destroy it"):
        load_bundle(tmp_path / "out", now=end)
    info = bundle_info(tmp_path / "out", now=end)  # still inspectable, to be found and destroyed
    assert info["expiry"] == tomorrow.isoformat() and info["expired"] is True


def test_rebuild_replaces_a_bundle_but_never_other_folders(
    demo: tuple[Path, BuildReport, list[EnrolOutcome]], analyzer: FaceAnalyzer, tmp_path: Path
) -> None:
    bundle = copy_bundle(demo, tmp_path)
    source = tmp_path / "source" / "biden"
    source.mkdir(parents=True)
    shutil.copy(PEOPLE / "biden" / "biden.jpg", source)
    build_watchlist(source.parent, bundle, analyzer)
    assert load_bundle(bundle).labels == ("biden",)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["copy", "source"]  # no leftovers
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "keep.txt").write_text("mine")
    with pytest.raises(WatchlistError, match="not a watchlist bundle; refusing"):
        build_watchlist(source.parent, tmp_path / "docs", analyzer)
    assert (tmp_path / "docs" / "keep.txt").read_text() == "mine"
    with pytest.raises(WatchlistError, match="not a watchlist bundle; refusing"):
        build_watchlist(source.parent, tmp_path / "docs" / "keep.txt", analyzer)
    assert (tmp_path / "docs" / "keep.txt").read_text() == "mine"


def test_corrupt_bundles_are_refused(
    demo: tuple[Path, BuildReport, list[EnrolOutcome]], tmp_path: Path
) -> None:
    bundle = copy_bundle(demo, tmp_path)
    loaded = load_bundle(bundle)
    manifest, embeddings = (bundle / "manifest.json").read_bytes(), loaded.vectors
    sealed = (bundle / "embeddings.sealed").read_bytes()

    # Sealed: a changed byte, garbage, or a manifest edited to put rows under other names.
    (bundle / "embeddings.sealed").write_bytes(sealed[:-1] + bytes([sealed[-1] ^ 1]))
    with pytest.raises(WatchlistError, match=r"embeddings\.sealed .*does not decrypt"):
        load_bundle(bundle)
    (bundle / "embeddings.sealed").write_bytes(b"garbage")
    with pytest.raises(WatchlistError, match=r"embeddings\.sealed .*not encrypted by lfr"):
        load_bundle(bundle)
    (bundle / "embeddings.sealed").write_bytes(sealed)
    (bundle / "manifest.json").write_bytes(manifest.replace(b'"Rose Leslie"', b'"Someone Else"'))
    with pytest.raises(WatchlistError, match="does not decrypt"):
        load_bundle(bundle)
    (bundle / "manifest.json").write_bytes(manifest)
    assert load_bundle(bundle).labels == loaded.labels

    thumbs = {f.name.removesuffix(".sealed"): b"" for f in (bundle / "thumbs").iterdir()}
    write_bundle(bundle, loaded.manifest, embeddings[:-1], thumbs)
    with pytest.raises(
        WatchlistError,
        match=r"row count mismatch: the manifest lists 15 enrolled"
        r" images, embeddings\.sealed has 14 rows",
    ):
        load_bundle(bundle)

    (bundle / "manifest.json").write_bytes(manifest[:100])
    with pytest.raises(WatchlistError, match=r"manifest\.json: corrupt manifest"):
        load_bundle(bundle)
    (bundle / "manifest.json").write_bytes(
        manifest.replace(b'"format_version": 2', b'"format_version": 99')
    )
    with pytest.raises(WatchlistError, match="format version 99 is newer"):
        load_bundle(bundle)
    (bundle / "manifest.json").unlink()
    with pytest.raises(WatchlistError, match=r"manifest\.json: missing"):
        load_bundle(bundle)
    with pytest.raises(WatchlistError, match="not a directory"):
        load_bundle(tmp_path / "nowhere")


def test_destroy_bundle(demo: tuple[Path, BuildReport, list[EnrolOutcome]], tmp_path: Path) -> None:
    bundle = copy_bundle(demo, tmp_path)
    (bundle / "mine.txt").write_text("not the bundle's")
    with pytest.raises(WatchlistError, match=r"not part of a bundle \(\['mine.txt'\]\)"):
        destroy_bundle(bundle)
    (bundle / "mine.txt").unlink()
    assert destroy_bundle(bundle) == demo[1].digest
    assert not bundle.exists()
    (tmp_path / "other").mkdir()
    with pytest.raises(WatchlistError, match="not a watchlist bundle"):
        destroy_bundle(tmp_path / "other")
    assert (tmp_path / "other").exists()


def test_rebuild_reason_names_a_missing_bundle_or_another_embedder(tmp_path: Path) -> None:
    bundle, source = tmp_path / "wl", tmp_path / "people"
    assert rebuild_reason(bundle, source, "e") == f"building watchlist {bundle} from {source}"
    vector_bundle(bundle, ["ann"], np.eye(1, 4, dtype=np.float32))  # made by embedder "e"
    assert rebuild_reason(bundle, source, "e") is None
    reason = rebuild_reason(bundle, source, "sface")
    assert reason is not None and "built with embedder 'e'" in reason and "'sface'" in reason
    (bundle / "manifest.json").write_text("{")  # unreadable: loading it reports the problem
    assert rebuild_reason(bundle, source, "sface") is None
