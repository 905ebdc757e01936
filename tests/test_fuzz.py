"""Bad input, fuzzed: every case ends in a clear error or a skipped item, never a crash or a hang.

- Video files truncated, bit-flipped or with garbage spliced in: the camera plays what it can and
  ends, or fails with an error naming the camera and the file; always within a bound.
- A live stream that sends garbage (raw TCP, or HTTP with a garbage body or garbage for a
  response): the camera keeps reconnecting with an error naming it; it never crashes and stops.
- Images that are huge, empty, grey, CMYK, 16-bit, with alpha, truncated or mutated, into
  build_watchlist: each gets an outcome; nothing raises.
- Configs with wrong types and unknown fields (generated dicts and TOML text): ConfigError with a
  ``$.`` path, never another exception.
- Watchlist CSVs with missing columns, odd cells and bad paths: WatchlistError naming the column or
  line, or a per-image outcome; never another exception.
"""

from __future__ import annotations

import csv
import io
import shutil
import struct
import tomllib
import zlib
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import cv2
import numpy as np
import pytest
from clips import make_clip as make_bar_clip
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paths import PEOPLE
from PIL import Image

from lfr.config import load_config, parse_config, resolve_backends
from lfr.messages import Frame
from lfr.pipeline.camera import SourceActor
from lfr.plugins import ConfigError, load_plugins
from lfr.runtime import Overflow, Supervisor, open_channel
from lfr.runtime.channels import Receiver, Sender
from lfr.sources import SourceSettings, VideoSource
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import WatchlistError, build_watchlist
from lfr.watchlist.bundle import OUTCOMES

FUZZ = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
FACE = PEOPLE / "obama" / "obama1.jpg"


# --- video files ---------------------------------------------------------------------------------


def make_clip(path: Path, fmt: str | None = None) -> Path:
    return make_bar_clip(path, fmt, n=25, size=(160, 120))  # small: fuzzing wants many runs


@pytest.fixture(scope="module")
def clips(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    d = tmp_path_factory.mktemp("fuzzclips")
    return {
        "mp4": make_clip(d / "c.mp4").read_bytes(),
        "ts": make_clip(d / "c.ts", "mpegts").read_bytes(),
    }


async def play_file(path: Path) -> tuple[list[int], Any]:
    send: Sender[Frame]
    receive: Receiver[Frame]
    send, receive = open_channel("frames", 4, Overflow.BLOCK)
    camera = SourceActor(VideoSource(SourceSettings(name="fuzzcam", url=str(path))), send)
    indices: list[int] = []
    with anyio.fail_after(30):  # never hangs
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(Supervisor().supervise, camera)
            async for frame in receive:
                assert frame.image.ndim == 3 and frame.image.dtype == np.uint8
                indices.append(frame.index)
    return indices, camera.statistics()


@st.composite
def damaged(draw: st.DrawFn, data: bytes) -> bytes:
    """The file cut short, with some bytes changed and maybe garbage spliced in."""
    out = bytearray(data[: draw(st.integers(0, len(data)))])
    for _ in range(draw(st.integers(0, 8))):
        if out:
            out[draw(st.integers(0, len(out) - 1))] = draw(st.integers(0, 255))
    if out and draw(st.booleans()):
        at = draw(st.integers(0, len(out)))
        out[at:at] = draw(st.binary(min_size=1, max_size=512))
    return bytes(out)


@pytest.mark.parametrize("kind", ["mp4", "ts"])
@FUZZ
@given(data=st.data())
def test_damaged_video_file_ends_or_fails_clearly(
    kind: str, data: st.DataObject, clips: dict[str, bytes], tmp_path: Path
) -> None:
    path = tmp_path / f"damaged.{kind}"
    path.write_bytes(data.draw(damaged(clips[kind])))
    indices, stats = anyio.run(play_file, path)
    assert stats.restarts == 0  # the camera never crashed
    assert indices == sorted(set(indices))
    assert stats.source_state in ("ended", "failed")
    if stats.source_state == "failed":
        assert stats.last_error.startswith("fuzzcam: ") and str(path) in stats.last_error
        assert indices == []
    else:
        assert indices, "a file that ends normally delivered frames"


def test_video_stream_without_a_decoder_fails_clearly(
    clips: dict[str, bytes], tmp_path: Path
) -> None:
    # Found by the fuzzer: a damaged sample description leaves a video stream FFmpeg cannot
    # decode (PyAV gives it no codec context); the camera crashed and was restarted forever.
    path = tmp_path / "nodecoder.mp4"
    path.write_bytes(clips["mp4"].replace(b"stsd", b"\0tsd", 1))
    indices, stats = anyio.run(play_file, path)
    assert (indices, stats.source_state, stats.restarts) == ([], "failed", 0)
    assert stats.last_error == f"fuzzcam: '{path}': no decoder for its video stream"


# --- a live stream that sends garbage -------------------------------------------------------


@asynccontextmanager
async def garbage_server(payload: bytes, mode: str) -> AsyncIterator[int]:
    """Serves `payload` on every connection: raw, as an HTTP body, or instead of an HTTP answer;
    then keeps the connection open sending more of it slowly, until the client leaves."""

    async def handle(stream: anyio.abc.SocketStream) -> None:
        async with stream:
            try:
                if mode != "tcp":
                    with anyio.move_on_after(2):
                        await stream.receive()  # the request
                if mode == "http":
                    await stream.send(b"HTTP/1.1 200 OK\r\nContent-Type: video/mp2t\r\n\r\n")
                for _ in range(200):
                    await stream.send(payload)
                    await anyio.sleep(0.02)
            except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                pass

    listener = await anyio.create_tcp_listener(local_host="127.0.0.1")
    port = listener.extra(anyio.abc.SocketAttribute.local_port)
    async with listener, anyio.create_task_group() as tg:
        tg.start_soon(listener.serve, handle)
        yield port
        tg.cancel_scope.cancel()


async def watch_garbage(payload: bytes, mode: str) -> Any:
    async with garbage_server(payload, mode) as port:
        url = f"tcp://127.0.0.1:{port}" if mode == "tcp" else f"http://127.0.0.1:{port}/x.ts"
        send: Sender[Frame]
        send, receive = open_channel("frames", 2, Overflow.DROP_OLDEST)
        camera = SourceActor(VideoSource(
            SourceSettings(
                name="junk",
                url=url,
                open_timeout_s=1.0,
                read_timeout_s=0.5,
                reconnect_initial_s=0.05,
                reconnect_max_s=0.2,
            )),
            send,
        )
        async with anyio.create_task_group() as tg, receive:
            tg.start_soon(Supervisor().supervise, camera)
            with anyio.fail_after(30):
                # Polling its counters is the point.
                while camera.statistics().reconnects < 2:  # noqa: ASYNC110
                    await anyio.sleep(0.05)
            stats = camera.statistics()
            camera.stop()
            with anyio.fail_after(10):  # stops promptly
                async for _ in receive:
                    pass
    return stats, camera.statistics(), url


@pytest.mark.parametrize("mode", ["tcp", "http", "http-garbage-answer"])
@settings(max_examples=4, deadline=None)
@given(payload=st.binary(min_size=1, max_size=4096))
def test_stream_of_garbage_reconnects_and_never_crashes(mode: str, payload: bytes) -> None:
    during, after, url = anyio.run(watch_garbage, payload, mode)
    assert during.state == "running" and during.restarts == 0
    assert during.source_state in ("connecting", "reconnecting", "live")
    assert during.last_error.startswith("junk: ") and url in during.last_error
    assert after.source_state == "ended" and after.restarts == 0


# --- images into build_watchlist -----------------------------------------------------------------


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return default_analyzer()


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that claims width x height pixels but carries almost no data (a decompression bomb's
    header): it must be refused, not allocated."""

    def chunk(kind: bytes, body: bytes) -> bytes:
        return (
            struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", ihdr)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def odd_images(folder: Path) -> dict[str, str]:
    """Each odd image and the outcome it must get."""
    face = Image.open(FACE)
    bgr = cv2.imread(str(FACE))
    assert bgr is not None
    h, w = bgr.shape[:2]
    data = FACE.read_bytes()
    files: dict[str, tuple[bytes, str]] = {
        "grey.jpg": (b"", "enrolled"),
        "cmyk.jpg": (b"", "enrolled"),
        "large.jpg": (  # 44 MP: under the 50 MP limit
            cv2.imencode(".jpg", cv2.resize(bgr, (w * 5000 // h, 5000)))[1].tobytes(),
            "enrolled",
        ),
        "huge.jpg": (  # 114 MP: refused from its header, never decoded
            cv2.imencode(".jpg", cv2.resize(bgr, (w * 8000 // h, 8000)))[1].tobytes(),
            "unreadable",
        ),
        "16bit.png": (cv2.imencode(".png", bgr.astype(np.uint16) * 257)[1].tobytes(), "enrolled"),
        "alpha.png": (
            cv2.imencode(".png", cv2.cvtColor(bgr, cv2.COLOR_BGR2BGRA))[1].tobytes(),
            "enrolled",
        ),
        "empty.jpg": (b"", "unreadable"),
        "truncated.jpg": (data[: len(data) // 3], "unreadable"),
        "text.png": (b"this is not an image at all", "unreadable"),
        "bomb.png": (png_header_only(100_000, 100_000), "unreadable"),
        "one_pixel.png": (
            cv2.imencode(".png", np.full((1, 1, 3), 128, np.uint8))[1].tobytes(),
            "no_face",
        ),
        "flat_grey.png": (
            cv2.imencode(".png", np.full((600, 400), 128, np.uint8))[1].tobytes(),
            "no_face",
        ),
    }
    folder.mkdir(parents=True)
    for name, (content, _) in files.items():
        (folder / name).write_bytes(content)
    face.convert("L").save(folder / "grey.jpg")
    face.convert("CMYK").save(folder / "cmyk.jpg")
    return {name: outcome for name, (_, outcome) in files.items()}


def test_odd_images_each_get_their_outcome(tmp_path: Path, analyzer: FaceAnalyzer) -> None:
    expected = odd_images(tmp_path / "people" / "p")
    report = build_watchlist(tmp_path / "people", tmp_path / "wl", analyzer)
    got = {Path(o.source).name: o.outcome for o in report.outcomes}
    assert got == expected
    reasons = {Path(o.source).name: o.reason for o in report.outcomes}
    assert reasons["empty.jpg"] == "empty file"
    assert reasons["truncated.jpg"] == "not a readable image (corrupt or truncated)"
    assert reasons["huge.jpg"] == "14230x8000 pixels (113.84 MP), over the limit of 50 MP"
    assert reasons["bomb.png"] == "100000x100000 pixels (10,000 MP), over the limit of 50 MP"
    assert report.persons_enrolled == 1


@FUZZ
@given(data=st.data())
def test_mutated_images_never_break_enrolment(
    data: st.DataObject, tmp_path_factory: pytest.TempPathFactory, analyzer: FaceAnalyzer
) -> None:
    root = tmp_path_factory.mktemp("mutated")
    face = cv2.imread(str(FACE))
    assert face is not None
    small = cv2.imencode(".jpg", cv2.resize(face, (208, 370)))[1].tobytes()
    source = data.draw(st.sampled_from([small, cv2.imencode(".png", face[::4, ::4])[1].tobytes()]))
    (root / "people" / "p").mkdir(parents=True)
    (root / "people" / "p" / "x.jpg").write_bytes(data.draw(damaged(source)))
    shutil.copy(FACE, root / "people" / "p" / "good.jpg")
    report = build_watchlist(root / "people", root / "wl", analyzer)
    outcomes = {Path(o.source).name: o for o in report.outcomes}
    assert outcomes["x.jpg"].outcome in OUTCOMES
    assert outcomes["good.jpg"].outcome == "enrolled"  # a bad image never stops the batch


# --- configs -----------------------------------------------------------------------------------

BASE: dict[str, Any] = {
    "name": "site",
    "location": "here",
    "cameras": [{"name": "a", "url": "a.mp4", "fps_cap": 5.0, "loop": True}],
    "watchlist": {"bundle": "wl"},
    "matching": {"threshold": 0.5, "top_k": 5, "cooldown_s": 60.0},
    "quality": {"min_face_px": 24.0},
    "pipeline": {"frame_queue": 2, "face_queue": 64},
    "privacy": {"blur_non_matches": True, "alert_retention_days": 31.0},
    "web": {"enabled": False, "listen": "127.0.0.1:8080", "token": "t", "demo_token": True},
    "detector": {"kind": "yunet", "score_threshold": 0.7},
    "embedder": {"kind": "sface"},
    "index": {"kind": "exact"},
    "notifiers": [{"kind": "console"}, {"kind": "jsonl", "path": "a.jsonl"}],
}

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True),
    st.text(max_size=20),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=8,
)


@st.composite
def mutated_config(draw: st.DrawFn) -> dict[str, Any]:
    """The base config with a few fields set to random values or random keys added."""
    config: Any = {k: (v.copy() if isinstance(v, dict) else v) for k, v in BASE.items()}
    config["cameras"] = [dict(c) for c in BASE["cameras"]]
    config["notifiers"] = [dict(n) for n in BASE["notifiers"]]
    for _ in range(draw(st.integers(1, 3))):
        target: Any = config
        path = draw(
            st.lists(
                st.sampled_from(
                    ["cameras", 0, "matching", "web", "detector", "notifiers", 1, "privacy"]
                ),
                max_size=2,
            )
        )
        for step in path:
            child: Any = None
            if isinstance(target, dict):
                child = target.get(step)
            elif isinstance(step, int) and step < len(target):
                child = target[step]
            if isinstance(child, dict | list):
                target = child
        if isinstance(target, dict):
            key = draw(st.one_of(st.sampled_from(sorted(target) or ["x"]), st.text(max_size=10)))
            target[key] = draw(values)
        elif isinstance(target, list):
            target.append(draw(values))
    return dict(config)


@FUZZ
@given(config=mutated_config())
def test_config_with_wrong_types_or_unknown_fields_is_a_config_error(
    config: dict[str, Any],
) -> None:
    try:
        parsed = parse_config({**config, "source_file": "fuzz.toml"}, "fuzz.toml")
        resolve_backends(parsed, REGISTRY)
    except ConfigError as exc:
        assert_config_error(str(exc), "fuzz.toml")


def assert_config_error(message: str, where: str) -> None:
    """``file: $.path: problem`` (``$`` alone for the document's top level)."""
    assert message.startswith(f"{where}: $"), message


REGISTRY = load_plugins()


def test_config_errors_name_the_path() -> None:
    cases = {
        "$.cameras[0].fps_cap": {**BASE, "cameras": [{"name": "a", "url": "a", "fps_cap": "x"}]},
        "$.matching.threshold": {**BASE, "matching": {"threshold": 7}},
        "$: Object contains unknown field `colour`": {**BASE, "colour": "red"},  # top level
        "$.cameras[0]: read_timeout_s: must be > 0": {
            **BASE,
            "cameras": [{"name": "a", "url": "a", "read_timeout_s": -1}],
        },
        "$.detector.score_threshold": {
            **BASE,
            "detector": {"kind": "yunet", "score_threshold": "high"},
        },
        "$.notifiers[1]: Object contains unknown field `pathh`": {
            **BASE,
            "notifiers": [{"kind": "console"}, {"kind": "jsonl", "pathh": "x"}],
        },
    }
    for path, config in cases.items():
        with pytest.raises(ConfigError) as info:
            resolve_backends(parse_config({**config, "source_file": "f.toml"}, "f.toml"), REGISTRY)
        assert path in str(info.value), (path, str(info.value))


@FUZZ
@given(
    text=st.one_of(
        st.text(max_size=300),
        st.lists(
            st.sampled_from(
                [
                    'name = "x"',
                    "[matching]",
                    "threshold = 2",
                    "[[cameras]]",
                    'url = "a"',
                    "name = 3",
                    "fps_cap = -1",
                    "[web]",
                    "token = 1",
                    "x = [1, 'a']",
                    "[privacy]",
                    "alert_retention_days = 0",
                    "=",
                    'kind = "nope"',
                    "[detector]",
                    "[[notifiers]]",
                    "cameras = 1",
                ]
            ),
            max_size=8,
        ).map("\n".join),
    )
)
def test_toml_text_loads_or_is_a_config_error(text: str, tmp_path_factory: Any) -> None:
    path = tmp_path_factory.mktemp("toml") / "fuzz.toml"
    path.write_text(text, encoding="utf-8")
    try:
        config = load_config(path)
        resolve_backends(config, REGISTRY)
    except ConfigError as exc:
        message = str(exc)
        assert message.startswith(str(path))
        try:
            tomllib.loads(text)
        except tomllib.TOMLDecodeError:
            assert "not valid TOML" in message
        else:
            assert_config_error(message, str(path))


# --- watchlist CSVs ------------------------------------------------------------------------------


def test_csv_missing_columns_and_bad_paths(tmp_path: Path, analyzer: FaceAnalyzer) -> None:
    (tmp_path / "no_image.csv").write_text("id,name\nobama,Barack Obama\n")
    with pytest.raises(WatchlistError, match=r"missing required column.* image"):
        build_watchlist(tmp_path / "no_image.csv", tmp_path / "wl", analyzer)
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(WatchlistError, match="missing required column"):
        build_watchlist(tmp_path / "empty.csv", tmp_path / "wl", analyzer)
    (tmp_path / "blank_cells.csv").write_text(f"id,name,image\n,X,{FACE}\nobama,,\n")
    with pytest.raises(WatchlistError, match="line 2: empty id; line 3: empty image"):
        build_watchlist(tmp_path / "blank_cells.csv", tmp_path / "wl", analyzer)
    (tmp_path / "folder.jpg").mkdir()
    shutil.copy(FACE, tmp_path / "face.jpg")
    (tmp_path / "paths.csv").write_text(
        "id,name,image\n"
        f"obama,Barack Obama,{tmp_path / 'face.jpg'}\n"
        "obama,Barack Obama,missing.jpg\n"
        "obama,Barack Obama,folder.jpg\n"
        "obama,Barack Obama,../../../../../../nonexistent/x.jpg\n"
        f"ghost,Ghost,{tmp_path / 'paths.csv'}\n"
    )
    report = build_watchlist(tmp_path / "paths.csv", tmp_path / "wl", analyzer)
    got = [(o.person_id, o.source, o.outcome) for o in report.outcomes]
    assert got == [
        ("obama", str(tmp_path / "face.jpg"), "enrolled"),
        ("obama", "missing.jpg", "unreadable"),
        ("obama", "folder.jpg", "unreadable"),
        ("obama", "../../../../../../nonexistent/x.jpg", "unreadable"),
        ("ghost", str(tmp_path / "paths.csv"), "unreadable"),
    ]
    reasons = [o.reason for o in report.outcomes]
    assert reasons[1] == "cannot read file: No such file or directory"
    assert reasons[2] == "not a regular file (a folder)"
    assert reasons[3].startswith("outside the CSV's folder")
    assert reasons[4].startswith("not an image file name")
    assert report.persons_without_images == ("ghost",) and report.persons_enrolled == 1


cells = st.one_of(
    st.text(max_size=12),
    st.sampled_from(["", " ", "obama", "x.jpg", "../x.jpg", "/", "2001-01-01", "soon", "\x00"]),
)


@FUZZ
@given(
    header=st.lists(
        st.sampled_from(
            ["id", "name", "image", "category", "notes", "expiry", "ID", " Image ", "extra", ""]
        ),
        max_size=7,
    ),
    rows=st.lists(st.lists(cells, max_size=7), max_size=5),
)
def test_fuzzed_csv_is_a_watchlist_error_or_a_report(
    header: list[str], rows: list[list[str]], tmp_path_factory: Any, analyzer: FaceAnalyzer
) -> None:
    root = tmp_path_factory.mktemp("csv")
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(header)
    writer.writerows(rows)
    (root / "list.csv").write_text(buffer.getvalue(), encoding="utf-8")
    try:
        report = build_watchlist(root / "list.csv", root / "wl", analyzer)
    except WatchlistError as exc:
        assert str(exc).startswith(str(root / "list.csv")) or "expiry" in str(exc), exc
    else:
        assert all(o.outcome in OUTCOMES for o in report.outcomes)
        assert all(o.outcome == "unreadable" for o in report.outcomes)  # no real image listed
    assert not any(p.name.endswith(".tmp") for p in root.iterdir())  # no half-built bundle left
