"""Faces locked at rest (issue 13): a copied data directory or watchlist bundle without the key
shows no face, blobs cannot be swapped, a wrong key is named, destroying a bundle destroys its
key, and a restart does not announce the same person again within the cooldown."""

from __future__ import annotations

import base64
import os
import shutil
import sqlite3
import stat
from pathlib import Path

import anyio
import cv2
import msgspec
import numpy as np
import pytest
from paths import CLIP, PEOPLE

from lfr.cli import PRIVATE_UMASK, main
from lfr.config import parse_config
from lfr.deployment import Deployment, RunSummary
from lfr.keys import DATA_KEY_NAME, KeyFileError, load_data_key, write_data_key
from lfr.messages import Alert
from lfr.notify.outbox import DB_NAME, Outbox
from lfr.plugins import load_plugins
from lfr.sealed import DataKey, SealError, WrongKeyError
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import WatchlistError, build_watchlist, bundle_info, destroy_bundle, load_bundle
from lfr.watchlist.bundle import BUNDLE_KEY, EMBEDDINGS

IMAGE_SIGNATURES = {"JPEG": b"\xff\xd8\xff", "PNG": b"\x89PNG"}
DIM = 128


def unit_vectors_in(data: bytes, dim: int = DIM, tolerance: float = 1e-3) -> int:
    """How many windows of ``dim`` float32 values, starting at any 4-byte offset, have an L2
    norm within ``tolerance`` of 1: what an embedding (SFace, normalised) looks like."""
    found = 0
    for phase in range(4):
        usable = (len(data) - phase) // 4 * 4
        with np.errstate(all="ignore"):  # random bytes are NaNs and infinities too
            values = np.frombuffer(data[phase:phase + usable], "<f4").astype(np.float64)
            # A value outside [-1, 1] (or NaN, inf) cannot sit in a unit vector: count it as 4,
            # which puts any window holding it far from 1 and keeps the running sum exact.
            squares = np.where(np.abs(values) <= 1.0, values * values, 4.0)
        if len(values) < dim:
            continue
        sums = np.concatenate([[0.0], np.cumsum(squares)])
        window = sums[dim:] - sums[:-dim]
        found += int(np.count_nonzero(np.abs(np.sqrt(window) - 1.0) <= tolerance))
    return found


def faces_in(root: Path) -> dict[str, list[str]]:
    """Per file under ``root``, what in it looks like a face: an image start or an embedding."""
    hits: dict[str, list[str]] = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        data = path.read_bytes()
        found = [kind for kind, signature in IMAGE_SIGNATURES.items() if signature in data]
        if unit_vectors_in(data):
            found.append("unit-norm float32 vector")
        if found:
            hits[str(path.relative_to(root))] = found
    return hits


def test_the_scanner_finds_faces_in_the_clear() -> None:
    """The scan below would see an embedding or an image if one were there."""
    rng = np.random.default_rng(0)
    vector = rng.normal(size=DIM).astype(np.float32)
    vector /= np.linalg.norm(vector)
    noise = rng.bytes(1001)  # odd length: the vector starts at an offset that is not 4-aligned
    assert unit_vectors_in(noise + vector.tobytes() + noise) >= 1
    assert unit_vectors_in(noise + (2 * vector).tobytes() + noise) == 0
    assert unit_vectors_in(noise) == 0
    jpeg = cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes()
    assert IMAGE_SIGNATURES["JPEG"] in jpeg


class Site(msgspec.Struct):
    root: Path
    bundle: Path
    data: Path
    first: RunSummary
    alerts: list[Alert]


def deployment_config(site_root: Path, bundle: Path, cooldown_s: float) -> object:
    return parse_config({
        "name": "rest", "data_dir": str(site_root / "data"), "watchlist": {"bundle": str(bundle)},
        "cameras": [{"name": "clip", "url": str(CLIP), "fps_cap": 5}],
        "matching": {"cooldown_s": cooldown_s},
        "notifiers": [{"kind": "jsonl"}]}, "test")


def run_site(site_root: Path, bundle: Path, cooldown_s: float, offline: bool = True
             ) -> tuple[RunSummary, list[Alert]]:
    """Offline: every frame (the same alerts each time); live: as `lfr run` on a camera."""
    config = deployment_config(site_root, bundle, cooldown_s)
    deployment = Deployment(config, load_plugins(), offline=offline, once=True)  # type: ignore[arg-type]
    with deployment.alerts.record() as raised:
        summary = anyio.run(deployment.run, False)
        return summary, list(raised.items)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    """A bundle of the demo people built on its own, and a deployment on the demo clip that
    raised alerts with it (the user's key from the session's key directory)."""
    root = tmp_path_factory.mktemp("site")
    bundle = root / "watchlist"
    before = os.umask(PRIVATE_UMASK)  # as every lfr command sets it (tested for the CLI elsewhere)
    try:
        build_watchlist(PEOPLE, bundle, default_analyzer())
        summary, alerts = run_site(root, bundle, cooldown_s=3600)
    finally:
        os.umask(before)
    assert alerts, "the demo clip must raise alerts for this test to mean anything"
    return Site(root, bundle, root / "data", summary, alerts)


def modes(root: Path) -> dict[str, int]:
    return {str(p.relative_to(root)): stat.S_IMODE(p.stat().st_mode)
            for p in [root, *root.rglob("*")]}


def test_copied_data_and_bundle_without_the_key_reveal_no_face(
    site: Site, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    user_key, listed = load_data_key(), len(load_bundle(site.bundle).persons)
    copy = Path(shutil.copytree(site.root, tmp_path / "copy", symlinks=True))
    assert faces_in(copy) == {}
    # The key is nowhere in what was copied, in any form.
    secret = user_key.secret
    written = b"".join(p.read_bytes() for p in copy.rglob("*") if p.is_file())
    assert secret not in written and base64.b64encode(secret) not in written
    # Everything lfr wrote is private.
    for name, mode in modes(site.root).items():
        is_dir = (site.root / name).is_dir()
        assert mode == (0o700 if is_dir else 0o600), f"{name}: {oct(mode)}"

    # The key removed (another user, another machine): nothing opens, and the error says why.
    monkeypatch.setenv("LFR_KEY_DIR", str(tmp_path / "other-keys"))
    other = load_data_key()
    assert other.fingerprint != user_key.fingerprint
    with pytest.raises(WatchlistError) as refused:
        load_bundle(copy / "watchlist")
    message = str(refused.value)
    assert f"was encrypted with key {user_key.fingerprint}" in message
    assert f"this key is {other.fingerprint}" in message
    assert "[keys] data_key or LFR_KEY_DIR" in message
    with pytest.raises(WrongKeyError, match=f"outbox .* was encrypted with key "
                                            f"{user_key.fingerprint}"):
        Outbox(copy / "data")
    # Who is listed stays readable without the key (to inspect and destroy): names, not faces.
    assert bundle_info(copy / "watchlist")["persons"] == listed > 0


def test_with_the_key_alerts_show_their_images_and_the_bundle_works(site: Site) -> None:
    watchlist = load_bundle(site.bundle)
    with Outbox(site.data) as outbox:
        stored = {a.id: a for a in outbox.alerts()}
    assert set(stored) == {a.id for a in site.alerts}
    for alert in site.alerts:
        kept = stored[alert.id]
        assert kept.crop_jpeg == alert.crop_jpeg and kept.crop_jpeg.startswith(b"\xff\xd8\xff")
        crop = cv2.imdecode(np.frombuffer(kept.crop_jpeg, np.uint8), cv2.IMREAD_COLOR)
        assert crop is not None and crop.size > 0
        assert kept.watchlist_jpeg == watchlist.thumbnail_jpeg(alert.person_id)
    norms = np.linalg.norm(watchlist.vectors, axis=1)
    assert np.allclose(norms, 1.0, atol=1e-3)  # what the scan looks for, and did not find
    assert main(["watchlist", "info", str(site.bundle), "--json"]) == 0


def pairs(alerts: list[Alert]) -> set[tuple[str, str]]:
    return {(a.camera, a.person_id) for a in alerts}


def test_restart_does_not_alert_again_within_the_cooldown(site: Site) -> None:
    raised = pairs(site.alerts)
    # A live run on the same data directory: everyone announced before is still held.
    summary, again = run_site(site.root, site.bundle, cooldown_s=3600, offline=False)
    assert summary.faces > 0
    assert pairs(again) & raised == set()
    # Without a cooldown the same people are announced again.
    _, without = run_site(site.root, site.bundle, cooldown_s=0, offline=False)
    assert pairs(without) & raised
    # A replay of recorded video (demo, `lfr eval video`) is not held by earlier alerts: the
    # same frames raise the same alerts.
    _, replayed = run_site(site.root, site.bundle, cooldown_s=3600)
    assert pairs(replayed) == raised


def sample_alert(alert_id: str) -> Alert:
    return Alert(id=alert_id, camera="north", time="2024-05-01T12:00:00.000+00:00",
                 wall_time=1714564800.0, person_id="p1", name="Jane Doe", score=0.7,
                 threshold=0.5, box=(1.0, 2.0, 30.0, 30.0), frame_index=1, latency_s=0.1,
                 crop_jpeg=b"\xff\xd8\xffcrop " + alert_id.encode(),
                 watchlist_jpeg=b"\xff\xd8\xffref")


def test_sealed_images_cannot_be_swapped_between_alerts_or_fields(tmp_path: Path) -> None:
    with Outbox(tmp_path) as outbox:
        outbox.add_alert(sample_alert("a1"), ["jsonl"])
        outbox.add_alert(sample_alert("a2"), ["jsonl"])
    db = sqlite3.connect(tmp_path / DB_NAME)
    payloads = dict(db.execute("SELECT id, payload FROM alerts").fetchall())
    decoded = {k: msgspec.msgpack.decode(v, type=Alert) for k, v in payloads.items()}
    swapped = msgspec.structs.replace(decoded["a1"], crop_jpeg=decoded["a2"].crop_jpeg)
    crossed = msgspec.structs.replace(decoded["a2"], crop_jpeg=decoded["a2"].watchlist_jpeg)
    for alert in (swapped, crossed):
        db.execute("UPDATE alerts SET payload = ? WHERE id = ?",
                   (msgspec.msgpack.encode(alert), alert.id))
    db.commit()
    db.close()
    with Outbox(tmp_path) as outbox:
        for alert_id in ("a1", "a2"):
            with pytest.raises(SealError, match=f"alert {alert_id}'s crop_jpeg .*does not decrypt"):
                outbox.get_alert(alert_id)


def test_thumbnails_cannot_be_swapped_and_a_wrong_key_is_named(site: Site, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(site.bundle, tmp_path / "wl"))
    first, second = sorted((bundle / "thumbs").iterdir())[:2]
    first_bytes = first.read_bytes()
    first.write_bytes(second.read_bytes())
    second.write_bytes(first_bytes)
    watchlist = load_bundle(bundle)
    person = next(p.id for p in watchlist.persons
                  if any(i.thumbnail == first.name.removesuffix(".sealed") for i in p.images))
    with pytest.raises(WatchlistError, match=r"thumbnail .* does not decrypt"):
        watchlist.thumbnail_jpeg(person)
    stranger = DataKey.generate("a test key")
    with pytest.raises(WatchlistError, match=f"this key is {stranger.fingerprint}"):
        load_bundle(site.bundle, key=stranger)


def test_a_configured_data_key_must_be_private_and_well_formed(tmp_path: Path) -> None:
    key_file = tmp_path / "site.key"
    key = DataKey.generate("test")
    write_data_key(key_file, key)
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_data_key(key_file).fingerprint == key.fingerprint
    os.chmod(key_file, 0o644)
    with pytest.raises(KeyFileError, match="readable by other users"):
        load_data_key(key_file)
    key_file.write_text("not a key\n")
    os.chmod(key_file, 0o600)
    with pytest.raises(KeyFileError, match="not an lfr data key"):
        load_data_key(key_file)
    with pytest.raises(KeyFileError, match="cannot read"):
        load_data_key(tmp_path / "missing.key")
    assert not (tmp_path / DATA_KEY_NAME).exists()  # a named key is never created silently


def test_destroying_a_bundle_overwrites_its_key_first(site: Site, tmp_path: Path) -> None:
    bundle = Path(shutil.copytree(site.bundle, tmp_path / "wl"))
    # A second name for the key file's blocks: what the deletion would otherwise leave on disk.
    os.link(bundle / BUNDLE_KEY, tmp_path / "key-blocks")
    assert load_bundle(bundle).persons
    destroy_bundle(bundle)
    assert not bundle.exists()
    leftover = (tmp_path / "key-blocks").read_bytes()
    assert leftover and leftover == bytes(len(leftover))


def test_purged_images_leave_no_ciphertext_in_the_data_directory(tmp_path: Path) -> None:
    # Camera-sized images: they spill to overflow pages, which a purge frees.
    big = msgspec.structs.replace(sample_alert("old"), crop_jpeg=os.urandom(40_000),
                                  watchlist_jpeg=os.urandom(20_000))
    with Outbox(tmp_path) as outbox:
        outbox.add_alert(big, ["jsonl"])
        sealed = msgspec.msgpack.decode(
            outbox._read("SELECT payload FROM alerts WHERE id = 'old'")[0][0], type=Alert)
        assert outbox.purge_images(0.0, now=1e12) == 1
        purged = outbox.get_alert("old")
        assert purged is not None and purged.crop_jpeg == purged.watchlist_jpeg == b""
    written = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    for blob in (sealed.crop_jpeg, sealed.watchlist_jpeg):
        assert blob[-32:] not in written


def test_an_outbox_from_before_encryption_is_sealed_when_opened(tmp_path: Path) -> None:
    with Outbox(tmp_path) as outbox:
        outbox.add_alert(sample_alert("legacy"), ["jsonl"])
    # As an lfr before encryption wrote it: images in the clear, no key recorded.
    db = sqlite3.connect(tmp_path / DB_NAME)
    db.execute("UPDATE alerts SET payload = ?", (msgspec.msgpack.encode(sample_alert("legacy")),))
    db.execute("DELETE FROM meta")
    db.execute("PRAGMA user_version = 0")
    db.commit()
    db.close()
    assert IMAGE_SIGNATURES["JPEG"] in (tmp_path / DB_NAME).read_bytes()
    with Outbox(tmp_path) as outbox:
        kept = outbox.get_alert("legacy")
        assert kept is not None and kept.crop_jpeg == sample_alert("legacy").crop_jpeg
    assert faces_in(tmp_path) == {}


def test_embeddings_file_is_sealed(site: Site) -> None:
    assert not (site.bundle / "embeddings.npy").exists()
    assert (site.bundle / EMBEDDINGS).read_bytes().startswith(b"LFRSEAL1")


def test_a_config_names_its_own_data_key_for_build_and_run(tmp_path: Path) -> None:
    from lfr.config import load_config
    from lfr.matching import configured_watchlist

    site_key = DataKey.generate("test")
    write_data_key(tmp_path / "site.key", site_key)
    config = tmp_path / "site.toml"
    config.write_text(f'name = "keyed"\n[watchlist]\nbundle = "wl"\n'
                      f'[keys]\ndata_key = "site.key"\n[[cameras]]\nname = "c"\nurl = "{CLIP}"\n')
    assert main(["watchlist", "build", str(PEOPLE), "-o", str(tmp_path / "wl"),
                 "--config", str(config), "--json"]) == 0
    assert configured_watchlist(load_config(config)).persons  # the config's key opens it
    with pytest.raises(WatchlistError, match=f"encrypted with key {site_key.fingerprint}"):
        load_bundle(tmp_path / "wl")  # the user's key does not
