"""lfr's detect/align/embed path against an independent reference: OpenCV's own implementations."""

from __future__ import annotations

import cv2
import numpy as np
import onnx
import pytest
from paths import PEOPLE, SCENES

from lfr.vision.align import ARCFACE_TEMPLATE, align_face, similarity_transform
from lfr.vision.defaults import default_analyzer
from lfr.vision.detect import nms
from lfr.vision.models import (
    BUNDLED_DETECTOR,
    BUNDLED_EMBEDDER,
    ModelError,
    bundled_model_path,
    convert_block_quantized,
    resolve_model,
)

STILLS = sorted(p for p in PEOPLE.rglob("*") if p.is_file()) + sorted(SCENES.glob("*"))


@pytest.fixture(scope="module")
def analyzer():
    # max_side large enough that no still is shrunk: OpenCV runs them at native size too.
    # Without flip: OpenCV's FaceRecognizerSF embeds the face as it is, and so must the reference.
    return default_analyzer(score_threshold=0.6, max_side=4096, flip=False)


@pytest.fixture(scope="module")
def opencv_reference():
    detector_path = str(bundled_model_path(BUNDLED_DETECTOR))
    recognizer_path = str(bundled_model_path(BUNDLED_EMBEDDER))
    # OpenCV runs the int8 files as shipped: independent of lfr's fp32 conversion.
    net = cv2.dnn.readNetFromONNX(recognizer_path)
    aligner = cv2.FaceRecognizerSF.create(recognizer_path, "")

    def reference(image):
        h, w = image.shape[:2]
        det = cv2.FaceDetectorYN.create(detector_path, "", (w, h), 0.6, 0.3, 5000)
        _, faces = det.detect(image)
        faces = [] if faces is None else list(faces)
        embeddings = []
        for face in faces:
            crop = aligner.alignCrop(image, face)
            blob = cv2.dnn.blobFromImage(crop, 1.0, (112, 112), (0, 0, 0), swapRB=True)
            net.setInput(blob, "data")
            vector = net.forward().reshape(-1)
            embeddings.append(vector / np.linalg.norm(vector))
        return faces, embeddings

    return reference


@pytest.mark.parametrize("path", STILLS, ids=lambda p: p.name)
def test_matches_opencv_reference(path, analyzer, opencv_reference):
    image = cv2.imread(str(path))
    ref_faces, ref_embeddings = opencv_reference(image)
    ours = analyzer.analyze(image)
    assert len(ours) == len(ref_faces) >= 1
    for ref, ref_embedding in zip(ref_faces, ref_embeddings, strict=True):
        # Pair each reference face with ours by box centre.
        centre = ref[:2] + ref[2:4] / 2
        mine = min(
            ours,
            key=lambda f: np.linalg.norm(
                np.array(f.detection.box[:2]) + np.array(f.detection.box[2:]) / 2 - centre
            ),
        )
        assert np.allclose(mine.detection.box, ref[:4], atol=2.0)
        assert np.allclose(np.array(mine.detection.landmarks).reshape(-1), ref[4:14], atol=2.0)
        assert abs(mine.detection.score - float(ref[14])) < 0.01
        if mine.embedding is not None:
            assert float(mine.embedding @ ref_embedding) >= 0.99


def test_embeddings_are_unit_length_and_identity_sensitive(analyzer):
    def embed(path):
        (face,) = [f for f in analyzer.analyze(cv2.imread(str(path))) if f.embedding is not None]
        return face.embedding

    obama = sorted((PEOPLE / "obama").glob("*"))
    biden = sorted((PEOPLE / "biden").glob("*"))
    a, b, c = embed(obama[0]), embed(obama[1]), embed(biden[0])
    assert abs(np.linalg.norm(a) - 1) < 1e-5
    assert float(a @ b) > 0.5 > float(a @ c)


def test_default_embedder_flips_so_a_mirrored_face_embeds_alike():
    """The default embedder (flip on) sums the face's and its mirror's embeddings: a face and its
    mirror image get the same embedding, which the plain SFace does not give them."""
    flipped, plain = default_analyzer(), default_analyzer(flip=False)
    assert flipped.embedder.name == "sface+flip" and plain.embedder.name == "sface"
    face = flipped.detect(cv2.imread(str(sorted((PEOPLE / "obama").glob("*"))[0])))[0].aligned
    mirror = np.ascontiguousarray(face[:, ::-1])
    a, b = flipped.embedder.embed([face, mirror])
    assert float(a @ b) > 0.9999
    c, d = plain.embedder.embed([face, mirror])
    assert float(c @ d) < 0.99
    # The flipped embedding stays close to the plain one: the same identity, less pose noise.
    assert float(a @ c) > 0.9


def test_rgb_input_beats_bgr(analyzer):
    """SFace wants RGB: swapping channels lowers the same-person score."""
    obama = sorted((PEOPLE / "obama").glob("*"))
    faces = [analyzer.detect(cv2.imread(str(p)))[0].aligned for p in obama[:2]]
    rgb = analyzer.embedder.embed(faces)
    analyzer.embedder.rgb = False
    try:
        bgr = analyzer.embedder.embed(faces)
    finally:
        analyzer.embedder.rgb = True
    assert float(rgb[0] @ rgb[1]) > float(bgr[0] @ bgr[1])


def test_similarity_transform_recovers_a_known_transform():
    angle, scale, shift = 0.3, 1.7, np.array([12.0, -5.0])
    rot = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    src = ARCFACE_TEMPLATE
    dst = src @ rot.T + shift
    matrix = similarity_transform(src, dst)
    assert np.allclose(matrix[:, :2], rot, atol=1e-9)
    assert np.allclose(matrix[:, 2], shift, atol=1e-9)


def test_align_maps_landmarks_onto_template():
    image = np.zeros((300, 300, 3), np.uint8)
    landmarks = ARCFACE_TEMPLATE * 2 + 20
    for x, y in landmarks:
        cv2.circle(image, (round(x), round(y)), 3, (255, 255, 255), -1)
    aligned = align_face(image, landmarks)
    for x, y in ARCFACE_TEMPLATE:
        assert aligned[round(y), round(x)].max() > 100


def test_nms_suppresses_overlaps_and_keeps_separate_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10]], np.float32)
    scores = np.array([0.8, 0.9, 0.7], np.float32)
    assert nms(boxes, scores, 0.3) == [1, 2]


def test_detector_runs_on_any_frame_size(analyzer):
    for shape in [(1, 1, 3), (31, 45, 3), (360, 640, 3), (250, 250, 3)]:
        assert analyzer.detect(np.full(shape, 127, np.uint8)) == []


def test_converted_model_is_plain_fp32_with_dynamic_batch(tmp_path):
    dst = tmp_path / "sface.onnx"
    convert_block_quantized(bundled_model_path(BUNDLED_EMBEDDER), dst, dynamic_spatial=False)
    model = onnx.load(str(dst))
    assert {n.op_type for n in model.graph.node}.isdisjoint({"DequantizeLinear"})
    assert [i.name for i in model.graph.input] == ["data"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"


def test_missing_user_model_names_the_path(tmp_path):
    with pytest.raises(ModelError, match=r"nope\.onnx: model file not found"):
        resolve_model(str(tmp_path / "nope.onnx"), BUNDLED_DETECTOR)


def test_corrupt_user_model_is_a_clear_error(tmp_path):
    from lfr.vision.detect import YuNetDetector

    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"not a model")
    with pytest.raises(ModelError, match=r"bad\.onnx: onnxruntime cannot load"):
        YuNetDetector(bad)


def test_alert_crop_obscures_bystanders_but_not_the_subject(analyzer):
    from lfr.vision.privacy import context_crop

    image = cv2.imread(str(SCENES / "kit_with_rose.jpg"))
    faces = analyzer.detect(image)
    assert len(faces) == 2
    subject, bystander = (f.detection.box for f in faces)
    # A crop wide enough to hold both faces.
    margin = 2.5
    plain = context_crop(image, subject, margin=margin, max_side=10_000)
    masked = context_crop(image, subject, others=[bystander], margin=margin, max_side=10_000)
    assert plain.shape == masked.shape
    cx, cy = subject[0] + subject[2] / 2, subject[1] + subject[3] / 2
    side = max(subject[2], subject[3]) * (1 + 2 * margin)
    x0, y0 = max(0, int(cx - side / 2)), max(0, int(cy - side / 2))

    def region(img, box):
        x, y, w, h = (round(v) for v in box)
        return img[y - y0 : y - y0 + h, x - x0 : x - x0 + w].astype(np.float32)

    def detail(patch):
        return float(np.abs(cv2.Laplacian(patch, cv2.CV_32F)).mean())

    assert np.array_equal(region(plain, subject), region(masked, subject))
    assert detail(region(masked, bystander)) < 0.2 * detail(region(plain, bystander))
