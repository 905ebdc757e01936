"""One alert per person across the deployment (lfr.cluster.sightings), against a real
nats-server: the claim (won, lost, replayed, expired, closed by a decision, raced), a lost claim
published as a sighting of the open alert and audited, never delivered to a notifier, and an
alert whose claim cannot be made while the server is away kept in the outbox."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import pytest

from lfr.cluster.bus import Bus, Names, connect
from lfr.cluster.gate import NotInStream, StreamGate
from lfr.cluster.publisher import Publisher
from lfr.cluster.sightings import OpenAlerts, person_key
from lfr.cluster.status import read_alerts, stream_messages
from lfr.config import parse_config
from lfr.messages import Adjudication, Alert
from lfr.notify.outbox import Outbox
from lfr.plugins import ConfigError
from tests.natsserver import NatsServer, serve

pytestmark = pytest.mark.anyio

WINDOW_S = 10.0


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    yield from serve(tmp_path)


def alert(alert_id: str, wall_time: float, person: str = "p1", camera: str = "cam1") -> Alert:
    return Alert(id=alert_id, camera=camera, time=f"2026-01-01T00:00:{wall_time:06.3f}+00:00",
                 wall_time=wall_time, person_id=person, name="P One", score=0.9,
                 threshold=0.5, box=(1, 2, 3, 4), frame_index=1, latency_s=0.1,
                 crop_jpeg=b"face-pixels")


async def open_bus(server: NatsServer) -> Bus:
    return await Bus(await connect(server.url, "test"), Names("dep1")).open()


def test_merge_settings_are_checked() -> None:
    config = parse_config({"name": "d"})
    assert (config.cluster.merge, config.cluster.merge_window_s) == ("person", 300.0)
    assert parse_config({"name": "d", "cluster": {"merge": "off"}}).cluster.merge == "off"
    with pytest.raises(ConfigError, match="merge"):
        parse_config({"name": "d", "cluster": {"merge": "camera"}})
    with pytest.raises(ConfigError, match="merge_window_s"):
        parse_config({"name": "d", "cluster": {"merge_window_s": 0}})


async def test_the_first_claim_opens_the_alert_and_later_ones_join_it(
        nats_server: NatsServer) -> None:
    bus = await open_bus(nats_server)
    assert bus.open_alerts is not None
    node1 = OpenAlerts(bus.open_alerts, "node1", WINDOW_S)
    node2 = OpenAlerts(bus.open_alerts, "node2", WINDOW_S)

    assert await node1.claim(alert("a1", 100.0)) == "a1"  # won: a1 is open for p1
    assert await node2.claim(alert("a2", 108.0, camera="cam2")) == "a1"  # lost: joins a1
    assert await node1.claim(alert("a1", 100.0)) == "a1"  # a replay: the same choice
    assert await node2.claim(alert("b1", 108.0, person="p2")) == "b1"  # another person

    # Past the window (measured between captures) a match opens a new alert.
    assert await node2.claim(alert("a3", 100.0 + WINDOW_S + 1)) == "a3"
    assert await node1.claim(alert("a4", 115.0)) == "a3"
    # An old capture (it waited in an outbox) is raised, but leaves the newer alert open.
    assert await node1.claim(alert("a0", 50.0)) == "a0"
    assert await node1.claim(alert("a5", 116.0)) == "a3"

    # The officer decided a3: the next match is a new alert; closing another id does nothing.
    assert not await node1.close("a1", "p1")
    assert await node2.close("a3", "p1")
    assert await node1.claim(alert("a6", 116.5)) == "a6"
    assert await node2.claim(alert("a7", 117.0)) == "a6"

    # A deleted key (an operator cleaning the bucket) is claimed again.
    await bus.open_alerts.delete(person_key("p1"))
    assert await node2.claim(alert("a8", 117.5)) == "a8"
    await bus.nc.close()


async def test_of_simultaneous_claims_exactly_one_wins(nats_server: NatsServer) -> None:
    bus = await open_bus(nats_server)
    assert bus.open_alerts is not None
    nodes = [OpenAlerts(bus.open_alerts, f"node{i}", WINDOW_S) for i in range(6)]
    results: dict[str, str] = {}

    async def claim(i: int) -> None:
        results[f"x{i}"] = await nodes[i].claim(alert(f"x{i}", 200.0 + i * 0.1))

    async with anyio.create_task_group() as tg:
        for i in range(len(nodes)):
            tg.start_soon(claim, i)
    winners = {alert_id for alert_id, into in results.items() if into == alert_id}
    assert len(winners) == 1
    assert set(results.values()) == winners
    await bus.nc.close()


class Recorded:
    """A notifier that keeps what it is given."""

    name = "console"

    def __init__(self) -> None:
        self.delivered: list[str] = []

    async def deliver(self, alert: Alert) -> None:
        self.delivered.append(alert.id)

    async def aclose(self) -> None:
        pass


async def test_a_lost_claim_is_published_as_a_sighting_audited_and_not_delivered(
        nats_server: NatsServer, tmp_path: Path) -> None:
    bus = await open_bus(nats_server)
    assert bus.open_alerts is not None
    audited: dict[str, list[dict[str, Any]]] = {"node1": [], "node2": []}
    log_open = {"node1": True, "node2": False}  # node2's deployment not running yet

    def auditor(node: str) -> Any:
        def audit(record: dict[str, Any]) -> bool:
            if log_open[node]:
                audited[node].append(record)
            return log_open[node]
        return audit

    outboxes = {n: Outbox(tmp_path / n) for n in ("node1", "node2")}
    publishers = {n: Publisher(bus, n, outboxes[n], tmp_path / n,
                               open_alerts=OpenAlerts(bus.open_alerts, n, WINDOW_S),
                               audit_sighting=auditor(n)) for n in outboxes}

    outboxes["node1"].add_alert(alert("a1", 100.0, camera="cam1"), ["console"])
    assert await publishers["node1"].flush()
    outboxes["node2"].add_alert(alert("a2", 103.0, camera="cam2"), ["console"])
    assert await publishers["node2"].flush()

    found = await read_alerts(bus)
    assert [a["id"] for a in found["alerts"]] == ["a1"]
    assert found["duplicates"] == 0 and found["sighting_records"] == 1
    assert found["alerts"][0]["sightings"] == [
        {"id": "a2", "camera": "cam2", "node": "node2", "time": alert("a2", 103.0).time,
         "score": 0.9}]
    raw = [data for _, data in await stream_messages(bus, "sighting")]
    assert raw and not any(b"face-pixels" in m for m in raw)  # the crop stays sealed on node2
    assert outboxes["node2"].merged_into("a2") == "a1"

    # The sighting is audited once node2's audit log is open; a1 (raised) is not a sighting.
    assert audited == {"node1": [], "node2": []}
    log_open["node2"] = True
    assert await publishers["node2"].flush()
    assert [(r["id"], r["alert_id"], r["camera"]) for r in audited["node2"]] == [
        ("a2", "a1", "cam2")]
    assert await publishers["node2"].flush()
    assert len(audited["node2"]) == 1

    # Notifiers: node1 delivers its alert, node2 delivers nothing of the sighting.
    for node, alert_id, expected in (("node1", "a1", ["a1"]), ("node2", "a2", [])):
        notifier = Recorded()
        stored = outboxes[node].get_alert(alert_id)
        assert stored is not None
        await StreamGate(notifier, outboxes[node], wait_s=1.0).deliver(stored)
        assert notifier.delivered == expected

    # A replay after a crash (the acknowledgement not marked): the same choice, no new record.
    outboxes["node2"]._write(("DELETE FROM published WHERE kind = 'alert'", ()))
    assert await publishers["node2"].flush()
    again = await read_alerts(bus)
    assert again["sighting_records"] == 1 and len(again["alerts"]) == 1

    # The officer decides a1 on node1: p1's next match is a new alert for the officer.
    outboxes["node1"].add_adjudication(Adjudication(alert_id="a1", decision="confirmed",
                                                    operator="ann"))
    assert await publishers["node1"].flush()
    outboxes["node2"].add_alert(alert("a3", 104.0, camera="cam2"), ["console"])
    assert await publishers["node2"].flush()
    after = await read_alerts(bus)
    assert {a["id"]: len(a["sightings"]) for a in after["alerts"]} == {"a1": 1, "a3": 0}
    for outbox in outboxes.values():
        outbox.close()
    await bus.nc.close()


async def test_an_alert_waits_for_its_claim_while_the_server_is_away(
        nats_server: NatsServer, tmp_path: Path) -> None:
    bus = await open_bus(nats_server)
    assert bus.open_alerts is not None
    other = OpenAlerts(bus.open_alerts, "node1", WINDOW_S)
    assert await other.claim(alert("a1", 100.0)) == "a1"
    outbox = Outbox(tmp_path / "node2")
    publisher = Publisher(bus, "node2", outbox, tmp_path / "node2",
                          open_alerts=OpenAlerts(bus.open_alerts, "node2", WINDOW_S),
                          audit_sighting=lambda record: True)
    outbox.add_alert(alert("a2", 101.0), ["console"])

    nats_server.stop()
    assert not await publisher.flush()
    assert outbox.merged_into("a2") is None and outbox.unpublished_count() == 1
    notifier = Recorded()
    with pytest.raises(NotInStream):  # neither delivered as a new alert nor lost
        await StreamGate(notifier, outbox, wait_s=0.3).deliver(alert("a2", 101.0))

    nats_server.start()
    with anyio.fail_after(30):
        while not await publisher.flush():  # noqa: ASYNC110  (polls the server, no event)
            await anyio.sleep(0.2)
    assert outbox.merged_into("a2") == "a1" and outbox.unpublished_count() == 0
    await StreamGate(notifier, outbox, wait_s=1.0).deliver(alert("a2", 101.0))
    assert notifier.delivered == []
    found = await read_alerts(bus)
    assert found["alerts"] == [] and found["sighting_records"] == 1
    outbox.close()
    await bus.nc.close()


# -- a sighting on the node that saw it: shown and decided as a sighting ------------------------


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from paths import PEOPLE

    from lfr.vision.defaults import default_analyzer
    from lfr.watchlist import build_watchlist

    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


async def test_a_nodes_own_viewer_and_dashboard_show_a_sighting_as_one(
        tmp_path: Path, bundle: Path) -> None:
    """A real deployment (a node's, with its web viewer and dashboard): once its publisher has
    placed an alert as a further sighting of another node's open alert (the choice it keeps in
    the outbox), the viewer and the dashboard show it as a sighting of that alert, and a
    decision on it is refused, naming the alert to decide."""
    import io

    from paths import CLIP
    from rich.console import Console
    from services import running
    from web_users import client, login, make_users

    from lfr.dashboard.render import render
    from lfr.dashboard.service import DashboardService
    from lfr.deployment import Deployment
    from lfr.plugins import load_plugins
    from lfr.users import Principal
    from lfr.web import WebService

    users = make_users(tmp_path / "users.json")
    config = parse_config({
        "name": "node2", "data_dir": str(tmp_path / "data"),
        "watchlist": {"bundle": str(bundle)},
        "cameras": [{"name": "hall", "url": str(CLIP), "realtime": True, "loop": True,
                     "fps_cap": 5}],
        "notifiers": [{"kind": "jsonl"}],
        "web": {"listen": "127.0.0.1:0", "users_file": str(users.path)}}, "test")
    deployment = Deployment(config, load_plugins())
    service = WebService(config.web)
    dashboard = DashboardService(Principal("olive", "operator"),
                                 console=Console(file=io.StringIO()))
    opened_elsewhere = "0123456789abcdef" * 2  # node1's open alert for the same person
    async with running(deployment, service), client() as http:
        view = deployment.view
        with anyio.fail_after(90):
            while not view.recent_alerts():  # noqa: ASYNC110  (the pipeline's own pace)
                await anyio.sleep(0.1)
        sighting = view.recent_alerts()[0]
        assert view.sightings() == {}  # not placed yet: shown as it came
        # The node's publisher places it (lfr.cluster.publisher keeps its choice this way).
        with Outbox(config.resolved_data_dir()) as placed:
            assert placed.set_merged_into(sighting.id, opened_elsewhere) == opened_elsewhere
        assert view.sightings() == {sighting.id: opened_elsewhere}

        assert (await login(http, service.url, "olive")).status == 200
        async with http.get(service.url + "api/state") as r:
            state = await r.json()
        assert state["sightings"] == {sighting.id: opened_elsewhere}
        async with http.get(service.url + "api/alerts") as r:
            listed = {a["id"]: a["sighting_of"] for a in await r.json()}
        assert listed[sighting.id] == opened_elsewhere
        async with http.post(service.url + f"api/alerts/{sighting.id}/decision",
                             json={"decision": "confirmed"}) as r:
            assert r.status == 409
            assert f"decide alert {opened_elsewhere}" in (await r.json())["error"]

        dashboard.selected = sighting.id
        text = "\n".join(str(line) for line in _lines(render(dashboard.view(view), 160, 50)))
        assert f"sighting of {opened_elsewhere[:8]}" in text
        dashboard.handle_key("c", view)
        assert dashboard.status.startswith("not recorded: ")
        assert f"further sighting of alert {opened_elsewhere}" in dashboard.status
        assert view.decision(sighting.id) is None
    with Outbox(config.resolved_data_dir()) as outbox:
        assert outbox.adjudications(sighting.id) == []


def _lines(renderable: Any) -> list[str]:
    import io

    from rich.console import Console

    out = io.StringIO()
    Console(file=out, width=160, height=50, color_system=None).print(renderable)
    return out.getvalue().splitlines()


def test_lfr_decide_on_a_sighting_names_the_alert_it_joined(
        nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """``lfr decide`` on a sighting's id records nothing and answers which alert it joined,
    on which node, and that that alert is the one to decide."""
    import asyncio
    import io
    import json

    import msgspec
    from web_users import PASSWORDS, make_users

    from lfr.cli import main

    async def publish() -> None:
        bus = await open_bus(nats_server)
        await bus.publish(bus.names.subject("alert", "node1"), msgspec.json.encode(
            {"id": "a1", "person_id": "p1", "name": "P One", "score": 0.9, "camera": "door",
             "node": "node1", "time": "2026-01-01T00:00:10.000+00:00"}), "a1")
        await bus.publish(bus.names.subject("sighting", "node2"), msgspec.json.encode(
            {"id": "s1", "alert_id": "a1", "person_id": "p1", "score": 0.8, "camera": "hall",
             "node": "node2", "time": "2026-01-01T00:00:12.000+00:00", "wall_time": 12.0}), "s1")
        await bus.nc.close()

    asyncio.run(publish())
    make_users(tmp_path / "users.json")
    monkeypatch.setattr("sys.stdin", io.StringIO(PASSWORDS["olive"] + "\n"))
    code = main(["decide", "s1", "confirmed", "--nats", nats_server.url, "--deployment", "dep1",
                 "--users-file", str(tmp_path / "users.json"), "--user", "olive",
                 "--password-stdin", "--json"])
    answer = json.loads(capsys.readouterr().out)
    assert code == 1 and answer["ok"] is False
    assert (answer["sighting_of"], answer["node"]) == ("a1", "node1")
    assert "s1 is a further sighting (node2/hall" in answer["error"]
    assert "of alert a1 (P One, raised on node1/door" in answer["error"]
    assert "lfr decide a1" in answer["error"]
