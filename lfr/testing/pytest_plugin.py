"""lfr's pytest plugin: fixtures for testing backends (registered under the ``pytest11`` entry
point ``lfr``, so installing lfr is enough; ``-p no:lfr`` turns it off).

Imports of lfr happen inside the fixtures: loading this plugin costs every pytest run nothing.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from lfr.messages import Alert
    from lfr.testing.samples import ClusteredEmbeddings, FakeCamera, SampleFrame


@pytest.fixture(scope="session")
def sample_frames() -> list[SampleFrame]:
    """Frames with faces: lfr's demo scenes when present (``$LFR_DEMO_DATA``), else synthetic
    frames without faces (``SampleFrame.synthetic``)."""
    from lfr.testing.samples import sample_frames as load

    return load()


@pytest.fixture(scope="session")
def sample_embeddings() -> ClusteredEmbeddings:
    """A clustered 128-d gallery (500 people x 2 rows, same-person cosine 0.6-0.8) with probes of
    enrolled people and of impostors."""
    from lfr.testing.samples import clustered_embeddings

    return clustered_embeddings()


@pytest.fixture
def sample_alerts() -> list[Alert]:
    """Six alerts with distinct ids and small JPEG crops, oldest first."""
    from lfr.testing.samples import sample_alerts as make

    return make()


@pytest.fixture(scope="session")
def sample_video(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 3 s, 320x240, 12 fps MPEG-4 clip of a (demo) face moving across the frame."""
    from lfr.testing.samples import write_test_video

    return write_test_video(tmp_path_factory.mktemp("lfr-video") / "face.mp4")


@pytest.fixture
def fake_camera(sample_video: Path) -> Iterator[FakeCamera]:
    """A ``lfr.api.Source`` playing ``sample_video`` once, as fast as it decodes."""
    from lfr.testing.samples import FakeCamera

    camera = FakeCamera(sample_video, "fake")
    yield camera
    camera.stop()
