"""Test kit for backend authors: contract checks and sample data (docs/plugins.md, "Testing").

    from lfr.testing import check_index_backend
    def test_contract():
        check_index_backend(MyIndex)

The fixtures (``sample_frames``, ``sample_embeddings``, ``sample_alerts``, ``sample_video``,
``fake_camera``) come from the pytest plugin ``lfr.testing.pytest_plugin``, which pytest loads by
itself once lfr is installed.
"""

from lfr.testing.contracts import (
    ContractError,
    DetectorReport,
    EmbedderReport,
    IndexReport,
    NotifierReport,
    SourceReport,
    aligned_faces,
    check_detector,
    check_embedder,
    check_index_backend,
    check_members,
    check_notifier,
    check_source,
)
from lfr.testing.samples import (
    ClusteredEmbeddings,
    FakeCamera,
    SampleFrame,
    clustered_embeddings,
    demo_data_dir,
    read_video,
    sample_alerts,
    sample_frames,
    write_test_video,
)

__all__ = [
    "ClusteredEmbeddings",
    "ContractError",
    "DetectorReport",
    "EmbedderReport",
    "FakeCamera",
    "IndexReport",
    "NotifierReport",
    "SampleFrame",
    "SourceReport",
    "aligned_faces",
    "check_detector",
    "check_embedder",
    "check_index_backend",
    "check_members",
    "check_notifier",
    "check_source",
    "clustered_embeddings",
    "demo_data_dir",
    "read_video",
    "sample_alerts",
    "sample_frames",
    "write_test_video",
]
