"""Model options: execution providers (no GPU needed), graph optimisation levels, int8 copies and
the name a user's model file gives its embedding function."""

from __future__ import annotations

import logging
import shutil

import cv2
import numpy as np
import pytest
from paths import PEOPLE

from lfr.config import load_config, resolve_backends
from lfr.pipeline.wiring import build_analyzer
from lfr.plugins import BuildContext, ConfigError, load_plugins
from lfr.vision.defaults import default_analyzer
from lfr.vision.embed import OnnxEmbedder
from lfr.vision.models import BUNDLED_EMBEDDER, converted_bundled_model
from lfr.vision.onnx import CPU, ProviderError, choose_providers, create_session
from lfr.vision.quantize import quantize_model, sface_inputs, yunet_mosaics

CUDA = "CUDAExecutionProvider"


def write(tmp_path, text):
    path = tmp_path / "x.toml"
    path.write_text('name = "t"\n' + text)
    return path


def test_a_missing_provider_with_another_listed_is_named_in_a_warning(caplog):
    with caplog.at_level(logging.WARNING, logger="lfr.vision.onnx"):
        assert choose_providers([CUDA, CPU], [CPU], "sface.onnx") == [CPU]
    assert CUDA in caplog.text and "sface.onnx" in caplog.text and "docs/gpu.md" in caplog.text


def test_no_listed_provider_available_is_an_error_naming_what_there_is():
    with pytest.raises(ProviderError) as error:
        choose_providers([CUDA], ["AzureExecutionProvider", CPU], "yunet.onnx")
    message = str(error.value)
    assert "yunet.onnx" in message and CUDA in message and CPU in message
    assert "onnxruntime-gpu" in message and "docs/gpu.md" in message


def test_the_cpu_default_needs_nothing_and_runs_on_the_cpu():
    session = create_session(converted_bundled_model(BUNDLED_EMBEDDER))
    assert session.get_providers() == [CPU]


def test_a_config_asking_for_cuda_only_fails_at_start_on_a_cpu_machine(tmp_path):
    config = load_config(write(tmp_path, f'[embedder]\nkind = "sface"\nproviders = ["{CUDA}"]\n'))
    with pytest.raises(ProviderError, match=CUDA):
        build_analyzer(config, load_plugins())


def test_provider_and_optimisation_settings_are_validated(tmp_path):
    registry = load_plugins()
    config = load_config(write(tmp_path, '[detector]\nkind = "yunet"\nproviders = []\n'))
    with pytest.raises(ConfigError, match=r"\$\.detector\.providers: Expected `array` of length"):
        resolve_backends(config, registry)
    config = load_config(write(tmp_path, '[embedder]\nkind = "sface"\n'
                                         'graph_optimization = "max"\n'))
    with pytest.raises(ConfigError, match=r"\$\.embedder\.graph_optimization"):
        resolve_backends(config, registry)


@pytest.fixture(scope="module")
def aligned_faces():
    analyzer = default_analyzer(flip=False)
    faces = []
    for path in sorted(PEOPLE.rglob("*.jpg"))[:8]:
        found = analyzer.detect(cv2.imread(str(path)))
        faces += [f.aligned for f in found[:1]]
    return faces


def test_graph_optimisation_levels_compute_the_same_embeddings(aligned_faces):
    model = converted_bundled_model(BUNDLED_EMBEDDER)
    full = OnnxEmbedder(model, optimization="all").embed(aligned_faces)
    none = OnnxEmbedder(model, optimization="disable").embed(aligned_faces)
    assert np.abs(full - none).max() < 1e-4


def test_an_int8_copy_embeds_close_to_the_fp32_model_and_names_itself(tmp_path, aligned_faces):
    src = converted_bundled_model(BUNDLED_EMBEDDER)
    dst = tmp_path / "models" / "sface-int8.onnx"
    quantize_model(src, dst, sface_inputs(aligned_faces))
    fp32 = OnnxEmbedder(src).embed(aligned_faces)
    int8 = OnnxEmbedder(dst).embed(aligned_faces)
    agreement = np.sum(fp32 * int8, axis=1)
    assert agreement.min() > 0.9, agreement
    # Each face is still nearest its own fp32 embedding among the others.
    assert (np.argmax(int8 @ fp32.T, axis=1) == np.arange(len(aligned_faces))).all()
    # Through a config: the file's hash names the embedding function, so a bundle built with
    # the fp32 model is refused rather than scored against the wrong threshold.
    shutil.copy(dst, tmp_path / "copy.onnx")
    config = load_config(write(tmp_path, '[embedder]\nkind = "sface"\nmodel = "copy.onnx"\n'))
    backends = resolve_backends(config, load_plugins())
    embedder = load_plugins().create("embedder", backends.embedder,
                                     BuildContext(data_dir=tmp_path, config_dir=tmp_path))
    assert embedder.name.startswith("sface@") and embedder.name.endswith("+flip")


def test_yunet_calibration_frames_hold_faces_from_large_to_small():
    photos = [np.full((250, 250, 3), i, np.uint8) for i in range(40)]
    mosaics = yunet_mosaics(photos)
    assert all(m.shape == (1, 3, 640, 640) and m.dtype == np.float32 for m in mosaics)
    assert len(mosaics) >= 5  # one canvas per grid size at least


def test_quantize_tool_refuses_the_repository_and_shared_data(tmp_path):
    import importlib.util

    from paths import REPO, SHARED

    spec = importlib.util.spec_from_file_location("quantize_models",
                                                  REPO / "tools" / "quantize_models.py")
    assert spec and spec.loader
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    for inside in (REPO / "models", SHARED / "int8"):
        with pytest.raises(SystemExit, match="choose a folder of your own"):
            tool.refuse_inside(inside)
    tool.refuse_inside(tmp_path / "models")  # anywhere else is the user's choice


def test_the_mirror_is_embedded_only_for_faces_near_the_threshold(aligned_faces):
    from lfr.vision.flip import NearThresholdFlip

    embedder = OnnxEmbedder(converted_bundled_model(BUNDLED_EMBEDDER), flip=True)
    gallery = embedder.embed(aligned_faces[2:])  # the watchlist, enrolled with the flip
    plain = embedder.embed(aligned_faces, flip=False)
    flipped = embedder.embed(aligned_faces)
    best = (plain @ gallery.T).max(axis=1)
    # The threshold right at face 0's best score: face 0 is near it, the others are not unless
    # they happen to score within the margin too.
    margin = 1e-3
    near = np.abs(best - best[0]) <= margin
    search = NearThresholdFlip(embedder, gallery, threshold=float(best[0]), margin=margin)
    vectors = search.embed(aligned_faces)
    assert search.name == "sface+flip" and search.dim == embedder.dim
    assert np.allclose(vectors[near], flipped[near], atol=1e-5)
    assert np.allclose(vectors[~near], plain[~near], atol=1e-5)
    assert (search.faces, search.flipped) == (len(aligned_faces), int(near.sum()))
    with pytest.raises(ValueError, match="flip embedder"):
        NearThresholdFlip(OnnxEmbedder(converted_bundled_model(BUNDLED_EMBEDDER)), gallery, 0.5)
    # Another watchlist (a running deployment switched lists): its rows decide which faces are
    # near from the next call on; rows of the wrong shape are refused and the list in use stays.
    with pytest.raises(ValueError, match="offsets"):
        search.use(gallery[:1], np.zeros(2))
    assert np.allclose(search.embed(aligned_faces), vectors, atol=1e-5)
    search.use(gallery[:1], np.array([-5.0]))
    # Its offset lifts every face's calibrated score far over the threshold: none near.
    assert np.allclose(search.embed(aligned_faces), plain, atol=1e-5)
