"""Image files read with bounds: checked before a byte is decoded.

A file is only read when it is a regular file (a FIFO, a device such as ``/dev/zero`` or a folder
is refused at once, without blocking) no larger than ``max_file_bytes``, whose first bytes are
those of a JPEG, PNG, BMP, WebP or TIFF (anything else is refused after reading that much: nothing
of it is hashed or kept), and whose header gives a size of at most ``max_pixels``. The size comes
from a small parser of those five headers: OpenCV has no way to read a header alone, and Pillow is
not one of lfr's dependencies. A 20000x20000 PNG of a few hundred kilobytes is refused here instead
of becoming 1.2 GB of pixels.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
from pathlib import Path

import msgspec

DEFAULT_MAX_PIXELS = 50_000_000
DEFAULT_MAX_FILE_BYTES = 100 * 1024 * 1024
IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
FORMATS = "JPEG, PNG, BMP, WebP or TIFF"
_MAGIC_BYTES = 16  # enough to tell the five formats apart
_PNG = b"\x89PNG\r\n\x1a\n"
_TIFF = (b"II*\x00", b"MM\x00*")


class ImageLimits(msgspec.Struct, frozen=True):
    max_pixels: int = DEFAULT_MAX_PIXELS
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES


DEFAULT_LIMITS = ImageLimits()


class ImageRefused(ValueError):
    """An image file not read or not decoded; the message names the file and why."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def looks_like_image(head: bytes) -> bool:
    return (
        head.startswith((_PNG, b"\xff\xd8\xff", b"BM", *_TIFF))
        or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")
    )


def image_size(data: bytes) -> tuple[int, int] | None:
    """(width, height) from a JPEG, PNG, BMP, WebP or TIFF header; None when there is none."""
    try:
        if data.startswith(_PNG):
            if data[12:16] != b"IHDR":
                return None
            width, height = struct.unpack(">II", data[16:24])
            return width, height
        if data.startswith(b"\xff\xd8"):
            return _jpeg_size(data)
        if data.startswith(b"BM"):
            (header,) = struct.unpack("<I", data[14:18])
            if header == 12:  # BITMAPCOREHEADER: 16-bit sizes
                width, height = struct.unpack("<HH", data[18:22])
                return width, height
            width, height = struct.unpack("<ii", data[18:26])
            return abs(width), abs(height)  # a negative height is a top-down bitmap
        if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
            return _webp_size(data)
        if data.startswith(_TIFF):
            return _tiff_size(data)
    except struct.error:  # a header cut short
        return None
    return None


def _jpeg_size(data: bytes) -> tuple[int, int] | None:
    pos = 2
    while pos + 4 <= len(data):
        if data[pos] != 0xFF:
            return None
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0x01 or 0xD0 <= marker <= 0xD8:  # no length field
            pos += 2
            continue
        if marker in (0xD9, 0xDA):  # end of image, start of scan: no frame header before them
            return None
        (length,) = struct.unpack(">H", data[pos + 2 : pos + 4])
        if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):  # start of frame
            height, width = struct.unpack(">HH", data[pos + 5 : pos + 9])
            return width, height
        pos += 2 + length
    return None


def _webp_size(data: bytes) -> tuple[int, int] | None:
    chunk = data[12:16]
    if chunk == b"VP8 ":  # lossy: 14-bit sizes after the frame tag and start code
        width, height = struct.unpack("<HH", data[26:30])
        return width & 0x3FFF, height & 0x3FFF
    if chunk == b"VP8L":  # lossless: 14 bits each, minus one, after the signature byte
        (bits,) = struct.unpack("<I", data[21:25])
        return 1 + (bits & 0x3FFF), 1 + ((bits >> 14) & 0x3FFF)
    if chunk == b"VP8X":  # extended: 24-bit canvas sizes, minus one
        width = int.from_bytes(data[24:27], "little") + 1
        height = int.from_bytes(data[27:30], "little") + 1
        return width, height
    return None


def _tiff_size(data: bytes) -> tuple[int, int] | None:
    order = "<" if data[:2] == b"II" else ">"
    (ifd,) = struct.unpack(order + "I", data[4:8])
    (count,) = struct.unpack(order + "H", data[ifd : ifd + 2])
    found: dict[int, int] = {}
    for i in range(count):
        entry = ifd + 2 + 12 * i
        tag, kind = struct.unpack(order + "HH", data[entry : entry + 4])
        if tag in (256, 257):  # ImageWidth, ImageLength: SHORT (3) or LONG (4)
            (found[tag],) = struct.unpack_from(order + ("H" if kind == 3 else "I"), data, entry + 8)
    if 256 in found and 257 in found:
        return found[256], found[257]
    return None


def _megapixels(pixels: int) -> str:
    return f"{pixels / 1e6:,.2f}".rstrip("0").rstrip(".")  # 2.14, 50, 10,000


def read_image_file(path: Path, limits: ImageLimits = DEFAULT_LIMITS) -> bytes:
    """The bytes of an image file within ``limits``, or ImageRefused naming the file and why.

    Only pixel-count checks need the header; decoding is the caller's (``cv2.imdecode``).
    """
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (its type is checked just after).
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        if exc.errno == errno.EISDIR:
            raise ImageRefused(path, "not a regular file (a folder)") from None
        raise ImageRefused(path, f"cannot read file: {exc.strerror or exc}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ImageRefused(path, f"not a regular file ({_kind(info.st_mode)})")
        if info.st_size == 0:
            raise ImageRefused(path, "empty file")
        if info.st_size > limits.max_file_bytes:
            raise ImageRefused(path, f"{info.st_size} bytes, over the limit of "
                                     f"{limits.max_file_bytes} bytes")
        file = os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise
    with file:
        head = file.read(_MAGIC_BYTES)
        if not looks_like_image(head):
            raise ImageRefused(path, f"not an image file (not {FORMATS})")
        # Never more than the cap, even from a file that grows while it is read.
        data = head + file.read(limits.max_file_bytes + 1 - len(head))
    if len(data) > limits.max_file_bytes:
        raise ImageRefused(path, f"over the limit of {limits.max_file_bytes} bytes")
    size = image_size(data)
    if size is None:
        raise ImageRefused(path, "not a readable image (no size in its header: corrupt or "
                                 "truncated)")
    width, height = size
    if width * height > limits.max_pixels:
        raise ImageRefused(path, f"{width}x{height} pixels ({_megapixels(width * height)} MP), "
                                 f"over the limit of {_megapixels(limits.max_pixels)} MP")
    if width == 0 or height == 0:
        raise ImageRefused(path, f"not a readable image ({width}x{height} pixels)")
    return data
