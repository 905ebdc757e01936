"""Sample data for backend tests: frames, clustered embeddings, alerts, a tiny video, a fake camera.

Real faces come from lfr's demo stills when they are around (``$LFR_DEMO_DATA``, or
``shared/data/demo`` beside the repository); without them the frames are synthetic (no faces).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from pathlib import Path

import anyio
import msgspec
import numpy as np

from lfr.demo import demo_data_dir
from lfr.messages import Alert, Frame, utc_iso

# Scenes with several upright faces at different places and sizes.
DEMO_SCENES = ("obama_and_biden.jpg", "kit_with_rose.jpg", "two_people.jpg", "obama-480p.jpg")


class SampleFrame(msgspec.Struct, frozen=True):
    name: str
    image: np.ndarray  # H x W x 3 BGR uint8
    synthetic: bool  # True: generated, without faces


class ClusteredEmbeddings(msgspec.Struct, frozen=True):
    """A gallery of identities (one centre each plus noise) and probes, like real face embeddings.

    Random unit vectors are nearly orthogonal and flatter an approximate index; real galleries are
    clustered: rows of one person have cosine ~0.6-0.8 with each other.
    """

    gallery: np.ndarray  # N x dim float32, L2-normalised
    labels: np.ndarray  # N identity numbers
    queries: np.ndarray  # Q x dim float32, L2-normalised
    query_labels: np.ndarray  # Q identity numbers; -1 for people not in the gallery

    @property
    def dim(self) -> int:
        return int(self.gallery.shape[1])


def _normalise(rows: np.ndarray) -> np.ndarray:
    out: np.ndarray = (rows / np.linalg.norm(rows, axis=1, keepdims=True)).astype(np.float32)
    return out


def synthetic_frame(rng: np.random.Generator, size: tuple[int, int] = (320, 240)) -> np.ndarray:
    """A smooth gradient with a few filled ellipses: structure, but no face."""
    width, height = size
    y, x = np.mgrid[0:height, 0:width]
    base = np.stack([x * 255 / width, y * 255 / height, (x + y) * 127 / (width + height)], -1)
    image = base.astype(np.uint8)
    import cv2

    for _ in range(3):
        centre = (int(rng.integers(0, width)), int(rng.integers(0, height)))
        axes = (int(rng.integers(8, width // 4)), int(rng.integers(8, height // 4)))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        cv2.ellipse(image, centre, axes, 0, 0, 360, colour, -1)
    return image


def sample_frames(limit: int = 4, max_side: int = 800) -> list[SampleFrame]:
    """Demo stills with faces (at most ``max_side`` pixels), or synthetic frames without."""
    import cv2

    demo = demo_data_dir()
    frames: list[SampleFrame] = []
    if demo is not None:
        for name in DEMO_SCENES[:limit]:
            image = cv2.imread(str(demo / "scenes" / name), cv2.IMREAD_COLOR)
            if image is None:
                continue
            scale = max_side / max(image.shape[:2])
            if scale < 1:
                image = cv2.resize(image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            frames.append(SampleFrame(name, np.ascontiguousarray(image), synthetic=False))
    if frames:
        return frames
    rng = np.random.default_rng(0)
    return [
        SampleFrame(f"synthetic-{i}", synthetic_frame(rng), synthetic=True) for i in range(limit)
    ]


def clustered_embeddings(
    identities: int = 500,
    per_identity: int = 2,
    dim: int = 128,
    probes: int = 200,
    impostors: int = 100,
    seed: int = 0,
    same_cosine: tuple[float, float] = (0.6, 0.8),
) -> ClusteredEmbeddings:
    """``identities`` x ``per_identity`` gallery rows; ``probes`` fresh samples of enrolled people
    and ``impostors`` of people not enrolled. Two samples of one person have cosine within about
    ``same_cosine`` (each row's noise level is drawn so that it is)."""
    rng = np.random.default_rng(seed)
    lo, hi = same_cosine
    if not 0 < lo <= hi < 1:
        raise ValueError(f"same_cosine must be within (0, 1) and ordered, got {same_cosine}")
    centres = _normalise(rng.standard_normal((identities + impostors, dim)))
    # A row c + n, n orthogonal to c with |n|^2 ~ k, has cos(c + n_a, c + n_b) ~
    # 1 / sqrt((1 + k_a)(1 + k_b)): k in [1/hi - 1, 1/lo - 1] keeps pairs within [lo, hi].
    k_lo, k_hi = 1 / hi - 1, 1 / lo - 1

    def samples(ids: np.ndarray) -> np.ndarray:
        k = rng.uniform(k_lo, k_hi, (len(ids), 1))
        noise = rng.standard_normal((len(ids), dim))
        # Orthogonal to the centre, so the noise level alone sets the cosine to it.
        noise -= np.einsum("nd,nd->n", noise, centres[ids])[:, None] * centres[ids]
        noise *= np.sqrt(k / dim)
        return _normalise(centres[ids] + noise)

    labels = np.repeat(np.arange(identities), per_identity)
    probe_ids = rng.integers(0, identities, probes) if identities else np.zeros(0, np.int64)
    impostor_ids = np.arange(identities, identities + impostors)
    query_ids = np.concatenate([probe_ids, impostor_ids])
    queries = samples(query_ids)
    query_labels = np.where(query_ids < identities, query_ids, -1)
    return ClusteredEmbeddings(
        gallery=samples(labels), labels=labels, queries=queries, query_labels=query_labels
    )


def sample_alerts(n: int = 6, camera: str = "test-camera", seed: int = 0) -> list[Alert]:
    """Alerts as the matcher raises them (with small JPEG crops), distinct ids, oldest first."""
    import cv2

    rng = np.random.default_rng(seed)
    alerts = []
    for i in range(n):
        crop = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
        ok, jpeg = cv2.imencode(".jpg", crop)
        wall = time.time() - (n - i)
        alerts.append(
            Alert(
                id=f"{seed:04d}{i:04d}" + Alert.new_id()[8:],
                camera=camera,
                time=utc_iso(wall),
                wall_time=wall,
                person_id=f"person-{i % 3}",
                name=f"Person {i % 3}",
                score=float(rng.uniform(0.5, 0.9)),
                threshold=0.5,
                box=(float(10 * i), 20.0, 64.0, 64.0),
                frame_index=i * 10,
                latency_s=0.05,
                crop_jpeg=jpeg.tobytes() if ok else b"",
                category="test",
            )
        )
    return alerts


def _face_patch(side: int) -> np.ndarray | None:
    """A real face from the demo stills, square, ``side`` pixels; None without demo data."""
    import cv2

    demo = demo_data_dir()
    if demo is None:
        return None
    image = cv2.imread(str(demo / "scenes" / "obama-480p.jpg"), cv2.IMREAD_COLOR)
    if image is None:
        return None
    h, w = image.shape[:2]
    crop = image[: min(h, w), (w - min(h, w)) // 2 :][:, : min(h, w)]
    return np.ascontiguousarray(cv2.resize(crop, (side, side), interpolation=cv2.INTER_AREA))


def write_test_video(
    path: Path, frames: int = 36, size: tuple[int, int] = (320, 240), fps: int = 12
) -> Path:
    """A tiny MPEG-4 clip: a demo face (or, without demo data, a synthetic shape) moving across a
    textured background. Same content for the same arguments."""
    import av

    width, height = size
    rng = np.random.default_rng(1)
    background = synthetic_frame(rng, size)
    side = min(height - 8, 160)
    patch = _face_patch(side)
    if patch is None:
        patch = synthetic_frame(rng, (side, side))
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.bit_rate = 800_000
        for i in range(frames):
            image = background.copy()
            x = int((width - side) * i / max(1, frames - 1))
            y = (height - side) // 2
            image[y : y + side, x : x + side] = patch
            frame = av.VideoFrame.from_ndarray(image, format="bgr24")
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def read_video(path: Path) -> list[np.ndarray]:
    """Every frame of a (small) video file, BGR."""
    import av

    with av.open(str(path)) as container:
        return [f.to_ndarray(format="bgr24") for f in container.decode(video=0)]


class FakeCamera:
    """A ``lfr.api.Source`` playing a small video file from memory: once, or looping until
    stopped; ``realtime`` paces it at ``fps``. ``fail_after`` raises after that many frames of the
    first run (a camera that drops out), to test restarts."""

    def __init__(
        self,
        path: Path,
        name: str = "fake",
        *,
        loop: bool = False,
        realtime: bool = False,
        fps: float = 12.0,
        fail_after: int | None = None,
    ) -> None:
        self.name = name
        self.path = path
        self.loop = loop
        self.realtime = realtime
        self.fps = fps
        self.fail_after = fail_after
        self.runs = 0
        self._images: list[np.ndarray] | None = None
        self._stopped = False
        self._index = 0

    async def frames(self) -> AsyncIterator[Frame]:
        self.runs += 1
        if self._images is None:
            self._images = await anyio.to_thread.run_sync(read_video, self.path)
        emitted = 0
        while not self._stopped:
            for image in self._images:
                if self._stopped:
                    return
                if self.fail_after is not None and self.runs == 1 and emitted == self.fail_after:
                    raise ConnectionError(f"{self.name}: simulated camera drop-out")
                yield Frame(
                    camera=self.name,
                    index=self._index,
                    wall_time=time.time(),
                    mono_time=time.monotonic(),
                    image=image,
                )
                self._index += 1
                emitted += 1
                await anyio.sleep(1 / self.fps if self.realtime else 0)
            if not self.loop:
                return

    def stop(self) -> None:
        self._stopped = True
