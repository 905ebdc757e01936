"""lfr's key directory: the keys that sign the audit log and encrypt faces at rest, kept per user
and outside every data directory and bundle.

The directory is ``$LFR_KEY_DIR`` when set, else ``<platformdirs user data dir>/lfr/keys``. It is
created at first use with mode 0700 and each key file with 0600, so ``lfr demo`` and ``lfr run``
need no set-up. A key kept beside the log it signs would protect nothing: whoever rewrites the log
could re-sign it, and a key kept beside the faces it encrypts would hide nothing, so keys never
live in a data directory or a bundle (``audit.pub``, the public half of the signing key, is copied
there so a copied directory can be checked).

``data.key`` is the AES-256 key (``lfr.sealed``) that encrypts alert crops in outboxes and each
bundle's own key: one per user, so a bundle built on its own serves any deployment of that user.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from platformdirs import user_data_dir

from lfr.sealed import DataKey

KEY_DIR_ENV = "LFR_KEY_DIR"
AUDIT_KEY_NAME = "audit-signing.key"  # Ed25519 private key, PEM (PKCS8), 0600
PUBLIC_KEY_NAME = "audit.pub"  # the public half, PEM: beside the private key and in data dirs
DATA_KEY_NAME = "data.key"  # AES-256 key for faces at rest, base64 between PEM-style lines, 0600
_DATA_KEY_BEGIN, _DATA_KEY_END = "-----BEGIN LFR DATA KEY-----", "-----END LFR DATA KEY-----"


class KeyFileError(Exception):
    """A key file that cannot be read, is of the wrong type, or is open to other users."""


def key_dir() -> Path:
    """The current user's key directory (not created)."""
    configured = os.environ.get(KEY_DIR_ENV)
    return Path(configured) if configured else Path(user_data_dir("lfr")) / "keys"


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(path, 0o700)  # mkdir's mode is cut by the umask and ignored for an existing folder


def _private_tmp(path: Path, data: bytes) -> Path:
    """``data`` in a 0600 file beside ``path``, named for this writer alone (processes writing
    the same file at once do not share a temporary file)."""
    tmp = path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def write_private(path: Path, data: bytes) -> None:
    """Write a file that only its owner may read: 0600 from its creation, replaced atomically."""
    os.replace(_private_tmp(path, data), path)


def create_private(path: Path, data: bytes) -> bool:
    """Like write_private, but only where ``path`` does not exist yet: False when another
    writer got there first (nodes started together creating the key they share)."""
    tmp = _private_tmp(path, data)
    try:
        os.link(tmp, path)  # atomic, and never over an existing file
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


def load_signing_key(path: Path | None = None) -> Ed25519PrivateKey:
    """The audit signing key: ``path`` (a config's own key file) or the key directory's, created
    with its public half on first use."""
    if path is None:
        directory = key_dir()
        path = directory / AUDIT_KEY_NAME
        if not path.exists():
            _private_dir(directory)
            key = Ed25519PrivateKey.generate()
            if create_private(path, key.private_bytes(serialization.Encoding.PEM,
                                                      serialization.PrivateFormat.PKCS8,
                                                      serialization.NoEncryption())):
                write_private(directory / PUBLIC_KEY_NAME, public_pem(key.public_key()))
                return key
            # Another process created it meanwhile: that one is the key.
    try:
        loaded = serialization.load_pem_private_key(_read_private(path, "signing key"),
                                                     password=None)
    except ValueError as exc:
        raise KeyFileError(f"{path}: cannot read the audit signing key: {exc}") from None
    if not isinstance(loaded, Ed25519PrivateKey):
        raise KeyFileError(f"{path}: not an Ed25519 private key")
    return loaded


def _read_private(path: Path, what: str) -> bytes:
    """A key file's bytes, refused when other users may read it."""
    try:
        if path.stat().st_mode & 0o077:
            raise KeyFileError(f"{path}: {what} is readable by other users (chmod 600 it)")
        return path.read_bytes()
    except OSError as exc:
        raise KeyFileError(f"{path}: cannot read the {what}: {exc}") from None


def load_data_key(path: Path | None = None) -> DataKey:
    """The key that encrypts faces at rest: ``path`` (a config's ``[keys] data_key``, which must
    exist) or the key directory's ``data.key``, created on first use."""
    if path is None:
        directory = key_dir()
        path = directory / DATA_KEY_NAME
        if not path.exists():
            _private_dir(directory)
            key = DataKey.generate(f"the user's key {path}")
            if create_private(path, _data_key_text(key)):
                return key
            # Another process created it meanwhile: that one is the key.
        source = f"the user's key {path}"
    else:
        source = f"[keys] data_key {path}"
    text = _read_private(path, "data key").decode("ascii", "replace")
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    try:
        if lines[0] != _DATA_KEY_BEGIN or lines[-1] != _DATA_KEY_END:
            raise ValueError("not an lfr data key")
        return DataKey(base64.b64decode("".join(lines[1:-1]), validate=True), source)
    except (IndexError, ValueError) as exc:  # binascii.Error is a ValueError
        raise KeyFileError(f"{path}: not an lfr data key file ({exc})") from None


def write_data_key(path: Path, key: DataKey) -> None:
    """Save a data key (0600): to share one user's key with another machine, copy this file."""
    write_private(path, _data_key_text(key))


def _data_key_text(key: DataKey) -> bytes:
    secret = base64.b64encode(key.secret).decode()
    return f"{_DATA_KEY_BEGIN}\n{secret}\n{_DATA_KEY_END}\n".encode("ascii")


def public_pem(key: Ed25519PublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def load_public_key(path: Path) -> Ed25519PublicKey:
    try:
        key = serialization.load_pem_public_key(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise KeyFileError(f"{path}: cannot read the public key: {exc}") from None
    if not isinstance(key, Ed25519PublicKey):
        raise KeyFileError(f"{path}: not an Ed25519 public key")
    return key


def fingerprint(key: Ed25519PublicKey) -> str:
    """SHA-256 of the raw public key, hex, first 32 digits: what a seal names its key by."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def sign(key: Ed25519PrivateKey, message: bytes) -> str:
    return base64.b64encode(key.sign(message)).decode("ascii")


def signature_holds(key: Ed25519PublicKey, message: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), message)
    except (InvalidSignature, ValueError):
        return False
    return True
