"""lfr.testing: the contract checks pass lfr's own backends and catch broken ones; its fixtures
work in a plugin author's test run."""

from __future__ import annotations

import json
import textwrap

import anyio
import cv2
import msgspec
import numpy as np
import pytest

from lfr.api import SourceState, SourceStats
from lfr.messages import Detection
from lfr.notify.jsonl import JsonlNotifier
from lfr.pipeline.camera import SourceActor
from lfr.runtime.channels import open_channel
from lfr.runtime.supervisor import Supervisor
from lfr.testing import (
    ContractError,
    FakeCamera,
    aligned_faces,
    check_detector,
    check_embedder,
    check_index_backend,
    check_notifier,
    check_source,
    clustered_embeddings,
    sample_frames,
    write_test_video,
)
from lfr.vision.defaults import default_analyzer
from lfr.watchlist.index import AnnoyIndex, ExactIndex

pytest_plugins = ["pytester"]


@pytest.fixture(scope="module")
def analyzer():
    return default_analyzer()


@pytest.fixture(scope="module")
def frames():
    found = sample_frames()
    assert not any(f.synthetic for f in found)  # the demo data is beside the repository
    return [f.image for f in found]


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return write_test_video(tmp_path_factory.mktemp("video") / "face.mp4")


# -- the built-in backends pass --------------------------------------------------------------


def test_exact_index_passes_the_contract():
    report = check_index_backend(ExactIndex)
    assert report.recall == 1.0 and report.max_score_error < 1e-5


def test_annoy_index_passes_the_contract_with_a_large_search_k():
    report = check_index_backend(lambda: AnnoyIndex(n_trees=10, search_k=20_000))
    assert report.recall == 1.0


def test_yunet_detector_passes_the_contract(analyzer, frames):
    report = check_detector(analyzer.detector, frames)
    assert report.faces >= 6  # the demo scenes have two faces each


def test_sface_embedder_passes_the_contract(analyzer, frames):
    faces = aligned_faces(frames, analyzer.detector)
    report = check_embedder(analyzer.embedder, faces[:4])
    assert report.dim == 128 and report.min_self_similarity > 0.9


@pytest.mark.anyio
async def test_jsonl_notifier_passes_the_contract(tmp_path):
    path = tmp_path / "alerts.jsonl"

    def received():
        return [json.loads(line)["id"] for line in path.read_text().splitlines()]

    report = await check_notifier(lambda: JsonlNotifier(path), received, tmp_path)
    assert report.alerts == 6 and report.failed_attempts == 1
    assert report.attempts == 8  # 6 + the failed first attempt + the replay after the "crash"


@pytest.mark.anyio
async def test_fake_camera_passes_the_source_contract_and_stops(video):
    report = await check_source(FakeCamera(video))
    assert (report.frames, report.width, report.height) == (36, 320, 240)
    looping = await check_source(FakeCamera(video, loop=True), stop_after=50)
    assert 50 <= looping.frames <= 55


# -- broken backends are caught --------------------------------------------------------------


class RoundedScores(ExactIndex):
    """Returns approximate (rounded) scores: lfr would compare the wrong numbers."""

    name = "rounded"

    def search(self, queries, k):
        scores, rows = super().search(queries, k)
        return np.round(scores, 2), rows


class MissesRows(ExactIndex):
    """Misses the best row of every 10th query of a large index: missed alerts."""

    name = "misses"

    def search(self, queries, k):
        scores, rows = super().search(queries, k)
        if len(self) > 100:
            more_scores, more_rows = super().search(queries, k + 1)
            scores[::10], rows[::10] = more_scores[::10, 1:], more_rows[::10, 1:]
        return scores, rows


class SilentDimension(ExactIndex):
    name = "silent"

    def search(self, queries, k):
        if len(self) and queries.shape[1] != self.dim:
            queries = np.resize(queries, (len(queries), self.dim))
        return super().search(queries, k)


@pytest.mark.parametrize(
    ("index", "message"),
    [
        (RoundedScores, "not the exact cosines"),
        (MissesRows, "a missed row above the threshold is a missed alert"),
        (SilentDimension, "was accepted"),
    ],
    ids=["approximate-scores", "missed-rows", "wrong-dimension-accepted"],
)
def test_broken_index_fails_the_contract(index, message):
    with pytest.raises(ContractError, match=message):
        check_index_backend(index, identities=200)


class ResizedBoxes:
    """Detects on a half-size copy and forgets to scale the boxes back."""

    name = "resized"

    def __init__(self, inner):
        self.inner = inner

    def detect(self, image, score_threshold=None):
        small = cv2.resize(image, None, fx=0.5, fy=0.5)
        return self.inner.detect(small, score_threshold)


class CroppedBoxes:
    """Detects on a centre crop and reports boxes in the crop's coordinates."""

    name = "cropped"

    def __init__(self, inner):
        self.inner = inner

    def detect(self, image, score_threshold=None):
        return self.inner.detect(image[20:, 30:], score_threshold)


class SwappedEyes:
    name = "swapped"

    def __init__(self, inner):
        self.inner = inner

    def detect(self, image, score_threshold=None):
        out = []
        for d in self.inner.detect(image, score_threshold):
            (a, b, *rest) = d.landmarks
            out.append(Detection(box=d.box, landmarks=(b, a, *rest), score=d.score))
        return out


@pytest.mark.parametrize(
    ("wrapper", "message"),
    [
        (ResizedBoxes, "frame's pixel coordinates"),
        (CroppedBoxes, "frame's pixel coordinates"),
        (SwappedEyes, "landmarks must be ordered"),
    ],
    ids=["resized", "cropped", "swapped-eyes"],
)
def test_broken_detector_fails_the_contract(analyzer, frames, wrapper, message):
    with pytest.raises(ContractError, match=message):
        check_detector(wrapper(analyzer.detector), frames)


def test_detector_without_faces_in_the_frames_is_reported(analyzer):
    rng = np.random.default_rng(0)
    noise = [rng.integers(0, 256, (120, 160, 3), dtype=np.uint8)]
    with pytest.raises(ContractError, match="want at least 1"):
        check_detector(analyzer.detector, noise)


class UnnormalisedEmbedder:
    name = "raw"
    dim = 128

    def __init__(self, inner):
        self.inner = inner

    def embed(self, faces):
        return self.inner.embed(faces) * 3


def test_unnormalised_embedder_fails_the_contract(analyzer, frames):
    faces = aligned_faces(frames[:1], analyzer.detector)
    with pytest.raises(ContractError, match="L2-normalised"):
        check_embedder(UnnormalisedEmbedder(analyzer.embedder), faces)


class Forgetful:
    """Delivers to a list that does not deduplicate and keys by the person, not the alert."""

    def __init__(self, store, key="id"):
        self.name = "forgetful"
        self.store = store
        self.key = key

    async def deliver(self, alert):
        self.store.append(getattr(alert, self.key))

    async def aclose(self):
        pass


@pytest.mark.anyio
async def test_notifier_that_does_not_deduplicate_fails_the_contract(tmp_path):
    store: list[str] = []
    with pytest.raises(ContractError, match="held more than once"):
        await check_notifier(lambda: Forgetful(store), lambda: store, tmp_path)


@pytest.mark.anyio
async def test_notifier_keyed_by_something_else_fails_the_contract(tmp_path):
    store: list[str] = []
    with pytest.raises(ContractError, match=r"use alert\.id as the idempotency key"):
        await check_notifier(lambda: Forgetful(store, "person_id"), lambda: set(store), tmp_path)


# -- samples and the source adaptor ----------------------------------------------------------


def test_clustered_embeddings_look_like_faces():
    data = clustered_embeddings(identities=300, per_identity=2, dim=128, probes=50, impostors=50)
    pairs = np.einsum("nd,nd->n", data.gallery[0::2], data.gallery[1::2])
    assert pairs.min() > 0.5 and pairs.max() < 0.9 and 0.67 < pairs.mean() < 0.73
    assert np.mean((pairs > 0.58) & (pairs < 0.82)) > 0.95
    others = data.gallery[0::2] @ data.gallery[0::2].T
    off_diagonal = others[~np.eye(len(others), dtype=bool)]
    assert abs(off_diagonal.mean()) < 0.01 and off_diagonal.max() < 0.5
    assert (data.query_labels == -1).sum() == 50


@pytest.mark.anyio
async def test_source_actor_restarts_a_failing_source_through_the_supervisor(video):
    from lfr.runtime.supervisor import RestartPolicy, Supervisor

    camera = FakeCamera(video, "door", fail_after=10)
    send, recv = open_channel("frames:door", 64)
    actor = SourceActor(camera, send)
    supervisor = Supervisor(RestartPolicy(max_restarts=2, window_s=60))
    got = []

    async def consume():
        with recv:
            async for frame in recv:
                got.append(frame)

    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(consume)
            supervisor.start_soon(tg, actor)
    assert camera.runs == 2 and actor.restarts == 1
    assert len(got) == 10 + 36  # the drop-out after 10 frames, then the whole clip again
    stats = actor.statistics()
    assert stats.kind == "camera" and stats.frames_emitted == 46 and stats.source_state == "ended"
    assert (stats.width, stats.height) == (320, 240)


class CountingCamera(FakeCamera):
    """A FakeCamera that reports its own figures, as lfr's PyAV camera does."""

    def __init__(self, *args, report=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.report = report

    def statistics(self):
        if isinstance(self.report, Exception):
            raise self.report
        return self.report or SourceStats(
            state=SourceState.FAILED, url="rtsp://door", frames_decoded=100, frames_skipped=54,
            reconnects=3, fps_in=25.0, source_fps=25.0, errors=2, last_error="door: stalled")


async def _play(camera):
    send, recv = open_channel(f"frames:{camera.name}", 64)
    actor = SourceActor(camera, send)
    with anyio.fail_after(30):
        async with anyio.create_task_group() as tg:
            tg.start_soon(Supervisor().supervise, actor)
            with recv:
                async for _ in recv:
                    pass
    return actor


@pytest.mark.anyio
async def test_camera_figures_come_from_the_source_statistics_where_it_has_them(video):
    actor = await _play(CountingCamera(video, "door"))
    stats = actor.statistics()
    # The source's own counters and state, and what the actor measured itself.
    assert (stats.source_state, stats.url, stats.frames_decoded, stats.frames_skipped) == (
        "failed", "rtsp://door", 100, 54)
    assert (stats.reconnects, stats.fps_in, stats.source_fps) == (3, 25.0, 25.0)
    assert (stats.errors, stats.last_error) == (2, "door: stalled")
    assert stats.frames_emitted == 36 and (stats.width, stats.height) == (320, 240)
    assert (await check_source(CountingCamera(video, "door"))).frames == 36


@pytest.mark.anyio
@pytest.mark.parametrize("report", [RuntimeError("boom"), {"state": "live"}])
async def test_a_broken_source_statistics_falls_back_to_the_actor_figures(video, report, caplog):
    actor = await _play(CountingCamera(video, "door", report=report))
    for _ in range(2):
        stats = actor.statistics()
        assert stats.source_state == "ended" and stats.frames_decoded == 36
    said = [r for r in caplog.records if "statistics()" in r.getMessage()]
    assert len(said) == 1  # said once, not on every dashboard refresh
    with pytest.raises(ContractError, match="statistics"):
        await check_source(CountingCamera(video, "door", report={"state": "live"}))


# -- the pytest plugin's fixtures, as a plugin author's test run uses them -------------------

AUTHOR_TESTS = """
    import numpy as np
    import pytest

    from lfr.testing import check_index_backend, check_source
    from lfr.watchlist.index import ExactIndex


    @pytest.fixture
    def anyio_backend():
        return "asyncio"


    def test_frames(sample_frames):
        assert sample_frames and all(f.image.dtype == np.uint8 for f in sample_frames)


    def test_embeddings(sample_embeddings):
        assert sample_embeddings.gallery.shape == (1000, 128)


    def test_alerts(sample_alerts):
        assert len({a.id for a in sample_alerts}) == 6


    def test_index():
        check_index_backend(ExactIndex, identities=100)


    @pytest.mark.anyio
    async def test_camera(fake_camera):
        report = await check_source(fake_camera)
        assert report.frames == 36
"""


def test_fixtures_work_in_an_authors_test_run(pytester):
    pytester.makepyfile(test_author=textwrap.dedent(AUTHOR_TESTS))
    # -p no:lfr: the installed entry point (if any) stays off, so the module loads once.
    result = pytester.runpytest("-p", "no:lfr", "-p", "lfr.testing.pytest_plugin", "-q")
    result.assert_outcomes(passed=5)


def test_reports_are_plain_data():
    report = check_index_backend(ExactIndex, identities=50)
    assert msgspec.to_builtins(report)["name"] == "exact"
