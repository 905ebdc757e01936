"""Camera passwords never reach the audit log, the statistics or the logs (issue 13): one
redactor, lfr.sources.base.redact_url, for every place a camera URL is written."""

from __future__ import annotations

import pytest

from lfr.config import parse_config, redacted
from lfr.sources.base import SourceSettings, redact_url


@pytest.mark.parametrize(("url", "shown"), [
    ("rtsp://admin:p@ss@cam/s1", "rtsp://***@cam/s1"),  # a password holding '@'
    ("rtsp://admin:hunter2@10.0.0.5:554/s1", "rtsp://***@10.0.0.5:554/s1"),
    ("https://apikey@cam/live", "https://***@cam/live"),  # a bare user name is a key too
    ("rtsp://cam/s?password=hunter2", "rtsp://cam/s?password=***"),
    ("https://cam/s.m3u8?channel=2&token=abc&pwd=x",
     "https://cam/s.m3u8?channel=2&token=***&pwd=***"),
    ("http://cam/v?user=bob&pass=x&Api-Key=k&auth=a&signature=s&key=k&secret=z",
     "http://cam/v?user=bob&pass=***&Api-Key=***&auth=***&signature=***&key=***&secret=***"),
    ("rtsp://10.0.0.5/s1", "rtsp://10.0.0.5/s1"),
    ("/videos/a.mp4", "/videos/a.mp4"),
])
def test_redact_url(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_the_audit_config_record_and_reprs_hold_no_secret() -> None:
    secrets = ["p@ss", "hunter2", "abc123", "apikey77"]
    config = parse_config({"name": "kx", "cameras": [
        {"name": "a", "url": "rtsp://admin:p@ss@cam/s1"},
        {"name": "b", "url": "rtsp://cam/s?password=hunter2&token=abc123"},
        {"name": "c", "url": "https://apikey77@cam/live"},
    ]}, "test")
    dumped = str(redacted(config))  # what goes into the audit log's config record
    assert not [s for s in secrets if s in dumped]
    assert "rtsp://***@cam/s1" in dumped and "password=***&token=***" in dumped
    shown = " ".join(repr(c) for c in config.cameras)
    assert not [s for s in secrets if s in shown]


def test_camera_statistics_carry_the_redacted_url() -> None:
    from lfr.pipeline.camera import SourceActor
    from lfr.runtime.channels import open_channel
    from lfr.sources.video import VideoSource

    send, recv = open_channel("frames:a", 2)
    with send, recv:
        source = VideoSource(SourceSettings(name="a", url="rtsp://admin:p@ss@cam/s1?token=abc"))
        camera = SourceActor(source, send)
        assert camera.statistics().url == "rtsp://***@cam/s1?token=***"
