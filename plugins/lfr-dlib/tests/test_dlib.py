"""lfr-dlib on a handful of images: the contracts, dlib's own alignment, a few lfw-dev pairs and a
deployment that uses both backends."""

from __future__ import annotations

import shutil
from pathlib import Path

import anyio
import cv2
import numpy as np
import pytest
from lfr.config import parse_config
from lfr.deployment import Deployment
from lfr.plugins import BuildContext, ConfigError, load_plugins
from lfr.testing import aligned_faces, check_detector, check_embedder, demo_data_dir, sample_frames
from lfr.vision.align import align_face
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.quality import QualityGate
from lfr.watchlist import build_watchlist

from lfr_dlib import DlibDetector, DlibEmbedder

DEMO = demo_data_dir()
LFW = DEMO.parent / "lfw-dev" if DEMO else Path("lfw-dev")
# Measured on lfw-dev (measure.py, README): the 10 folds' mean accuracy threshold (1:1) and the
# threshold at a false accept rate of 1e-3, for a watchlist.
THRESHOLD_1_TO_1 = 0.90
THRESHOLD_WATCHLIST = 0.92


@pytest.fixture(scope="module")
def detector():
    return DlibDetector()


@pytest.fixture(scope="module")
def embedder():
    return DlibEmbedder()


@pytest.fixture(scope="module")
def frames():
    assert DEMO is not None, "set LFR_DEMO_DATA to lfr's demo folder"
    return [f.image for f in sample_frames(limit=2)]  # Obama with Biden, Harington with Leslie


def test_detector_passes_the_contract(detector, frames):
    report = check_detector(detector, frames)
    assert report.faces >= 4


def test_embedder_passes_the_contract(detector, embedder, frames):
    report = check_embedder(embedder, aligned_faces(frames[:1], detector))
    assert report.dim == 128 and report.min_self_similarity > 0.95


def test_lfr_alignment_gives_dlibs_own_descriptor(detector, embedder):
    """Through lfr's 112x112 alignment and the chip template, a face embeds as it does through
    dlib's own chip (get_face_chip on its 5-point landmarks)."""
    import dlib
    import face_recognition_models as models

    image = cv2.imread(str(LFW / "Aaron_Eckhart" / "Aaron_Eckhart_0001.jpg"))
    rgb = np.ascontiguousarray(image[:, :, ::-1])
    (rect,) = dlib.get_frontal_face_detector()(rgb, 1)
    shape = dlib.shape_predictor(models.pose_predictor_five_point_model_location())(rgb, rect)
    native = np.array(embedder._model.compute_face_descriptor(dlib.get_face_chip(rgb, shape)))
    native /= np.linalg.norm(native)
    (det,) = detector.detect(image)
    ours = embedder.embed([align_face(image, det.landmarks)])[0]
    assert float(ours @ native) > 0.97


def test_registered_with_validated_settings(tmp_path):
    registry = load_plugins()
    info = next(p for p in registry.plugins if p.name == "dlib")
    assert info.error is None and info.provides == {"detector": ["dlib"], "embedder": ["dlib"]}
    settings = registry.parse_settings("detector", {"kind": "dlib", "upsample": 0}, "$.detector")
    detector = registry.create("detector", settings, BuildContext(data_dir=tmp_path))
    assert detector.upsample == 0 and detector.name == "dlib-hog"
    with pytest.raises(ConfigError, match=r"\$\.detector\.model: Invalid enum value 'mtcnn'"):
        registry.parse_settings("detector", {"kind": "dlib", "model": "mtcnn"}, "$.detector")


def test_a_few_lfw_pairs_verify(detector, embedder):
    from lfr.eval.dataset import embed_image
    from lfr.eval.pairs import parse_pairs

    pairs = parse_pairs(LFW.parent / "lfw-dev-pairs.tsv")
    same = [p for p in pairs if p.same][:4]
    different = [p for p in pairs if not p.same][:4]
    analyzer = FaceAnalyzer(detector, embedder)

    def score(pair):
        a, b = (
            embed_image(cv2.imread(str(LFW / path)), analyzer)
            for path in (pair.path_a, pair.path_b)
        )
        assert a is not None and b is not None
        return float(a[0] @ b[0])

    assert min(map(score, same)) > THRESHOLD_1_TO_1 > max(map(score, different))


def test_a_deployment_with_dlib_backends(tmp_path, detector, embedder):
    people = tmp_path / "people"
    for person in ("obama", "biden"):
        shutil.copytree(DEMO / "people" / person, people / person)
    # A watchlist is embedded by the deployment's own embedder.
    build_watchlist(people, tmp_path / "wl", FaceAnalyzer(detector, embedder, QualityGate()))
    config = parse_config(
        {
            "name": "dlib",
            "data_dir": str(tmp_path / "data"),
            "watchlist": {"bundle": str(tmp_path / "wl")},
            "detector": {"kind": "dlib"},
            "embedder": {"kind": "dlib"},
            "matching": {"threshold": THRESHOLD_WATCHLIST},
            "notifiers": [{"kind": "jsonl"}],
        },
        "test",
    )
    photos = [DEMO / "scenes" / name for name in ("obama_and_biden.jpg", "kit_with_rose.jpg")]
    deployment = Deployment(config, load_plugins(), offline=True, once=True, photos=photos)
    with deployment.alerts.record() as raised:  # every alert of the run
        summary = anyio.run(deployment.run, False)
        alerts = raised.items
    assert summary.faces >= 4
    assert sorted((a.camera, a.person_id) for a in alerts) == [
        ("obama_and_biden.jpg", "biden"),
        ("obama_and_biden.jpg", "obama"),
    ]
