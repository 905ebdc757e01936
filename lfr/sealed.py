"""Faces at rest: AES-256-GCM (``cryptography``) for alert crops, watchlist thumbnails and
embeddings.

A sealed blob is ``MAGIC | key id (16 bytes) | nonce (12 bytes) | ciphertext and tag``. The nonce
is random per blob. The associated data is a ``context`` naming what the blob is ("alert <id>
crop_jpeg", "bundle <id> thumb 00003.jpg"), so a blob moved to another place, or another alert,
does not open. The key id lets a wrong key be named instead of reported as garbage. Keys come
from ``lfr.keys``; this module holds no key and does no I/O.
"""

from __future__ import annotations

import hashlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

MAGIC = b"LFRSEAL1"
KEY_BYTES = 32  # AES-256
_ID_BYTES, _NONCE_BYTES, _TAG_BYTES = 16, 12, 16
_HEADER = len(MAGIC) + _ID_BYTES + _NONCE_BYTES


class SealError(Exception):
    """A blob that does not open: not sealed by lfr, changed, or moved from another place."""


class WrongKeyError(SealError):
    """A blob sealed with another key than the one at hand; the message names both."""


def _sealed_with(blob: bytes) -> str | None:
    """The fingerprint of the key that sealed ``blob``; None for a blob lfr did not seal."""
    if not blob.startswith(MAGIC) or len(blob) < _HEADER + _TAG_BYTES:
        return None
    return blob[len(MAGIC):len(MAGIC) + _ID_BYTES].hex()


def sealed_with(blob: bytes) -> str | None:
    """The id (fingerprint) of the key that sealed ``blob``, read without any key; None for a
    blob lfr did not seal."""
    return _sealed_with(blob)


class DataKey:
    """An AES-256-GCM key and where it came from (for error messages)."""

    def __init__(self, secret: bytes, source: str) -> None:
        if len(secret) != KEY_BYTES:
            raise ValueError(f"{source}: a data key is {KEY_BYTES} bytes, got {len(secret)}")
        self._secret = secret
        self._aead = AESGCM(secret)
        # A hash of the key under its own label: names the key, reveals nothing of it.
        self._id = hashlib.sha256(b"lfr data key id\0" + secret).digest()[:_ID_BYTES]
        self.source = source

    @classmethod
    def generate(cls, source: str) -> DataKey:
        return cls(AESGCM.generate_key(bit_length=KEY_BYTES * 8), source)

    @property
    def secret(self) -> bytes:
        """The raw key: for writing it to its key file or sealing it under another key only."""
        return self._secret

    @property
    def fingerprint(self) -> str:
        return self._id.hex()

    def seal(self, data: bytes, context: str) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return MAGIC + self._id + nonce + self._aead.encrypt(nonce, data, context.encode())

    def open(self, blob: bytes, context: str, what: str) -> bytes:
        """The data sealed as ``context``; ``what`` names the blob in errors ("alert 3f2a's
        crop", "watchlist bundle /srv/wl")."""
        sealed_with = _sealed_with(blob)
        if sealed_with is None:
            raise SealError(f"{what}: not encrypted by lfr (damaged, or written by another tool)")
        if sealed_with != self.fingerprint:
            raise WrongKeyError(
                f"{what} was encrypted with key {sealed_with}; this key is {self.fingerprint}"
                f" ({self.source}): set [keys] data_key or LFR_KEY_DIR to the key it was made"
                " with")
        nonce = blob[_HEADER - _NONCE_BYTES:_HEADER]
        try:
            return self._aead.decrypt(nonce, blob[_HEADER:], context.encode())
        except InvalidTag:
            raise SealError(f"{what}: does not decrypt as {context!r}: changed, or moved from"
                            " another place") from None
