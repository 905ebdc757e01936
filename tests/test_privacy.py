"""Privacy safeguards, provable.

- A deployment over footage of people who are not on the watchlist writes no crop and no embedding
  of them anywhere: `lfr run` runs as a subprocess with HOME, the cache, TMPDIR and its working
  directory inside the test's folder; every file it created or changed there, and its stdout and
  stderr, are searched for image signatures, raw pixel rows of the faces it saw, and their
  embeddings (computed here independently) as float16/32/64 in either byte order or as text.
  The same search finds each kind of leak when one is planted (so a pass means something).
- `lfr watchlist destroy` removes a bundle and audits it; an expired bundle refuses to load.
- Alert images are purged after `privacy.alert_retention_days` (injected clock).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import anyio
import cv2
import msgspec
import numpy as np
import pytest
from paths import CLIP, PEOPLE

from lfr.audit import AuditLog, audit_records, verify
from lfr.cli import main
from lfr.config import parse_config
from lfr.deployment import Deployment
from lfr.messages import Alert, Frame
from lfr.notify.outbox import Outbox
from lfr.pipeline.camera import SourceActor
from lfr.plugins import load_plugins
from lfr.retention import DAY_S, RetentionService
from lfr.runtime import Overflow, Supervisor, open_channel
from lfr.runtime.channels import Receiver, Sender
from lfr.sources import SourceSettings, VideoSource
from lfr.vision.defaults import default_analyzer
from lfr.vision.models import cache_dir
from lfr.vision.privacy import context_crop
from lfr.watchlist import build_watchlist, bundle_digest

LFR = Path(sys.executable).with_name("lfr")
ON_CLIP = {"lin_manuel_miranda", "obama", "alex_lacamoire"}  # people who appear in the demo clip
FPS_CAP = 5.0


@pytest.fixture(scope="module")
def strangers(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A watchlist of demo people who are not in the clip: nobody there should match."""
    source = tmp_path_factory.mktemp("strangers") / "people"
    for person in sorted(p.name for p in PEOPLE.iterdir() if p.is_dir()):
        if person not in ON_CLIP:
            shutil.copytree(PEOPLE / person, source / person)
    bundle = source.parent / "bundle"
    build_watchlist(source, bundle, default_analyzer())
    return bundle


class Seen(msgspec.Struct):
    """What the camera saw, computed here: every face's embedding and pixel rows to look for."""

    embeddings: np.ndarray  # N x 128 float32
    rows: list[bytes]  # raw pixel runs: crop rows (BGR, RGB, grey), frame rows at faces
    crops: list[np.ndarray]
    faces: int


async def _frames(settings: SourceSettings) -> list[Frame]:
    send: Sender[Frame]
    receive: Receiver[Frame]
    send, receive = open_channel("frames", 4, Overflow.BLOCK)
    camera = SourceActor(VideoSource(settings), send)
    frames: list[Frame] = []
    async with anyio.create_task_group() as tg, receive:
        tg.start_soon(Supervisor().supervise, camera)
        async for frame in receive:
            frames.append(frame)
    return frames


@pytest.fixture(scope="module")
def seen() -> Seen:
    """The clip's frames at the run's fps cap, analysed like the pipeline does (any of them may be
    the ones the run processed: the live run drops frames it cannot keep up with)."""
    frames = anyio.run(_frames, SourceSettings(name="stage", url=str(CLIP), fps_cap=FPS_CAP))
    analyzer = default_analyzer()
    vectors: list[np.ndarray] = []
    rows: list[bytes] = []
    crops: list[np.ndarray] = []
    for frame in frames:
        for face in analyzer.analyze(frame.image):
            crop = context_crop(frame.image, face.detection.box)
            crops.append(crop)
            if face.embedding is not None:
                vectors.append(face.embedding)
            for picture in (crop, face.aligned):
                middle = picture[picture.shape[0] // 2]
                if middle.shape[0] >= 16:
                    segment = np.ascontiguousarray(middle[:16])
                    rows += [
                        segment.tobytes(),
                        segment[:, ::-1].tobytes(),
                        cv2.cvtColor(segment[None], cv2.COLOR_BGR2GRAY).tobytes(),
                    ]
            x, y, w, h = (int(v) for v in face.detection.box)
            cy, cx = min(frame.image.shape[0] - 1, y + h // 2), max(0, x + w // 2 - 8)
            rows.append(np.ascontiguousarray(frame.image[cy, cx : cx + 16]).tobytes())
    return Seen(np.stack(vectors), rows, crops, len(crops))


# --- the search ----------------------------------------------------------------------------------

SIGNATURES = {
    "jpeg": b"\xff\xd8\xff",
    "png": b"\x89PNG\r\n\x1a\n",
    "webp": b"WEBPVP8",
    "npy": b"\x93NUMPY",
}
FLOAT_TYPES = ("<f2", ">f2", "<f4", ">f4", "<f8", ">f8")
NUMBER = re.compile(rb"-?\d*\.\d+(?:[eE][-+]?\d+)?")


def vector_runs(values: np.ndarray, vectors: np.ndarray, run: int, tol: float) -> int:
    """Places where `run` consecutive values equal consecutive components of a vector (± tol)."""
    dim = vectors.shape[1]
    width = dim - run + 1
    starts = vectors[:, :width].astype(np.float64).ravel()  # components that can start a run
    order = np.argsort(starts, kind="stable")
    ordered = starts[order]
    values = np.where(np.isfinite(values), values, np.inf).astype(np.float64)
    found = 0
    for chunk in range(0, max(0, len(values) - run + 1), 100_000):
        head = values[chunk : min(chunk + 100_000, len(values) - run + 1)]
        lo = np.searchsorted(ordered, head - tol, "left")
        hi = np.searchsorted(ordered, head + tol, "right")
        counts = hi - lo
        if not counts.sum():
            continue
        pos = np.repeat(np.arange(len(head)) + chunk, counts)
        within = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts)
        i, j = np.divmod(order[np.repeat(lo, counts) + within], width)
        for step in range(1, run):
            keep = np.abs(values[pos + step] - vectors[i, j + step]) < tol
            pos, i, j = pos[keep], i[keep], j[keep]
        found += len(pos)
    return found


def leaks(data: bytes, seen: Seen) -> list[str]:
    """What of the seen faces `data` holds: image signatures, pixel rows, embeddings."""
    found = [f"{name} image" for name, magic in SIGNATURES.items() if magic in data]
    found += [f"pixel row {k}" for k, row in enumerate(seen.rows) if row in data]
    for dtype in FLOAT_TYPES:
        size = np.dtype(dtype).itemsize
        for offset in range(size):
            count = (len(data) - offset) // size
            if count >= 8:
                values = np.frombuffer(data, dtype, count=count, offset=offset)
                if vector_runs(values, seen.embeddings, run=8, tol=2e-4):
                    found.append(f"embedding as {dtype} at offset {offset}")
    numbers = [float(m) for m in NUMBER.findall(data)]
    if len(numbers) >= 6 and vector_runs(np.array(numbers), seen.embeddings, run=6, tol=6e-4):
        found.append("embedding as text")
    return found


def snapshot(root: Path) -> dict[Path, str]:
    return {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in root.rglob("*") if p.is_file()}


# --- the run ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_run_over_people_not_listed_writes_none_of_them(
    tmp_path: Path, strangers: Path, seen: Seen
) -> None:
    assert seen.faces > 20 and len(seen.embeddings) > 10
    home, cache, tmp, work = (tmp_path / d for d in ("home", "cache", "tmp", "work"))
    for d in (home, tmp, work):
        d.mkdir()
    shutil.copytree(cache_dir(), cache)  # the converted models only
    config = work / "site.toml"
    config.write_text(f"""
name = "privacy"
location = "Test bench"
data_dir = "data"

[watchlist]
bundle = "{strangers}"

[[cameras]]
name = "stage"
url = "{CLIP}"
realtime = true
fps_cap = {FPS_CAP}

[[notifiers]]
kind = "jsonl"

[[notifiers]]
kind = "console"
""")
    before = snapshot(tmp_path)
    env = {
        **os.environ,
        "HOME": str(home),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "LFR_CACHE_DIR": str(cache),
        "TMPDIR": str(tmp),
        "COLUMNS": "200",
    }
    run = subprocess.run(
        [str(LFR), "-v", "run", str(config), "--once", "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr.decode()[-3000:]
    out = json.loads(run.stdout)
    assert out["alerts"] == [] and out["summary"]["alerts"] == 0  # nobody on the list was there
    assert out["summary"]["faces"] > 10  # faces were seen, and forgotten
    report = subprocess.run(
        [str(LFR), "report", "--data-dir", str(work / "data"), "--json"],
        cwd=work,
        env=env,
        capture_output=True,
        timeout=60,
    )
    assert report.returncode == 0, report.stderr.decode()

    after = snapshot(tmp_path)
    written = sorted(p for p, digest in after.items() if before.get(p) != digest)
    names = {p.relative_to(tmp_path).as_posix() for p in written}
    assert {"work/data/audit.jsonl", "work/data/outbox.sqlite"} <= names, names
    assert not any(name.startswith("cache/") for name in names), names  # models were not rebuilt
    outputs = {"stdout": run.stdout, "stderr": run.stderr, "report": report.stdout}
    for label, data in [
        *((p.relative_to(tmp_path).as_posix(), p.read_bytes()) for p in written),
        *outputs.items(),
    ]:
        assert leaks(data, seen) == [], label
    with Outbox(work / "data") as outbox:
        assert outbox.alerts() == []
    assert verify(work / "data").ok


def test_the_search_finds_each_kind_of_planted_leak(seen: Seen) -> None:
    vector = seen.embeddings[len(seen.embeddings) // 2]
    crop = seen.crops[len(seen.crops) // 2]
    filler = os.urandom(999)
    planted = {
        "npy": b"\x93NUMPY" + vector.tobytes(),
        "float32": filler + vector.tobytes() + filler,
        "float16 big-endian": filler + vector.astype(">f2").tobytes(),
        "float64": filler[:3] + vector.astype(np.float64).tobytes(),
        "partial float32": filler + vector[40:50].tobytes(),
        "json": msgspec.json.encode({"embedding": vector.tolist()}),
        "text 3 decimals": " ".join(f"{v:.3f}" for v in vector[:20]).encode(),
        "jpeg": cv2.imencode(".jpg", crop)[1].tobytes(),
        "png": cv2.imencode(".png", crop)[1].tobytes(),
        "raw crop": filler + crop.tobytes(),
        "raw grey crop": cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY).tobytes(),
    }
    for label, data in planted.items():
        assert leaks(data, seen), label
    clean = {
        "random": os.urandom(200_000),
        "zeros": bytes(100_000),
        "other vectors": np.random.default_rng(1)
        .normal(0, 0.09, 20_000)
        .astype(np.float32)
        .tobytes(),
        "scores as text": " ".join(f"{v:.3f}" for v in np.linspace(-1, 1, 5000)).encode(),
    }
    for label, data in clean.items():
        assert leaks(data, seen) == [], label


# --- destroy and expiry --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    source = tmp_path_factory.mktemp("small") / "people"
    shutil.copytree(PEOPLE / "biden", source / "biden")
    bundle = source.parent / "bundle"
    build_watchlist(source, bundle, default_analyzer())
    return bundle


def copy_bundle(bundle: Path, target: Path, expiry: str | None = None) -> Path:
    shutil.copytree(bundle, target)
    if expiry is not None:
        manifest = json.loads((target / "manifest.json").read_text())
        manifest["expiry"] = expiry
        (target / "manifest.json").write_text(json.dumps(manifest))
    return target


def test_destroy_removes_the_bundle_and_audits_it(
    tmp_path: Path, small_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = copy_bundle(small_bundle, tmp_path / "wl")
    digest = bundle_digest(bundle)
    data = tmp_path / "data"
    config = tmp_path / "site.toml"
    config.write_text('name = "d"\ndata_dir = "data"\noperator = "inspector"\n')
    assert main(["watchlist", "destroy", str(bundle), "--config", str(config), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)["destroyed"]
    assert not bundle.exists()
    assert out["digest"] == digest and out["audited_in"] == str(data / "audit.jsonl")
    (record,) = [r for r in audit_records(data) if r.kind != "seal"]  # seals sign, hold no event
    assert record.kind == "watchlist_destroyed"
    assert record.data == {"path": str(bundle.resolve()), "digest": digest, "operator": "inspector"}
    assert verify(data).ok
    assert main(["report", "--data-dir", str(data), "--json"]) == 0
    (listed,) = json.loads(capsys.readouterr().out)["watchlists_destroyed"]
    assert listed["digest"] == digest


def test_destroy_refuses_what_it_must_not_delete(
    tmp_path: Path, small_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    precious = tmp_path / "photos"
    precious.mkdir()
    (precious / "holiday.jpg").write_bytes(b"\xff\xd8\xff")
    assert main(["watchlist", "destroy", str(precious)]) == 2
    assert "not a watchlist bundle" in capsys.readouterr().err
    assert (precious / "holiday.jpg").exists()
    # A running deployment holds the audit log: nothing is deleted without its record.
    bundle = copy_bundle(small_bundle, tmp_path / "wl")
    with AuditLog(tmp_path / "data"):
        assert (
            main(["watchlist", "destroy", str(bundle), "--data-dir", str(tmp_path / "data")]) == 2
        )
    assert "in use by another process; nothing deleted" in " ".join(capsys.readouterr().err.split())
    assert (bundle / "manifest.json").exists()
    # Without a data directory it still destroys, and says it was not audited.
    assert main(["watchlist", "destroy", str(bundle)]) == 0
    assert "not audited" in capsys.readouterr().err and not bundle.exists()


def test_expired_bundle_refuses_to_load_and_can_be_destroyed(
    tmp_path: Path, small_bundle: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bundle = copy_bundle(small_bundle, tmp_path / "wl", expiry="2001-01-01")
    assert main(["watchlist", "info", str(bundle), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert (info["expiry"], info["expired"]) == ("2001-01-01", True)
    config = tmp_path / "site.toml"
    config.write_text(f'name = "e"\ndata_dir = "data"\n[watchlist]\nbundle = "{bundle}"\n')
    run = subprocess.run(
        [str(LFR), "run", str(config), "--once"],
        capture_output=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert run.returncode == 2  # a clear error, not a traceback
    assert "Traceback" not in run.stderr.decode()
    assert (
        f"watchlist {bundle} expired at 2001-01-02T00:00:00.000+00:00: it may no longer be "
        "used; destroy it"
    ) in run.stderr.decode()
    # It never ran: no deployment_start, no watchlist_loaded (only the log's own seals).
    assert [r.kind for r in audit_records(tmp_path / "data") if r.kind != "seal"] == []
    assert main(["watchlist", "destroy", str(bundle), "--config", str(config)]) == 0
    assert not bundle.exists()
    kinds = [r.kind for r in audit_records(tmp_path / "data") if r.kind != "seal"]
    assert kinds == ["watchlist_destroyed"]


# --- retention ---------------------------------------------------------------------------------


def stored_alert(i: int) -> Alert:
    return Alert(
        id=f"a{i}",
        camera="c",
        time="2024-01-01T00:00:00.000+00:00",
        wall_time=0.0,
        person_id="p",
        name="P",
        score=0.9,
        threshold=0.5,
        box=(0.0, 0.0, 1.0, 1.0),
        frame_index=i,
        latency_s=0.0,
        crop_jpeg=b"\xff\xd8\xffcrop",
        watchlist_jpeg=b"\xff\xd8\xffref",
    )


@pytest.mark.anyio
async def test_retention_service_purges_what_is_older_than_retention(tmp_path: Path) -> None:
    retention_s = 2.0
    now = {"t": time.time()}
    service = RetentionService(retention_s / DAY_S, interval_s=0.05, clock=lambda: now["t"])
    with Outbox(tmp_path) as outbox:
        t_a = time.time()
        outbox.add_alert(stored_alert(1), [])
        await anyio.sleep(0.4)
        t_b = time.time()
        outbox.add_alert(stored_alert(2), [])

        async def purged(alert_id: str) -> bool:
            alert = await anyio.to_thread.run_sync(outbox.get_alert, alert_id)
            assert alert is not None
            return alert.crop_jpeg == b"" and alert.watchlist_jpeg == b""

        async with anyio.create_task_group() as tg:
            tg.start_soon(service.run, outbox)
            now["t"] = t_a + retention_s - 1.0  # nothing is old enough yet
            await anyio.sleep(0.3)
            assert not await purged("a1") and not await purged("a2")
            now["t"] = t_a + retention_s + 0.2  # a1 is past its retention, a2 is not
            with anyio.fail_after(10):
                while not await purged("a1"):  # noqa: ASYNC110 - polling the outbox
                    await anyio.sleep(0.05)
            assert not await purged("a2")
            now["t"] = t_b + retention_s + 0.2
            with anyio.fail_after(10):
                while not await purged("a2"):  # noqa: ASYNC110 - polling the outbox
                    await anyio.sleep(0.05)
            tg.cancel_scope.cancel()
        assert service.purged == 2 and service.runs > 3
        kept = outbox.get_alert("a1")
        assert kept is not None and kept.person_id == "p"  # the alert itself stays


def test_default_retention_is_31_days() -> None:
    config = parse_config({"name": "r"})
    assert config.privacy.alert_retention_days == 31
    deployment = Deployment(config, load_plugins())
    assert deployment.retention.retention_days == 31
    assert deployment.retention.interval_s == 3600  # hourly at most


@pytest.mark.slow
def test_deployment_purges_expired_images_at_start(tmp_path: Path) -> None:
    bundle = tmp_path / "wl"
    build_watchlist(PEOPLE, bundle, default_analyzer())

    def deployment(**privacy: Any) -> Deployment:
        config = parse_config(
            {
                "name": "r",
                "data_dir": str(tmp_path / "data"),
                "watchlist": {"bundle": str(bundle)},
                "cameras": [{"name": "stage", "url": str(CLIP), "fps_cap": 2}],
                "notifiers": [{"kind": "jsonl"}],
                "privacy": privacy,
                # The second run alerts again on the same clip: no cooldown carried over.
                "matching": {"cooldown_s": 0},
            },
            "test",
        )
        return Deployment(config, load_plugins(), offline=True, once=True)

    first = deployment()
    assert anyio.run(first.run, False).alerts > 0
    with Outbox(tmp_path / "data") as outbox:
        old = {a.id for a in outbox.alerts()}
        assert old and all(a.crop_jpeg and a.watchlist_jpeg for a in outbox.alerts())

    second = deployment(alert_retention_days=30)
    second.retention.clock = lambda: time.time() + 30 * DAY_S + 60  # a month later
    assert anyio.run(second.run, False).alerts > 0
    with Outbox(tmp_path / "data") as outbox:
        alerts = outbox.alerts()
    assert {a.id for a in alerts if not a.crop_jpeg and not a.watchlist_jpeg} == old
    assert all(a.crop_jpeg for a in alerts if a.id not in old)  # this run's are kept
    assert second.retention.purged == len(old)
    assert verify(tmp_path / "data").ok  # the log holds hashes: purging leaves it intact
    raw = (tmp_path / "data" / "outbox.sqlite").read_bytes()
    # Kept images are sealed, purged ones gone (tests/security/test_sec_at_rest.py: no ciphertext
    # of a purged image is left either).
    assert b"\xff\xd8\xff" not in raw


# --- secrets -------------------------------------------------------------------------------------


@pytest.mark.slow
def test_secrets_never_reach_logs_reports_or_json(tmp_path: Path, small_bundle: Path) -> None:
    config = tmp_path / "site.toml"
    config.write_text(f"""
name = "vault"
data_dir = "data"

[watchlist]
bundle = "{small_bundle}"

[web]
enabled = true
listen = "127.0.0.1:0"
token = "tok-zq81x"
demo_token = true

[[cameras]]
name = "door"
url = "rtsp://user:pw-zq82y@127.0.0.1:1/x"
open_timeout_s = 1.0
reconnect_initial_s = 0.2
reconnect_max_s = 0.4

[[cameras]]
name = "stage"
url = "{CLIP}"
fps_cap = 2

[[notifiers]]
kind = "jsonl"
""")
    env = {**os.environ, "COLUMNS": "200"}
    err_file, out_file = tmp_path / "stderr", tmp_path / "stdout"
    with err_file.open("wb") as err, out_file.open("wb") as out:
        process = subprocess.Popen(
            [str(LFR), "-v", "run", str(config), "--once", "--json"],
            cwd=tmp_path,
            env=env,
            stdout=out,
            stderr=err,
        )
        try:
            deadline = time.monotonic() + 120
            while err_file.read_bytes().count(b"reconnecting in") < 3 or b"lfr web: " not in (
                err_file.read_bytes()
            ):
                assert process.poll() is None, err_file.read_text()
                assert time.monotonic() < deadline, "no reconnect logged"
                time.sleep(0.1)
            # Every socket it listens on is on localhost, and the web one wants the token.
            listening = listening_sockets(process.pid)
            assert listening and all(host == "127.0.0.1" for host, _ in listening), listening
            match = re.search(rb"lfr web: http://127\.0\.0\.1:(\d+)/", err_file.read_bytes())
            assert match is not None
            port = int(match[1])
            assert {p for _, p in listening} == {port}, listening
            # The page itself holds no data (it logs in); everything with data wants the token.
            for path in ("/api/state", "/api/alerts", "/api/events"):
                assert http_status(port, path) == 401, path
                assert http_status(port, path, {"Authorization": "Bearer wrong"}) == 401, path
            assert http_status(port, "/api/state", {"Authorization": "Bearer tok-zq81x"}) == 200
            # a token in the URL would land in logs and histories: refused outright
            assert http_status(port, "/api/state?token=tok-zq81x") == 400
            process.send_signal(2)  # SIGINT: the live camera never ends by itself
            assert process.wait(60) == 0, err_file.read_text()[-2000:]
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)
    stderr = err_file.read_bytes()
    assert b"rtsp://***@127.0.0.1:1/x" in stderr  # the camera is named, its password not
    summary = json.loads(out_file.read_bytes())["summary"]
    assert summary["cameras"]["door"]["url"] == "rtsp://***@127.0.0.1:1/x"
    report = subprocess.run(
        [str(LFR), "report", "--data-dir", str(tmp_path / "data"), "--json"],
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert report.returncode == 0
    verify_out = subprocess.run(
        [str(LFR), "audit", "verify", "--config", str(config), "--json"],
        capture_output=True,
        timeout=60,
        env=env,
    )
    assert verify_out.returncode == 0
    config_record = next(r for r in audit_records(tmp_path / "data") if r.kind == "config")
    assert config_record.data["web"]["token"] == "***"
    texts = {
        "stdout": out_file.read_bytes(),
        "stderr": stderr,
        "report": report.stdout,
        "report stderr": report.stderr,
        "verify": verify_out.stdout,
        **{p.name: p.read_bytes() for p in (tmp_path / "data").rglob("*") if p.is_file()},
    }
    for label, data in texts.items():
        assert b"zq81x" not in data and b"zq82y" not in data, label


def listening_sockets(pid: int) -> list[tuple[str, int]]:
    """(address, port) of the TCP sockets process `pid` listens on (from /proc)."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        with contextlib.suppress(OSError):
            target = os.readlink(fd)
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table, width in (("tcp", 8), ("tcp6", 32)):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, state, inode = fields[1], fields[3], fields[9]
            if state == "0A" and inode in inodes:  # LISTEN
                address, port = local.split(":")
                raw = bytes.fromhex(address)
                host = (
                    ".".join(str(b) for b in raw[::-1])
                    if width == 8
                    else ":".join(raw.hex()[i : i + 4] for i in range(0, 32, 4))
                )
                found.append((host, int(port, 16)))
    return found


def http_status(port: int, path: str, headers: dict[str, str] | None = None) -> int:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return exc.code
