"""Alert pictures through the deployment's bus (lfr.cluster.pictures), against a real
nats-server: a node publishes an alert's camera crop and watchlist picture, and a sighting's
crop, sealed as its outbox keeps them; a reader of the stream without the key sees no JPEG and
another key fails naming both; the web console, for a logged-in user only, returns the exact
JPEG bytes the node's outbox holds; a console without the key says the pictures are sealed and
works otherwise."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import cv2
import msgspec
import numpy as np
import pytest
from rich.console import Console

from lfr.cluster.bus import Bus, Names, connect
from lfr.cluster.console import ConsoleModel, follow
from lfr.cluster.credentials import console_data_key, generate, permissions
from lfr.cluster.pictures import (
    SEALED_NO_KEY,
    PictureReader,
    PicturesSealed,
    PictureUnavailable,
)
from lfr.cluster.publisher import Publisher
from lfr.cluster.sightings import OpenAlerts
from lfr.config import WebConfig
from lfr.dashboard.cluster import ConsoleDashboard, render_console
from lfr.messages import Alert
from lfr.notify.outbox import IMAGE_FIELDS, Outbox, image_context
from lfr.sealed import DataKey, WrongKeyError
from lfr.users import Principal
from lfr.web.deployment import ConsoleWeb
from tests.natsserver import NatsServer, serve

pytestmark = pytest.mark.anyio

JPEG_MAGIC = b"\xff\xd8\xff"
RETENTION_DAYS = 3.0


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    yield from serve(tmp_path)


@pytest.fixture
def users(tmp_path: Path) -> Any:
    from web_users import make_users

    return make_users(tmp_path / "users.json")


def jpeg(value: int) -> bytes:
    image = np.full((48, 40, 3), value, np.uint8)
    image[::4] = 255 - value  # stripes: not a flat block the encoder could shrink to nothing
    ok, data = cv2.imencode(".jpg", image)
    assert ok
    return bytes(data.tobytes())


def make_alert(alert_id: str, camera: str, wall_time: float, crop: int) -> Alert:
    return Alert(id=alert_id, camera=camera,
                 time=f"2026-01-01T00:00:{int(wall_time):02d}.000+00:00",
                 wall_time=wall_time, person_id="p1", name="P One", score=0.9, threshold=0.5,
                 box=(1, 2, 3, 4), frame_index=1, latency_s=0.1, crop_jpeg=jpeg(crop),
                 watchlist_jpeg=jpeg(200))


async def until(model: ConsoleModel, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    with anyio.fail_after(20):
        while not check(view := model.view()):
            await model.changed(1.0)
    return view


async def raw_messages(bus: Bus, stream: str, subjects: str) -> list[bytes]:
    """Every message of ``subjects`` in ``stream``, as any reader of the stream gets it."""
    from nats.js.api import DeliverPolicy

    info = await bus.js.stream_info(stream, subjects_filter=subjects)
    total = sum((info.state.subjects or {}).values())
    sub = await bus.js.subscribe(subjects, ordered_consumer=True,
                                 deliver_policy=DeliverPolicy.ALL)
    try:
        return [(await sub.next_msg(timeout=5)).data for _ in range(total)]
    finally:
        await sub.unsubscribe()


async def test_pictures_cross_sealed_and_the_logged_in_console_shows_the_outbox_bytes(
        nats_server: NatsServer, tmp_path: Path, users: Any) -> None:
    from web_users import client, login

    key = DataKey.generate("the deployment's key")
    nc = await connect(nats_server.url, "nodes")
    bus = await Bus(nc, Names("dep1")).open(pictures_max_age_s=RETENTION_DAYS * 86400)
    assert bus.open_alerts is not None
    outboxes = {n: Outbox(tmp_path / n, key) for n in ("node1", "node2")}
    publishers = {n: Publisher(bus, n, outboxes[n], tmp_path / n,
                               open_alerts=OpenAlerts(bus.open_alerts, n, 60.0),
                               audit_sighting=lambda record: True) for n in outboxes}
    # node1 raises a1; node2 sees the same person 2 s later: a sighting of a1.
    outboxes["node1"].add_alert(make_alert("a1", "door", 10.0, crop=60), ["console"])
    assert await publishers["node1"].flush()
    outboxes["node2"].add_alert(make_alert("a2", "hall", 12.0, crop=120), ["console"])
    assert await publishers["node2"].flush()
    assert outboxes["node2"].merged_into("a2") == "a1"
    held = outboxes["node1"].get_alert("a1")
    sighted = outboxes["node2"].get_alert("a2")
    assert held is not None and sighted is not None
    assert held.crop_jpeg.startswith(JPEG_MAGIC)

    # The pictures stream ages them out with the retention, one message per picture.
    info = await bus.js.stream_info(bus.names.pictures_stream)
    assert info.config.max_age == pytest.approx(RETENTION_DAYS * 86400)
    assert info.config.max_msgs_per_subject == 1
    # Only the alert's two pictures and the sighting's crop crossed; a reader without the key
    # finds no JPEG in either stream, and another key fails, naming both keys.
    pictures = await raw_messages(bus, bus.names.pictures_stream, bus.names.pictures)
    records = await raw_messages(bus, bus.names.stream, bus.names.subjects)
    assert len(pictures) == 3 and records
    assert not any(JPEG_MAGIC in m for m in pictures + records)
    other = DataKey.generate("another deployment's key")
    with pytest.raises(WrongKeyError, match=f"encrypted with key {key.fingerprint}; this key is "
                       f"{other.fingerprint}"):
        other.open(pictures[0], image_context("a1", "crop_jpeg"), "a1's crop")
    with pytest.raises(PictureUnavailable, match="encrypted with key"):
        await PictureReader(other).get(bus, "node1", "a1", "crop_jpeg")

    console_nc = await connect(nats_server.url, "console")
    console_bus = await Bus(console_nc, Names("dep1")).bind()
    assert console_bus.has_pictures
    reader = PictureReader(key)
    model = ConsoleModel("dep1")

    async def picture(node: str, item_id: str, field: str) -> bytes:
        return await reader.get(console_bus, node, item_id, field)

    async def never(*args: Any) -> dict[str, Any]:
        raise AssertionError("no decision asked")

    web = ConsoleWeb(WebConfig(listen="127.0.0.1:0"), users=users)
    async with anyio.create_task_group() as tg, client() as http, client() as stranger:
        tg.start_soon(follow, console_bus, model)
        view = await until(model, lambda v: bool(v["alerts"] and v["alerts"][0]["sightings"]))
        [alert] = view["alerts"]
        assert alert["pictures"] == list(IMAGE_FIELDS)
        assert [(s["id"], s["pictures"]) for s in alert["sightings"]] == [("a2", ["crop_jpeg"])]
        tg.start_soon(web.run, model, never, None, picture, reader.status)
        with anyio.fail_after(20):
            url = await web.wait_ready()
        crop = url + "api/alerts/a1/crop.jpg"
        async with stranger.get(crop) as r:
            assert r.status == 401 and JPEG_MAGIC not in await r.read()
        assert (await login(http, url, "olive")).status == 200
        async with http.get(url + "api/state") as r:
            assert (await r.json())["pictures"] == "available"
        for path, expected in (("a1/crop.jpg", held.crop_jpeg),
                               ("a1/watchlist.jpg", held.watchlist_jpeg),
                               ("a2/crop.jpg", sighted.crop_jpeg)):
            async with http.get(url + "api/alerts/" + path) as r:
                assert r.status == 200, path
                assert r.content_type == "image/jpeg"
                assert await r.read() == expected, path
        async with http.get(url + "api/alerts/a2/watchlist.jpg") as r:
            assert r.status == 404  # a sighting publishes its crop only
        async with http.get(url + "api/alerts/nope/crop.jpg") as r:
            assert r.status == 404
        async with stranger.get(crop) as r:  # still not for someone not logged in
            assert r.status == 401
        tg.cancel_scope.cancel()

    # A console without the key: the pictures stay sealed, the rest works.
    sealed = ConsoleWeb(WebConfig(listen="127.0.0.1:0"), users=users)
    async with anyio.create_task_group() as tg, client() as http:
        tg.start_soon(sealed.run, model, never, None, None, SEALED_NO_KEY)
        with anyio.fail_after(20):
            url = await sealed.wait_ready()
        assert (await login(http, url, "olive")).status == 200
        async with http.get(url + "api/state") as r:
            state = await r.json()
        assert state["pictures"] == "pictures sealed (no data key)"
        assert state["alerts"][0]["id"] == "a1"
        async with http.get(url + "api/alerts/a1/crop.jpg") as r:
            assert r.status == 503 and "no data key" in (await r.json())["error"]
        tg.cancel_scope.cancel()
    with pytest.raises(PicturesSealed):
        await PictureReader(None).get(console_bus, "node1", "a1", "crop_jpeg")
    for outbox in outboxes.values():
        outbox.close()
    await console_nc.close()
    await nc.close()


def test_the_terminal_console_says_whether_pictures_open() -> None:
    model = ConsoleModel("dep1")
    model.on_record("alert", msgspec.json.encode(
        {"id": "a1", "person_id": "p1", "name": "P One", "score": 0.9, "camera": "door",
         "node": "node1", "time": "2026-01-01T00:00:10.000+00:00",
         "pictures": ["crop_jpeg", "watchlist_jpeg"]}))
    olive = Principal("olive", "operator")
    for status, shown in (("available", "pictures available"),
                          (SEALED_NO_KEY, "pictures sealed (no data key)")):
        console = Console(width=140, height=30, record=True, color_system=None,
                          force_terminal=False)
        dashboard = ConsoleDashboard(olive, None, pictures=status)  # type: ignore[arg-type]
        console.print(render_console(dashboard.view(model), 140, 30))
        assert shown in console.export_text()
    assert model.picture_source("a1") == ("node1", ("crop_jpeg", "watchlist_jpeg"))


def test_only_a_node_publishes_its_own_pictures() -> None:
    names = Names("dep1")
    node1 = permissions(names, "node", "node1")
    console = permissions(names, "console", "ops")
    assert "lfrpic.dep1.node1.>" in node1["publish"]["allow"]
    assert not any(s.startswith("lfrpic.dep1.node2") or s == "lfrpic.dep1.>"
                   for s in node1["publish"]["allow"])
    assert "lfrpic.dep1.>" in console["publish"]["deny"]
    assert not any(s.startswith("lfrpic.") for s in console["publish"]["allow"])


def test_the_console_finds_the_provisioned_key_and_refuses_another(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lfr.keys import write_data_key

    monkeypatch.setenv("LFR_KEY_DIR", str(tmp_path / "keys"))  # the user has no key of their own
    key = DataKey.generate("deployment")
    written, key_file = generate("dep1", ["node1"], ["ops"], "127.0.0.1:4222",
                                 tmp_path / "store", tmp_path / "server.conf",
                                 tmp_path / "creds", data_key=key)
    console_creds = tmp_path / "creds" / "ops.json"
    assert console_creds in written
    found, reason = console_data_key(None, console_creds, key.fingerprint)
    assert found is not None and found.fingerprint == key.fingerprint and reason == ""
    # A config's [keys] data_key wins; another key than the deployment's is refused.
    other = DataKey.generate("other")
    write_data_key(tmp_path / "other.key", other)
    refused, reason = console_data_key(tmp_path / "other.key", console_creds, key.fingerprint)
    assert refused is None
    assert other.fingerprint in reason and key.fingerprint in reason
    key_file.unlink()
    missing, reason = console_data_key(None, console_creds, key.fingerprint)
    assert missing is None and reason.startswith(SEALED_NO_KEY) and str(key_file) in reason
    assert console_data_key(None, None) == (None, SEALED_NO_KEY)


async def test_pictures_leave_the_stream_after_the_retention_and_oversized_ones_never_cross(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """The pictures stream's max_age is the retention (here 2 s): a picture older than that is
    gone from the bus while the alert's record stays; an image too large for a message is not
    published (and not listed), never cut or sent another way."""
    import os

    from lfr.cluster.pictures import publish_pictures, size_limit
    from lfr.cluster.status import read_alerts

    key = DataKey.generate("the deployment's key")
    nc = await connect(nats_server.url, "node1")
    bus = await Bus(nc, Names("dep1")).open(pictures_max_age_s=2.0)
    with Outbox(tmp_path / "node1", key) as outbox:
        outbox.add_alert(make_alert("a1", "door", 10.0, crop=60), ["console"])
        assert await Publisher(bus, "node1", outbox, tmp_path / "node1").flush()
        huge = make_alert("a2", "door", 11.0, crop=90)
        huge = msgspec.structs.replace(huge, crop_jpeg=JPEG_MAGIC + os.urandom(
            size_limit(nc.max_payload)))
        outbox.add_alert(huge, ["console"])
        [stored] = [a for a in outbox.unpublished_alerts() if a.id == "a2"]  # sealed
        assert await publish_pictures(bus, "node1", stored, ("crop_jpeg", "watchlist_jpeg")
                                      ) == ["watchlist_jpeg"]
    reader = PictureReader(key)
    assert (await reader.get(bus, "node1", "a1", "crop_jpeg")).startswith(JPEG_MAGIC)
    with anyio.fail_after(30):
        while True:
            try:
                await reader.get(bus, "node1", "a1", "crop_jpeg")
            except PictureUnavailable as exc:
                assert "privacy.alert_retention_days" in str(exc)
                break
            await anyio.sleep(0.5)
    assert [a["id"] for a in (await read_alerts(bus))["alerts"]] == ["a1"]  # the facts stay
    await nc.close()


def test_lfr_console_opens_the_pictures_with_the_provisioned_key(
        tmp_path: Path, users: Any) -> None:
    """The command end to end on a locked bus: ``lfr console --web`` with the console's
    credentials finds the data key lfr nats-config wrote beside them and serves the outbox's
    exact bytes to a logged-in user; the same console provisioned without the key says the
    pictures are sealed and still lists the alert. Its logins go to its own audit log."""
    import asyncio
    import shutil
    import signal
    import subprocess
    import sys

    from lfr.audit import audit_records
    from lfr.cli import main
    from lfr.cluster.credentials import load_credentials
    from lfr.keys import load_data_key
    from tests.natsserver import free_port

    port = free_port()
    conf, creds = tmp_path / "server.conf", tmp_path / "creds"
    assert main(["nats-config", "dep1", "--node", "node1", "--console", "ops", "--listen",
                 f"127.0.0.1:{port}", "--store", str(tmp_path / "store"), "-o", str(conf),
                 "--credentials-dir", str(creds), "--json"]) == 0
    key = load_data_key(creds / "data.key")
    bare = tmp_path / "bare"  # the console's credentials without the data key
    bare.mkdir(mode=0o700)
    shutil.copy2(creds / "ops.json", bare / "ops.json")
    server = NatsServer(tmp_path / "store", port=port, config=conf)
    server.start()

    async def node_publishes() -> bytes:
        nc = await connect(server.url, "node1",
                           credentials=load_credentials(creds / "node1.json"))
        bus = await Bus(nc, Names("dep1")).open(pictures_max_age_s=86400.0)
        with Outbox(tmp_path / "node1", key) as outbox:
            outbox.add_alert(make_alert("a1", "door", 10.0, crop=60), ["console"])
            assert await Publisher(bus, "node1", outbox, tmp_path / "node1").flush()
            held = outbox.get_alert("a1")
        await nc.close()
        assert held is not None
        return held.crop_jpeg

    async def browse(url: str) -> tuple[dict[str, Any], int, bytes]:
        from web_users import client, login

        async with client() as http:
            with anyio.fail_after(60):
                while True:
                    try:
                        if (await login(http, url, "olive")).status == 200:
                            break
                    except OSError:
                        pass  # not listening yet
                    await anyio.sleep(0.3)
                while True:
                    async with http.get(url + "api/state") as r:
                        state = await r.json()
                    if state["alerts"]:
                        break
                    await anyio.sleep(0.3)
            async with http.get(url + "api/alerts/a1/crop.jpg") as r:
                return state, r.status, await r.read()

    def console(credentials: Path, data_dir: Path) -> tuple[dict[str, Any], int, bytes, str]:
        web = free_port()
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("lfr")), "console", "--nats", server.url,
             "--deployment", "dep1", "--credentials", str(credentials), "--web",
             f"127.0.0.1:{web}", "--users-file", str(users.path), "--data-dir", str(data_dir)],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            state, status, body = asyncio.run(browse(f"http://127.0.0.1:{web}/"))
        finally:
            process.send_signal(signal.SIGINT)
            _, err = process.communicate(timeout=30)
        assert process.returncode == 0, err.decode()[-2000:]
        return state, status, body, err.decode()

    try:
        crop = asyncio.run(node_publishes())
        state, status, body, _ = console(creds / "ops.json", tmp_path / "ops")
        assert state["pictures"] == "available"
        assert (status, body) == (200, crop)
        state, status, body, err = console(bare / "ops.json", tmp_path / "ops-bare")
        assert state["pictures"].startswith("pictures sealed (no data key)")
        assert [a["id"] for a in state["alerts"]] == ["a1"]
        assert status == 503 and JPEG_MAGIC not in body
        assert "pictures sealed (no data key)" in err
    finally:
        server.stop()
    logins = [r.data for r in audit_records(tmp_path / "ops") if r.kind == "console_login"]
    assert [(r["user"], r["ok"], r["via"], r["console"]) for r in logins] == [
        ("olive", True, "web", "ops")]
