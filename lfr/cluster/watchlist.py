"""The deployment's watchlist in JetStream: published once, versioned and hash-checked.

A bundle folder (lfr.watchlist) is packed as one tar (names sorted, no times or owners, so the
same bundle packs to the same bytes) into the object store ``lfr_<name>_bundles``, one object
per version (``v<n>-<random>``); the key ``current`` of the key-value bucket
``lfr_<name>_watchlist`` names the version in use, its sha256 and its people. Versions only
grow: a new one is written by compare-and-set on the previous revision, so two publishers never
both make version n. Destroying writes a destroyed version and deletes every stored bundle;
nodes then stop their cameras and delete their copies.

The bundle's embeddings stay sealed as on disk (lfr.sealed): nodes open them with the
deployment's data key, which they got once at provisioning (lfr nats-config writes it beside
each node's credentials), never over the bus. A node checks that a version opens before it
switches to it, so a node without the key says so at once, naming both keys.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import shutil
import tarfile
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING

import msgspec

from lfr.messages import utc_iso

if TYPE_CHECKING:
    from lfr.cluster.bus import Bus
    from lfr.sealed import DataKey

CURRENT = "current"


class WatchlistError(Exception):
    """A published watchlist that cannot be used: its bytes do not match its sha256, a bundle
    that is no bundle, a version lost to another publisher."""


class Version(msgspec.Struct, frozen=True):
    version: int
    sha256: str  # of the packed bundle as stored
    people: int
    published: str  # ISO time
    by: str
    destroyed: bool = False
    # The stored bundle: a name of its own per attempt, so a publisher that lost the
    # compare-and-set deletes only its own upload.
    object: str = ""


_version_decoder = msgspec.json.Decoder(Version)


def pack_bundle(path: Path) -> tuple[bytes, int]:
    """(the bundle as a deterministic tar, its number of people)."""
    from lfr.watchlist.bundle import MANIFEST

    manifest = path / MANIFEST
    if not manifest.is_file():
        raise WatchlistError(f"{path}: not a watchlist bundle (no {MANIFEST})")
    people = len(msgspec.json.decode(manifest.read_bytes()).get("persons", []))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for file in sorted(p for p in path.rglob("*") if p.is_file()):
            info = tarfile.TarInfo(file.relative_to(path).as_posix())
            data = file.read_bytes()
            info.size, info.mode, info.mtime = len(data), 0o600, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue(), people


def unpack_bundle(data: bytes, destination: Path) -> Path:
    """Unpack into ``destination`` atomically (a temporary folder renamed into place)."""
    partial = destination.with_name(destination.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        # Files only, each inside the folder: what pack_bundle writes. (tarfile's "data" filter
        # does this from Python 3.11.4; lfr runs on 3.11.2 too.)
        for member in tar.getmembers():
            target = (partial / member.name).resolve()
            if not member.isfile() or not target.is_relative_to(partial.resolve()):
                raise WatchlistError(f"watchlist archive: {member.name!r} is not a file of "
                                     "the bundle")
            source = tar.extractfile(member)
            assert source is not None  # a regular file
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(source.read())
            target.chmod(0o600)
    shutil.rmtree(destination, ignore_errors=True)
    partial.rename(destination)
    return destination


async def current(bus: Bus) -> tuple[Version | None, int]:
    """The version in use (None: never published) and its key's revision (0: none)."""
    from nats.js.errors import KeyNotFoundError

    assert bus.watchlist is not None
    try:
        entry = await bus.watchlist.get(CURRENT)
    except KeyNotFoundError:
        return None, 0
    return _version_decoder.decode(entry.value or b""), int(entry.revision or 0)


async def publish(bus: Bus, bundle: Path, by: str, *, only_if_none: bool = False,
                  key_id: str = "") -> Version | None:
    """Publish ``bundle`` as the next version. ``only_if_none``: only when nothing was ever
    published (a node started with a bundle in its config); None when one was. ``key_id``: the
    deployment's data key's id; a bundle sealed with another key, which no node could open, is
    refused."""
    from nats.js.errors import KeyWrongLastSequenceError

    assert bus.watchlist is not None and bus.bundles is not None
    data, people = pack_bundle(bundle)
    if key_id:
        check_sealed_with(bundle, key_id, bus.names.deployment)
    previous, revision = await current(bus)
    if only_if_none and previous is not None:
        return None
    number = (previous.version if previous else 0) + 1
    version = Version(version=number, sha256=hashlib.sha256(data).hexdigest(), people=people,
                      published=utc_iso(time.time()), by=by,
                      object=f"v{number}-{uuid.uuid4().hex[:12]}")
    await bus.bundles.put(version.object, data)
    try:
        if revision:
            await bus.watchlist.update(CURRENT, msgspec.json.encode(version), last=revision)
        else:
            await bus.watchlist.create(CURRENT, msgspec.json.encode(version))
    except KeyWrongLastSequenceError:
        with contextlib.suppress(Exception):
            await bus.bundles.delete(version.object)
        if only_if_none:
            return None
        raise WatchlistError("another watchlist was published at the same time: try again, "
                             "after checking which one is in use (lfr status)") from None
    return version


def check_sealed_with(bundle: Path, key_id: str, deployment: str) -> None:
    """WatchlistError unless ``bundle``'s own key is sealed with the key of id ``key_id``."""
    from lfr.sealed import sealed_with
    from lfr.watchlist.bundle import BUNDLE_KEY

    try:
        found = sealed_with((bundle / BUNDLE_KEY).read_bytes())
    except OSError as exc:
        raise WatchlistError(f"{bundle / BUNDLE_KEY}: cannot read: {exc.strerror}") from None
    if found != key_id:
        raise WatchlistError(
            f"{bundle}: sealed with data key {found or '(none: not sealed by lfr)'}, not with "
            f"deployment {deployment!r}'s data key {key_id}: no node could open it. Build it "
            "with the deployment's key ([keys] data_key = the data.key lfr nats-config wrote, "
            "or on the machine whose data.key that is)")


async def fetch(bus: Bus, version: Version, destination: Path, key: DataKey | None = None
                ) -> Path:
    """Download, check and unpack ``version`` into ``destination``; with ``key``, also check
    that it opens with it (a copy that does not is removed)."""
    import anyio

    assert bus.bundles is not None
    data = (await bus.bundles.get(version.object)).data or b""
    digest = hashlib.sha256(data).hexdigest()
    if digest != version.sha256:
        raise WatchlistError(f"watchlist version {version.version}: stored bytes have sha256 "
                             f"{digest}, published as {version.sha256}; not used")
    bundle = unpack_bundle(data, destination)
    if key is not None:
        await anyio.to_thread.run_sync(_check_opens, bundle, version, key, bus.names.deployment)
    return bundle


def _check_opens(bundle: Path, version: Version, key: DataKey, deployment: str) -> None:
    from lfr.watchlist.bundle import WatchlistError as BundleError
    from lfr.watchlist.bundle import load_bundle

    try:
        load_bundle(bundle, key=key)
    except BundleError as exc:
        shutil.rmtree(bundle, ignore_errors=True)
        raise WatchlistError(
            f"watchlist version {version.version} of deployment {deployment!r} cannot be used "
            f"on this node: {exc}. Nodes open the deployment's bundles with its data key: the "
            "data.key lfr nats-config wrote beside each node's credentials (or the config's "
            "[keys] data_key), the key the bundle was built with") from None


async def destroy(bus: Bus, by: str) -> Version:
    """Mark the watchlist destroyed (a new version) and delete every stored bundle."""
    from nats.js.errors import NotFoundError

    assert bus.watchlist is not None and bus.bundles is not None
    previous, revision = await current(bus)
    if previous is None or previous.destroyed:
        raise WatchlistError(f"deployment {bus.names.deployment!r} has no published watchlist")
    version = Version(version=previous.version + 1, sha256="", people=0,
                      published=utc_iso(time.time()), by=by, destroyed=True)
    await bus.watchlist.update(CURRENT, msgspec.json.encode(version), last=revision)
    try:
        stored = await bus.bundles.list(ignore_deletes=True)
    except NotFoundError:  # none left
        stored = []
    for info in stored:
        with contextlib.suppress(NotFoundError):
            await bus.bundles.delete(info.name)
    return version
