"""Bounded inputs: image files are checked before they are decoded, or even opened.

Watchlist sources (folders and CSVs), demo ``scenes/`` photos and lfr's still-photo source all read
images through lfr.vision.image_file: regular files only, a size cap, an image's header, a pixel
limit from that header. Each refusal is one image's outcome naming the file; the rest goes on.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
import zlib
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
from paths import PEOPLE
from PIL import Image

from lfr.cli import main
from lfr.sources.stills import read_image
from lfr.vision.analyzer import FaceAnalyzer
from lfr.vision.defaults import default_analyzer
from lfr.vision.image_file import ImageLimits, ImageRefused, image_size, read_image_file
from lfr.watchlist import BuildReport, build_watchlist, load_bundle

pytestmark = pytest.mark.timeout(120)  # a FIFO that blocks would hang: fail instead

FACE = PEOPLE / "obama" / "obama1.jpg"


@pytest.fixture(scope="module")
def analyzer() -> FaceAnalyzer:
    return default_analyzer()


def png(width: int, height: int, idat: bytes) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        crc = struct.pack(">I", zlib.crc32(kind + body))
        return struct.pack(">I", len(body)) + kind + body + crc

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def solid_png(width: int, height: int) -> bytes:
    """A real, valid PNG of one grey: megabytes of pixels in a small file."""
    deflate = zlib.compressobj(1)
    row = b"\x00" + b"\x80" * (3 * width)  # filter byte, then the pixels
    return png(width, height, b"".join([*(deflate.compress(row) for _ in range(height)),
                                        deflate.flush()]))


@pytest.fixture(scope="module")
def big_png(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8000x8000 (64 MP, over the 50 MP default): OpenCV would decode it to 192 MB."""
    path = tmp_path_factory.mktemp("big") / "big.png"
    path.write_bytes(solid_png(8000, 8000))
    return path


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The size of every buffer handed to cv2.imdecode during the test."""
    sizes: list[int] = []
    real: Callable[..., np.ndarray | None] = cv2.imdecode

    def spy(buffer: np.ndarray, flags: int) -> np.ndarray | None:
        sizes.append(int(buffer.size))
        return real(buffer, flags)

    monkeypatch.setattr(cv2, "imdecode", spy)
    return sizes


def outcomes(report: BuildReport) -> dict[str, tuple[str, str]]:
    return {o.source: (o.outcome, o.reason) for o in report.outcomes}


# --- headers -------------------------------------------------------------------------------------


@pytest.mark.parametrize("fmt, options", [
    ("JPEG", {}), ("JPEG", {"progressive": True, "exif": b"Exif\x00\x00" + b"\x00" * 60_000}),
    ("PNG", {}), ("BMP", {}), ("WEBP", {}), ("WEBP", {"lossless": True}), ("TIFF", {}),
    ("TIFF", {"compression": "tiff_lzw"}),
])
def test_image_size_reads_each_format_from_its_header(fmt: str, options: dict) -> None:
    for width, height in [(1, 1), (37, 53), (1001, 17)]:
        pixels = np.random.default_rng(0).integers(0, 255, (height, width, 3), np.uint8)
        for image in (Image.fromarray(pixels), Image.fromarray(pixels).convert("RGBA")):
            if fmt == "JPEG" and image.mode == "RGBA":
                continue
            buffer = io.BytesIO()
            image.save(buffer, fmt, **options)
            assert image_size(buffer.getvalue()) == (width, height), (fmt, image.mode)
    assert image_size(b"\xff\xd8\xff\xe0 truncated") is None
    assert image_size(b"not an image at all") is None


def test_a_20000_by_20000_png_is_refused_from_its_header_without_decoding(
    tmp_path: Path, decodes: list[int]
) -> None:
    path = tmp_path / "claims.png"
    path.write_bytes(png(20000, 20000, zlib.compress(b"\0" * 64)))
    with pytest.raises(ImageRefused, match=r"claims\.png: 20000x20000 pixels \(400 MP\), over the "
                                           r"limit of 50 MP"):
        read_image_file(path)
    with pytest.raises(ValueError, match="over the limit of 50 MP"):
        read_image(path)  # still photos, demo scenes/
    assert decodes == []


def test_a_real_64_megapixel_png_is_refused_and_the_rest_enrolled(
    tmp_path: Path, big_png: Path, analyzer: FaceAnalyzer, decodes: list[int]
) -> None:
    person = tmp_path / "people" / "obama"
    person.mkdir(parents=True)
    shutil.copy(big_png, person / "big.png")
    shutil.copy(FACE, person / "face.jpg")
    report = build_watchlist(tmp_path / "people", tmp_path / "wl", analyzer)
    got = outcomes(report)
    assert got["obama/big.png"] == ("unreadable", "8000x8000 pixels (64 MP), over the limit of "
                                                  "50 MP")
    assert got["obama/face.jpg"][0] == "enrolled"
    assert big_png.stat().st_size not in decodes and decodes  # the face was decoded, not big.png
    # The limit is the caller's to set: 70 MP lets it through to the decoder.
    assert read_image(big_png, ImageLimits(max_pixels=70_000_000)).shape == (8000, 8000, 3)


# --- not regular files, too large, not images ---------------------------------------------------


def test_fifo_and_device_in_a_folder_are_refused_at_once(
    tmp_path: Path, analyzer: FaceAnalyzer
) -> None:
    person = tmp_path / "people" / "obama"
    person.mkdir(parents=True)
    shutil.copy(FACE, person / "face.jpg")
    os.mkfifo(person / "pipe.jpg")  # nobody ever writes: reading it would block for ever
    (person / "zero.png").symlink_to("/dev/zero")  # reading it would never end
    report = build_watchlist(tmp_path / "people", tmp_path / "wl", analyzer)
    assert outcomes(report) == {
        "obama/face.jpg": ("enrolled", ""),
        "obama/pipe.jpg": ("unreadable", "not a regular file (a FIFO)"),
        "obama/zero.png": ("unreadable", "not a regular file (a device)"),
    }
    images = {i.source: i for i in load_bundle(tmp_path / "wl").person("obama").images}
    assert images["obama/pipe.jpg"].sha256 == images["obama/zero.png"].sha256 == ""


def test_fifo_and_dev_zero_in_a_csv_are_refused_at_once(
    tmp_path: Path, analyzer: FaceAnalyzer
) -> None:
    shutil.copy(FACE, tmp_path / "face.jpg")
    os.mkfifo(tmp_path / "pipe.jpg")
    (tmp_path / "list.csv").write_text(
        "id,name,image\nobama,Obama,face.jpg\nobama,Obama,pipe.jpg\n"
    )
    (tmp_path / "zero.csv").write_text("id,name,image\nobama,Obama,face.jpg\nz,Z,/dev/zero\n")
    report = build_watchlist(tmp_path / "list.csv", tmp_path / "wl", analyzer,
                             allow_outside=True)
    assert outcomes(report)["pipe.jpg"] == ("unreadable", "not a regular file (a FIFO)")
    # /dev/zero named as it is: not an image file name, so never opened
    report = build_watchlist(tmp_path / "zero.csv", tmp_path / "wl", analyzer, allow_outside=True)
    assert outcomes(report)["/dev/zero"][1].startswith("not an image file name (")
    # ... and named like an image, through a link: a device, refused without a byte read
    (tmp_path / "zero.jpg").symlink_to("/dev/zero")
    (tmp_path / "link.csv").write_text("id,name,image\nobama,Obama,face.jpg\nz,Z,zero.jpg\n")
    report = build_watchlist(tmp_path / "link.csv", tmp_path / "wl", analyzer, allow_outside=True)
    assert outcomes(report)["zero.jpg"] == ("unreadable", "not a regular file (a device)")


def test_files_over_the_size_cap_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "face.jpg"
    shutil.copy(FACE, path)
    size = path.stat().st_size
    with pytest.raises(ImageRefused, match=rf"face\.jpg: {size} bytes, over the limit of 1000 "
                                           "bytes"):
        read_image_file(path, ImageLimits(max_file_bytes=1000))
    assert read_image_file(path, ImageLimits(max_file_bytes=size)) == FACE.read_bytes()


def test_a_file_that_is_not_an_image_is_neither_hashed_nor_stored(
    tmp_path: Path, analyzer: FaceAnalyzer
) -> None:
    secret = b"root:$y$j9T$secret-hash:19000:0:99999:7:::\n"
    person = tmp_path / "people" / "obama"
    person.mkdir(parents=True)
    shutil.copy(FACE, person / "face.jpg")
    (person / "shadow.jpg").write_bytes(secret)
    build_watchlist(tmp_path / "people", tmp_path / "wl", analyzer)
    images = {i.source: i for i in load_bundle(tmp_path / "wl").person("obama").images}
    assert images["obama/shadow.jpg"].outcome == "unreadable"
    assert images["obama/shadow.jpg"].reason == ("not an image file (not JPEG, PNG, BMP, WebP "
                                                 "or TIFF)")
    assert images["obama/shadow.jpg"].sha256 == ""
    stored = b"".join(p.read_bytes() for p in (tmp_path / "wl").rglob("*") if p.is_file())
    assert hashlib.sha256(secret).hexdigest().encode() not in stored and secret not in stored


# --- CSV paths -----------------------------------------------------------------------------------


def test_csv_paths_stay_inside_the_csv_folder_unless_allowed(
    tmp_path: Path, analyzer: FaceAnalyzer, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = tmp_path / "list"
    (folder / "pictures").mkdir(parents=True)
    shutil.copy(FACE, folder / "pictures" / "inside.jpg")
    shutil.copy(FACE, tmp_path / "outside.jpg")
    (folder / "link.jpg").symlink_to(tmp_path / "outside.jpg")  # inside by name, not in fact
    rows = ["pictures/inside.jpg", "../outside.jpg", str(tmp_path / "outside.jpg"), "link.jpg",
            "/etc/shadow", str(folder / "pictures" / "inside.jpg")]
    (folder / "list.csv").write_text("id,name,image\n" + "".join(f"p,P,{r}\n" for r in rows))
    opened: list[Path] = []
    real = read_image_file
    monkeypatch.setattr("lfr.watchlist.enrol.read_image_file",
                        lambda path, limits: opened.append(path) or real(path, limits))

    report = build_watchlist(folder / "list.csv", tmp_path / "wl", analyzer)
    got = outcomes(report)
    outside = f"outside the CSV's folder {folder} (--allow-outside allows it)"
    assert got == {
        "pictures/inside.jpg": ("enrolled", ""),
        "../outside.jpg": ("unreadable", outside),
        str(tmp_path / "outside.jpg"): ("unreadable", outside),
        "link.jpg": ("unreadable", outside),
        "/etc/shadow": ("unreadable", got["/etc/shadow"][1]),
        str(folder / "pictures" / "inside.jpg"): ("enrolled", ""),
    }
    assert got["/etc/shadow"][1].startswith("not an image file name (")
    assert opened == [folder / "pictures" / "inside.jpg"] * 2  # nothing outside was opened

    report = build_watchlist(folder / "list.csv", tmp_path / "wl", analyzer, allow_outside=True)
    assert [o.outcome for o in report.outcomes] == ["enrolled"] * 4 + ["unreadable", "enrolled"]


def test_cli_allow_outside_and_max_megapixels(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "list"
    folder.mkdir()
    shutil.copy(FACE, folder / "face.jpg")
    (folder / "list.csv").write_text(f"id,name,image\nobama,Obama,face.jpg\nbiden,Biden,"
                                     f"{PEOPLE / 'biden' / 'biden.jpg'}\n")
    build = ["watchlist", "build", str(folder / "list.csv"), "-o", str(tmp_path / "wl"), "--json"]
    assert main(build) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["persons_without_images"] == ["biden"]
    assert "outside the CSV's folder" in report["outcomes"][1]["reason"]
    assert main([*build, "--allow-outside"]) == 0
    assert json.loads(capsys.readouterr().out)["persons_enrolled"] == 2
    assert main([*build, "--allow-outside", "--max-megapixels", "2"]) == 0  # Biden's is 2.1 MP
    report = json.loads(capsys.readouterr().out)
    assert report["outcomes"][1]["reason"] == "970x2204 pixels (2.14 MP), over the limit of 2 MP"
    with pytest.raises(SystemExit) as usage:
        main([*build, "--max-megapixels", "0"])
    assert usage.value.code == 2
    assert "'0' is not a number above 0" in capsys.readouterr().err


# --- demo scenes ---------------------------------------------------------------------------------


def test_demo_scenes_over_the_limit_or_not_regular_are_reported_and_skipped(
    tmp_path: Path, big_png: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "demo"
    shutil.copytree(PEOPLE / "obama", data / "people" / "obama")
    (data / "scenes").mkdir()
    shutil.copy(FACE, data / "scenes" / "face.jpg")
    shutil.copy(big_png, data / "scenes" / "big.png")
    os.mkfifo(data / "scenes" / "pipe.jpg")
    assert main(["demo", "--json", "--data", str(data), "--out", str(tmp_path / "out")]) == 0
    result = json.loads(capsys.readouterr().out)
    summary = result["summary"]
    assert sorted(summary["photo_errors"]) == [
        f"{data / 'scenes' / 'big.png'}: 8000x8000 pixels (64 MP), over the limit of 50 MP",
        f"{data / 'scenes' / 'pipe.jpg'}: not a regular file (a FIFO)",
    ]
    assert summary["frames"] == 1  # the one readable photo went through
    assert [a["person_id"] for a in result["alerts"]] == ["obama"]
