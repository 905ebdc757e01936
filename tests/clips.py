"""Small synthetic video files whose every frame is known, for source, fuzz and pipeline tests."""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np


def bar_width(index: int, width: int = 320) -> int:
    return (index * 6) % width


def make_clip(
    path: Path,
    fmt: str | None = None,
    codec: str = "mpeg4",
    n: int = 50,
    fps: int = 25,
    size: tuple[int, int] = (320, 240),
) -> Path:
    """Frame i: black with a red bar (BGR 0,0,200) ``bar_width(i, width)`` pixels wide at the
    left."""
    width, height = size
    with av.open(str(path), "w", format=fmt) as container:
        stream = container.add_stream(codec, rate=fps)
        assert isinstance(stream, av.VideoStream)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(n):
            image = np.zeros((height, width, 3), np.uint8)
            image[:, : bar_width(i, width), 2] = 200
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="bgr24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path
