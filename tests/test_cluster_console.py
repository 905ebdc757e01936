"""The operator's console over a deployment spread over nodes (``lfr console``), against a real
nats-server: the model follows the buckets and the stream, one rendered frame shows nodes,
cameras, an alert with its further sighting, and a decision made in the console reaches the node
that raised the alert (its decision handler records it; its publisher puts it on the stream)."""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import anyio
import msgspec
import pytest
from rich.console import Console

from lfr.audit import AuditLog
from lfr.cluster.bus import Bus, Names, connect
from lfr.cluster.console import ConsoleModel, NodeAway, follow, request_decision
from lfr.cluster.leases import Heartbeat, Lease
from lfr.cluster.node import Node
from lfr.cluster.publisher import Publisher
from lfr.dashboard.cluster import ConsoleDashboard, render_console
from lfr.decisions import DecisionLog
from lfr.messages import Alert
from lfr.notify.outbox import Outbox
from lfr.users import Principal
from lfr.web.deployment import ConsoleWeb
from tests.natsserver import NatsServer, serve

pytestmark = pytest.mark.anyio

OLIVE = Principal("olive", "operator")


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    yield from serve(tmp_path)


def make_alert(alert_id: str, camera: str, wall_time: float) -> Alert:
    return Alert(id=alert_id, camera=camera,
                 time=f"2026-01-01T00:00:{int(wall_time):02d}.000+00:00",
                 wall_time=wall_time, person_id="p1", name="P One", score=0.9, threshold=0.5,
                 box=(1, 2, 3, 4), frame_index=1, latency_s=0.1, crop_jpeg=b"face-pixels")


async def until(model: ConsoleModel, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    """The model's view once ``check`` holds (woken by the model's updates, never polled)."""
    with anyio.fail_after(20):
        while not check(view := model.view()):
            await model.changed(1.0)
    return view


def frame_text(view: Any, width: int = 140, height: int = 30) -> str:
    console = Console(width=width, height=height, record=True, color_system=None,
                      force_terminal=False)
    console.print(render_console(view, width, height))
    return console.export_text()


async def beat(bus: Bus, node: str, cameras: list[str]) -> None:
    assert bus.nodes is not None and bus.cameras is not None
    await bus.nodes.put(node, msgspec.json.encode(Heartbeat(
        node=node, time=time.time(), cameras=cameras, capacity=None, heartbeat_s=5.0)))
    for camera in cameras:
        await bus.cameras.put(camera, msgspec.json.encode(Lease(node=node, time=time.time())))


async def test_the_console_follows_the_deployment_and_decides_through_the_raising_node(
        nats_server: NatsServer, tmp_path: Path) -> None:
    nc = await connect(nats_server.url, "node-side")
    bus = await Bus(nc, Names("dep1")).open()
    await beat(bus, "node1", ["door"])
    await beat(bus, "node2", ["hall"])
    # node1 raises an alert; node2 saw the same person later: a further sighting of it.
    data_dir = tmp_path / "node1"
    outbox, audit = Outbox(data_dir), AuditLog(data_dir)
    outbox.add_alert(make_alert("a1", "door", 10.0), ["console"])
    publisher = Publisher(bus, "node1", outbox, data_dir)
    assert await publisher.flush()
    await bus.publish(bus.names.subject("sighting", "node2"), msgspec.json.encode(
        {"id": "s1", "alert_id": "a1", "person_id": "p1", "score": 0.8, "camera": "hall",
         "node": "node2", "time": "2026-01-01T00:00:12.000+00:00", "wall_time": 12.0}), "s1")

    # node1 answers decisions with the node's own handler, over a deployment holding a1.
    decisions = DecisionLog(outbox, audit)
    raising = SimpleNamespace(name="node1", _deployment=SimpleNamespace(
        view=SimpleNamespace(adjudicate=decisions.record)))

    async def node_decides(msg: Any) -> None:
        await Node._decide(raising, msg)  # type: ignore[arg-type]

    handler = await nc.subscribe(bus.names.decide("node1"), cb=node_decides)

    console_nc = await connect(nats_server.url, "console")
    console_bus = await Bus(console_nc, Names("dep1")).bind()
    model = ConsoleModel("dep1")
    async with anyio.create_task_group() as tg:
        tg.start_soon(follow, console_bus, model)
        view = await until(model, lambda v: len(v["nodes"]) == len(v["cameras"]) == 2
                           and v["alerts"] and v["alerts"][0]["sightings"])
        assert [(n["name"], n["alive"], n["cameras"]) for n in view["nodes"]] == [
            ("node1", True, ["door"]), ("node2", True, ["hall"])]
        assert {(c["name"], c["node"], c["state"]) for c in view["cameras"]} == {
            ("door", "node1", "running"), ("hall", "node2", "running")}
        [alert] = view["alerts"]
        assert (alert["id"], alert["node"], alert["camera"], alert["decision"]) == (
            "a1", "node1", "door", None)
        assert [(s["node"], s["camera"]) for s in alert["sightings"]] == [("node2", "hall")]

        async def decide(node: str, alert_id: str, decision: str, by: Principal,
                         note: str) -> dict[str, Any]:
            return await request_decision(console_nc, console_bus.names, node, alert_id,
                                          decision, by, note)

        dashboard = ConsoleDashboard(OLIVE, decide, console=Console(file=None, width=140))
        text = frame_text(dashboard.view(model))
        for shown in ("dep1", "node1", "node2", "door", "hall", "running", "P One (p1)",
                      "0.900", "pending", "node2/hall 00:00:12", "Nodes (2 alive of 2)",
                      "operator olive"):
            assert shown in text, shown
        assert "face-pixels" not in text

        # The operator presses f on the selected alert: node1 records it (outbox, audit) ...
        await dashboard.handle_key("f", model)
        assert dashboard.status == "false alert: a1 by olive, recorded on node1"
        assert [a.decision for a in outbox.adjudications("a1")] == ["false_alert"]
        # ... and publishes it; the console sees it come back on the stream.
        assert await publisher.flush()
        view = await until(model, lambda v: v["alerts"][0]["decision"] == "false_alert")
        assert view["alerts"][0]["decided_by"] == "olive"
        assert "false alert by olive" in frame_text(dashboard.view(model))

        # A node that is gone: the operator is told, nothing is recorded.
        await handler.unsubscribe()
        with pytest.raises(NodeAway, match="node1"):
            await request_decision(console_nc, console_bus.names, "node1", "a1",
                                   "confirmed", OLIVE, timeout_s=2)
        tg.cancel_scope.cancel()
    audit.close()
    outbox.close()
    await console_nc.close()
    await nc.close()


def test_an_auditor_has_no_console_dashboard() -> None:
    async def never(*args: Any) -> dict[str, Any]:
        raise AssertionError("not asked")

    with pytest.raises(ValueError, match="auditor"):
        ConsoleDashboard(Principal("audrey", "auditor"), never)


def test_a_small_screen_keeps_the_counters() -> None:
    model = ConsoleModel("dep1")
    text = frame_text(ConsoleDashboard(OLIVE, None).view(model),  # type: ignore[arg-type]
                      width=40, height=6)
    assert "nodes alive 0" in text and "alerts 0" in text


@pytest.fixture
def users(tmp_path: Path) -> Any:
    from web_users import make_users

    return make_users(tmp_path / "users.json")


def followed_model() -> ConsoleModel:
    """A console's model as the bus would have fed it: two nodes, one alert with a sighting."""
    model = ConsoleModel("dep1")
    for node, camera in (("node1", "door"), ("node2", "hall")):
        model.on_entry("nodes", node, msgspec.json.encode(Heartbeat(
            node=node, time=time.time(), cameras=[camera], capacity=None, heartbeat_s=60.0)),
            deleted=False)
        model.on_entry("cameras", camera, msgspec.json.encode(Lease(node=node, time=0.0)),
                       deleted=False)
    model.on_record("alert", msgspec.json.encode(
        {"id": "a1", "person_id": "p1", "name": "P One", "score": 0.9, "camera": "door",
         "node": "node1", "time": "2026-01-01T00:00:10.000+00:00"}))
    model.on_record("sighting", msgspec.json.encode(
        {"id": "s1", "alert_id": "a1", "camera": "hall", "node": "node2",
         "time": "2026-01-01T00:00:12.000+00:00", "score": 0.8}))
    return model


async def test_the_console_web_page_logs_users_in_and_sends_decisions_to_the_raising_node(
        users: Any) -> None:
    from web_users import client, login

    from lfr.config import WebConfig

    model = followed_model()
    asked: list[tuple[str, str, str, Principal, str]] = []

    async def decide(node: str, alert_id: str, decision: str, by: Principal,
                     note: str) -> dict[str, Any]:
        asked.append((node, alert_id, decision, by, note))
        # What the node answers, then publishes: the console sees it on the stream.
        model.on_record("decision", msgspec.json.encode(
            {"alert_id": alert_id, "decision": decision, "operator": by.name, "node": node}))
        return {"ok": True, "node": node,
                "decision": {"alert_id": alert_id, "decision": decision, "operator": by.name}}

    web = ConsoleWeb(WebConfig(listen="127.0.0.1:0"), users=users)
    async with anyio.create_task_group() as tg, client() as http:
        tg.start_soon(web.run, model, decide)
        with anyio.fail_after(20):
            url = await web.wait_ready()
        for method, path in (("GET", "api/state"), ("GET", "api/events"),
                             ("POST", "api/alerts/a1/decision")):
            async with http.request(method, url + path, json={}) as r:
                assert r.status == 401, (method, path)
        async with http.get(url, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "login"

        assert (await login(http, url, "audrey")).status == 200
        async with http.post(url + "api/alerts/a1/decision",
                             json={"decision": "confirmed"}) as r:
            assert r.status == 403
        assert (await login(http, url, "olive")).status == 200
        async with http.get(url) as r:
            assert r.status == 200 and "static/console.js" in await r.text()
        async with http.get(url + "api/state") as r:
            state = await r.json()
        assert state["user"]["name"] == "olive"
        assert [(n["name"], n["alive"]) for n in state["nodes"]] == [
            ("node1", True), ("node2", True)]
        assert {(c["name"], c["node"]) for c in state["cameras"]} == {
            ("door", "node1"), ("hall", "node2")}
        [alert] = state["alerts"]
        assert alert["id"] == "a1" and alert["decision"] is None
        assert [s["camera"] for s in alert["sightings"]] == ["hall"]

        # The events stream opens with the same state.
        async with http.get(url + "api/events") as r:
            with anyio.fail_after(10):
                while b"event: state" not in await r.content.readline():
                    pass
                data = await r.content.readline()
        assert msgspec.json.decode(data.removeprefix(b"data: "))["alerts"][0]["id"] == "a1"

        async with http.post(url + "api/alerts/nope/decision",
                             json={"decision": "confirmed"}) as r:
            assert r.status == 404
        # Any "operator" in the body is ignored: the decision is the session's user's.
        async with http.post(url + "api/alerts/a1/decision",
                             json={"decision": "false_alert", "operator": "mallory"}) as r:
            assert r.status == 200
            assert (await r.json())["node"] == "node1"
        assert asked == [("node1", "a1", "false_alert", Principal("olive", "operator"), "")]
        async with http.get(url + "api/state") as r:
            decided = (await r.json())["alerts"][0]
        assert (decided["decision"], decided["decided_by"]) == ("false_alert", "olive")
        tg.cancel_scope.cancel()


async def test_a_camera_plays_from_the_node_that_runs_it(nats_server: NatsServer,
                                                         users: Any) -> None:
    """The browser's offer goes to the console, over NATS to node1 (which runs ``door``), and
    node1's answer back; the video then comes straight from node1's peer connection."""
    import numpy as np
    from aiortc import RTCPeerConnection, RTCSessionDescription
    from web_users import client, login

    from lfr.cluster.viewer import NodeViewers, request_viewer
    from lfr.config import WebConfig, parse_config
    from lfr.messages import Frame, FrameFaces
    from lfr.pipeline.matcher import FrameReport
    from lfr.web import ice_host_addresses

    names = Names("dep1")
    node_nc = await connect(nats_server.url, "node1")
    viewers = NodeViewers(parse_config({"name": "dep1", "web": {
        "ice_addresses": ["127.0.0.1"]}}))
    # node1's running deployment, as its frames reach the viewers (lfr.web.server's feed).
    viewers.web.attach(SimpleNamespace(  # type: ignore[arg-type]
        blur_non_matches=True, cameras=["door"], person_name=lambda p: p))
    await node_nc.subscribe(names.viewer("node1"), cb=viewers.answer)
    console_nc = await connect(nats_server.url, "console")

    async def signal(node: str, request: dict[str, Any]) -> dict[str, Any]:
        return await request_viewer(console_nc, names, node, request, timeout_s=5)

    async def frames() -> None:
        for index in range(10_000):
            image = np.full((72, 128, 3), index % 256, np.uint8)
            item = FrameFaces(Frame("door", index, time.time(), time.monotonic(), image), ())
            viewers.web.on_frame(FrameReport(item, [], [], time.monotonic()))
            await anyio.sleep(0.05)

    async def offer(http: Any, url: str, camera: str) -> tuple[Any, int, dict[str, Any]]:
        pc = RTCPeerConnection()
        pc.addTransceiver("video", direction="recvonly")
        with ice_host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        async with http.post(url + "offer", json={"sdp": pc.localDescription.sdp,
                                                  "type": "offer", "camera": camera}) as r:
            return pc, r.status, await r.json()

    web = ConsoleWeb(WebConfig(listen="127.0.0.1:0"), users=users)
    got_track = anyio.Event()
    tracks: list[Any] = []

    def on_track(track: Any) -> None:
        tracks.append(track)
        got_track.set()

    async with anyio.create_task_group() as tg, client() as http:
        tg.start_soon(frames)
        tg.start_soon(web.run, followed_model(), None, signal)
        with anyio.fail_after(20):
            url = await web.wait_ready()
        assert (await login(http, url, "audrey")).status == 200
        pc, status, body = await offer(http, url, "door")
        assert status == 403 and "auditor" in body["error"]
        await pc.close()

        assert (await login(http, url, "olive")).status == 200
        pc, status, answer = await offer(http, url, "door")
        assert status == 200, answer
        assert answer["node"] == "node1"
        assert [line.split()[4] for line in answer["sdp"].splitlines()
                if line.startswith("a=candidate:") and " typ host" in line] == ["127.0.0.1"]
        pc.on("track", on_track)
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        with anyio.fail_after(30):
            await got_track.wait()
            frame = await tracks[0].recv()
        assert (frame.width, frame.height) == (128, 72)
        (viewer,) = viewers.web.statistics().viewers
        assert viewer.id == answer["viewer"] and viewer.camera == "door"

        # hall runs on node2, which does not answer; nowhere is no camera at all.
        other, status, body = await offer(http, url, "hall")
        assert status == 503 and "node2" in body["error"]
        await other.close()
        other, status, body = await offer(http, url, "nowhere")
        assert status == 404
        await other.close()

        async with http.post(url + f"api/viewers/{answer['viewer']}/close", json={}) as r:
            assert (await r.json())["closed"] is True
        assert not viewers.web._peers
        await pc.close()
        tg.cancel_scope.cancel()
    await console_nc.close()
    await node_nc.close()


async def test_on_a_locked_bus_the_console_follows_and_asks_but_cannot_publish(
        tmp_path: Path) -> None:
    """With lfr nats-config's users: the console's consumers and watchers work, it may carry a
    viewer request to a node (which alone hears its own subject), and it still cannot put a
    record on the stream."""
    from lfr.cli import main
    from lfr.cluster.credentials import load_credentials
    from lfr.cluster.viewer import request_viewer
    from tests.natsserver import free_port

    port = free_port()
    conf, creds = tmp_path / "server.conf", tmp_path / "creds"
    assert main(["nats-config", "dep1", "--node", "node1", "--node", "node2", "--console",
                 "ops", "--listen", f"127.0.0.1:{port}", "--store", str(tmp_path / "store"),
                 "-o", str(conf), "--credentials-dir", str(creds), "--json"]) == 0
    server = NatsServer(tmp_path / "store", port=port, config=conf)
    server.start()
    try:
        names = Names("dep1")
        node_nc = await connect(server.url, "node1",
                                credentials=load_credentials(creds / "node1.json"))
        bus = await Bus(node_nc, names).open()
        await beat(bus, "node1", ["door"])
        assert not await bus.publish(names.subject("alert", "node1"), msgspec.json.encode(
            {"id": "a1", "person_id": "p1", "name": "P One", "score": 0.9, "camera": "door",
             "node": "node1", "time": "2026-01-01T00:00:10.000+00:00"}), "a1")

        async def answer(msg: Any) -> None:
            await msg.respond(msgspec.json.encode({"status": 200, "heard": msg.subject}))

        await node_nc.subscribe(names.viewer("node1"), cb=answer)
        node2 = await connect(server.url, "node2",
                              credentials=load_credentials(creds / "node2.json"))
        eavesdropped: list[Any] = []

        async def eavesdrop(msg: Any) -> None:
            eavesdropped.append(msg)

        await node2.subscribe(names.viewer("node1"), cb=eavesdrop)

        console_nc = await connect(server.url, "ops",
                                   credentials=load_credentials(creds / "ops.json"))
        console_bus = await Bus(console_nc, names).bind()
        model = ConsoleModel("dep1")
        async with anyio.create_task_group() as tg:
            tg.start_soon(follow, console_bus, model)
            view = await until(model, lambda v: bool(v["alerts"] and v["cameras"]))
            assert view["alerts"][0]["id"] == "a1"
            assert view["cameras"] == [{"name": "door", "node": "node1", "state": "running"}]
            reply = await request_viewer(console_nc, names, "node1",
                                         {"op": "close", "by": "olive", "role": "operator"})
            assert reply == {"status": 200, "heard": names.viewer("node1")}
            with pytest.raises(Exception):  # noqa: B017  a console cannot forge a decision
                await console_bus.publish(names.subject("decision", "node1"), b"{}", "forged")
            tg.cancel_scope.cancel()
        assert eavesdropped == []  # node2 may not listen on node1's subject
        for nc in (console_nc, node2, node_nc):
            await nc.close()
    finally:
        server.stop()


def test_the_dashboard_says_when_the_bus_is_away() -> None:
    model = followed_model()
    dashboard = ConsoleDashboard(OLIVE, None)  # type: ignore[arg-type]
    assert "NATS DISCONNECTED" not in frame_text(dashboard.view(model))
    model.on_bus_state("disconnected")
    assert "NATS DISCONNECTED" in frame_text(dashboard.view(model))
    model.on_bus_state("reconnected")
    assert "NATS DISCONNECTED" not in frame_text(dashboard.view(model))


def test_records_fold_in_whatever_order_the_consumers_deliver_them() -> None:
    """Alerts, decisions and sightings come on three consumers: a decision or a sighting may
    arrive before its alert, a replayed alert twice; the view is the same as ``lfr alerts``'."""
    from lfr.cluster.status import fold_alerts

    alert = {"id": "a1", "person_id": "p1", "name": "P One", "score": 0.9, "camera": "door",
             "node": "node1", "time": "2026-01-01T00:00:10.000+00:00"}
    later = {**alert, "id": "a2", "time": "2026-01-01T00:00:20.000+00:00"}
    decision = {"alert_id": "a1", "decision": "confirmed", "operator": "olive"}
    sighting = {"id": "s1", "alert_id": "a1", "camera": "hall", "node": "node2",
                "time": "2026-01-01T00:00:12.000+00:00", "score": 0.8}
    model = ConsoleModel("dep1")
    for what, record in (("decision", decision), ("sighting", sighting), ("alert", later),
                         ("alert", alert), ("alert", alert), ("sighting", sighting),
                         ("alert", {"no": "id"})):
        model.on_record(what, msgspec.json.encode(record))
    model.on_record("alert", b"not json")
    view = model.view()
    assert [a["id"] for a in view["alerts"]] == ["a2", "a1"]  # newest capture first
    assert (view["stream_records"], view["duplicates"], model.errors) == (3, 1, 2)
    first = view["alerts"][1]
    assert (first["decision"], first["decided_by"]) == ("confirmed", "olive")
    assert [s["id"] for s in first["sightings"]] == ["s1"]
    assert model.raised_by("a1") == "node1" and model.raised_by("nope") is None
    folded = fold_alerts([later, alert, alert], [decision], [sighting, sighting])
    assert {a["id"]: (a["decision"], len(a["sightings"])) for a in folded["alerts"]} == {
        "a1": ("confirmed", 1), "a2": (None, 0)}
    assert (folded["duplicates"], folded["sighting_records"]) == (1, 2)


def test_the_console_command_names_what_is_wrong(nats_server: NatsServer, tmp_path: Path,
                                                 monkeypatch: pytest.MonkeyPatch,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    import lfr.cli.cluster
    from lfr.cli import main
    from tests.natsserver import free_port

    users = ["--users-file", str(tmp_path / "users.json"), "--data-dir", str(tmp_path / "ops")]
    assert main(["console", "--nats", nats_server.url, "--deployment", "dep1", *users]) == 2
    assert "--dashboard" in capsys.readouterr().err
    assert main(["console", "--nats", nats_server.url, "--deployment", "never", "--web",
                 "127.0.0.1:0", *users]) == 2
    assert "no deployment 'never'" in capsys.readouterr().err
    monkeypatch.setattr(lfr.cli.cluster, "FIRST_CONNECT_S", 1.0)
    nowhere = f"nats://127.0.0.1:{free_port()}"
    assert main(["console", "--nats", nowhere, "--deployment", "dep1", "--web",
                 "127.0.0.1:0", *users]) == 2
    assert f"NATS at {nowhere}: no server answered" in capsys.readouterr().err


async def test_the_console_audits_its_logins_and_the_decisions_it_asks(
        nats_server: NatsServer, tmp_path: Path, users: Any) -> None:
    """The console's own log (lfr.audit, under its data dir): web logins, refused ones too, and
    each decision asked of a node with who asked and the node's answer, a node away included."""
    from web_users import client, login

    from lfr.audit import audit_records, verify
    from lfr.cluster.console import ConsoleAudit
    from lfr.config import WebConfig

    names = Names("dep1")
    node_nc = await connect(nats_server.url, "node1")

    async def node_answers(msg: Any) -> None:
        asked = msgspec.json.decode(msg.data)
        await msg.respond(msgspec.json.encode({"ok": True, "node": "node1", "decision": {
            "alert_id": asked["alert_id"], "decision": asked["decision"],
            "operator": asked["by"]}}))

    await node_nc.subscribe(names.decide("node1"), cb=node_answers)
    console_nc = await connect(nats_server.url, "console")
    data_dir = tmp_path / "ops"
    with AuditLog(data_dir) as log:
        audit = ConsoleAudit(log, "ops")
        model = followed_model()

        async def decide(node: str, alert_id: str, decision: str, by: Principal,
                         note: str) -> dict[str, Any]:
            return await audit.decide(console_nc, names, node, alert_id, decision, by, note)

        web = ConsoleWeb(WebConfig(listen="127.0.0.1:0"), users=users)
        async with anyio.create_task_group() as tg, client() as http:
            tg.start_soon(web.run, model, decide, None, None, "pictures sealed (no data key)",
                          audit)
            with anyio.fail_after(20):
                url = await web.wait_ready()
            assert (await login(http, url, "olive", password="wrong")).status == 401
            assert (await login(http, url, "olive")).status == 200
            async with http.post(url + "api/alerts/a1/decision",
                                 json={"decision": "confirmed", "note": "seen"}) as r:
                assert r.status == 200
            tg.cancel_scope.cancel()
        with pytest.raises(NodeAway):  # node2 runs nothing: asked, not recorded, audited
            await audit.decide(console_nc, names, "node2", "a9", "no_action", OLIVE)
    records = [r for r in audit_records(data_dir) if r.kind != "seal"]
    assert [(r.kind, r.data["user"] if r.kind == "console_login" else r.data["requested_by"])
            for r in records] == [("console_login", "olive"), ("console_login", "olive"),
                                  ("decision_request", "olive"), ("decision_request", "olive")]
    refused, logged_in, asked, away = (r.data for r in records)
    assert (refused["ok"], refused["via"], logged_in["ok"], logged_in["role"]) == (
        False, "web", True, "operator")
    assert refused["refused"] and logged_in["console"] == "ops"
    assert (asked["alert_id"], asked["decision"], asked["node"], asked["note"],
            asked["outcome"]) == ("a1", "confirmed", "node1", "seen", "recorded")
    assert (away["node"], away["alert_id"]) == ("node2", "a9")
    assert away["outcome"].startswith("not recorded: node node2")
    assert verify(data_dir).ok
    await console_nc.close()
    await node_nc.close()


def test_a_refused_dashboard_login_is_in_the_consoles_audit_log(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, users: Any) -> None:
    """``lfr console --dashboard``: a wrong password and an auditor are refused before the
    console connects, and both attempts are in its own audit log (its --data-dir)."""
    import io

    from web_users import PASSWORDS

    from lfr.audit import audit_records
    from lfr.cli import main

    data_dir = tmp_path / "ops"
    base = ["console", "--nats", "nats://127.0.0.1:1", "--deployment", "dep1", "--dashboard",
            "--users-file", str(users.path), "--data-dir", str(data_dir), "--password-stdin"]
    for name, password in (("olive", "not-olives"), ("audrey", PASSWORDS["audrey"])):
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        assert main([*base, "--user", name]) == 2
    logins = [r.data for r in audit_records(data_dir) if r.kind == "console_login"]
    assert [(r["user"], r["role"], r["ok"], r["via"]) for r in logins] == [
        ("olive", None, False, "dashboard"), ("audrey", "auditor", False, "dashboard")]
    assert "auditor" in logins[1]["refused"] and logins[0]["refused"]
