"""A deployment spread over nodes, end to end: `lfr node` processes share file cameras (the demo
clip, looping in real time) through a real nats-server on loopback.

- Three nodes, six cameras: SIGKILL one node, its cameras run on the others within the lease
  plus a few seconds; restarted, every alert it had stored is in the stream exactly once; no
  camera ever ran on two nodes at once (from every node's audit log).
- The NATS server restarted mid-run: the nodes keep processing, their alerts wait in the
  outboxes and are published when it is back; none lost, none duplicated.
- Two nodes whose cameras see the same listed person give one alert per person while it is open,
  with the other node's sightings joined to it, each audited; after the window a new alert.

The tests of leases, outages and replication run with ``[cluster] merge = "off"``: they count
every stored alert as an alert in the stream.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import signal
import sqlite3
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from natsserver import NatsServer, free_port, serve
from paths import CLIP, PEOPLE
from web_users import PASSWORDS, make_users

from lfr.audit import audit_records, verify
from lfr.cluster import status as cluster_status
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

pytestmark = pytest.mark.slow

LFR = Path(sys.executable).with_name("lfr")
LEASE_S = 10.0  # the default


@pytest.fixture
def nats_server(tmp_path: Path) -> Iterator[NatsServer]:
    yield from serve(tmp_path)


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


def write_config(tmp_path: Path, bundle: Path, cameras: int,
                 cluster: str = 'merge = "off"') -> Path:
    """``cluster``: the body of its [cluster] section."""
    config = tmp_path / "site.toml"
    entries = "".join(f"""
[[cameras]]
name = "cam{i}"
url = "{CLIP}"
realtime = true
loop = true
fps_cap = 2
""" for i in range(cameras))
    config.write_text(f"""
name = "site"
data_dir = "data"
operator = "tester"

[watchlist]
bundle = "{bundle}"

[matching]
cooldown_s = 1.0

[pipeline]
checkpoint_s = 1.0

[[notifiers]]
kind = "jsonl"
path = "alerts.jsonl"

[cluster]
{cluster}
{entries}""")
    return config


class Nodes:
    """`lfr node` processes of one config, by name."""

    def __init__(self, config: Path, url: str) -> None:
        self.config, self.url = config, url
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def start(self, name: str, *extra: str) -> None:
        log = self.config.parent / f"{name}.log"
        with log.open("ab") as out:
            self.processes[name] = subprocess.Popen(
                [str(LFR), "node", str(self.config), "--nats", self.url, "--node", name,
                 *extra],
                cwd=self.config.parent, stdin=subprocess.DEVNULL, stdout=out, stderr=out)

    def check_running(self) -> None:
        for name, process in self.processes.items():
            if process.poll() is not None:
                log = (self.config.parent / f"{name}.log").read_text()[-3000:]
                raise AssertionError(f"node {name} exited ({process.returncode}):\n{log}")

    def kill(self, name: str) -> None:
        process = self.processes.pop(name)
        process.send_signal(signal.SIGKILL)
        process.wait(10)

    def stop_all(self) -> dict[str, int]:
        for process in self.processes.values():
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
        codes = {}
        for name, process in self.processes.items():
            try:
                codes[name] = process.wait(60)
            except subprocess.TimeoutExpired:
                process.kill()
                codes[name] = -9
        self.processes.clear()
        return codes

    def data_dir(self, name: str) -> Path:
        return self.config.parent / "data" / name


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, nodes: Nodes) -> float:
    """Seconds it took; fails naming ``what`` after ``timeout_s`` or when a node exited."""
    started = time.monotonic()
    while not predicate():
        nodes.check_running()
        if time.monotonic() - started > timeout_s:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.5)
    return time.monotonic() - started


def read_status(nodes: Nodes) -> dict[str, Any]:
    try:
        return cluster_status.status(nodes.url, "site")
    except Exception:  # not created yet, or the server away
        return {"nodes": [], "cameras": []}


def holders(nodes: Nodes) -> dict[str, str]:
    """camera -> node, for the cameras running now."""
    return {c["name"]: c["node"] for c in read_status(nodes)["cameras"]
            if c["state"] == "running"}


def outbox_rows(data_dir: Path, sql: str) -> list[tuple[Any, ...]]:
    path = data_dir / "outbox.sqlite"
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)
    try:
        return db.execute(sql).fetchall()
    except sqlite3.OperationalError:
        return []
    finally:
        db.close()


def stored_alerts(data_dir: Path) -> set[str]:
    return {str(r[0]) for r in outbox_rows(data_dir, "SELECT id FROM alerts")}


def unpublished(data_dir: Path) -> set[str]:
    return {str(r[0]) for r in outbox_rows(
        data_dir, "SELECT id FROM alerts WHERE id NOT IN"
        " (SELECT id FROM published WHERE kind = 'alert')")}


def notified(data_dir: Path) -> set[str]:
    """Alert ids the node's jsonl notifier has delivered."""
    path = data_dir / "alerts.jsonl"
    if not path.exists():
        return set()
    lines = path.read_text().splitlines()
    return {json.loads(line)["id"] for line in lines if line.strip().endswith("}")}


def _when(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def camera_intervals(data_dir: Path, killed_at: float | None = None
                     ) -> list[tuple[str, float, float]]:
    """(camera, from, to) for every time a camera ran on the node, from its audit log: from its
    ``camera_start`` record (written before its source starts; for the cameras a run starts
    with, the run's config record) to its ``camera_stop`` record (written once its source and
    detector have stopped) or else its run's stop record (after every camera stopped); a run
    that was killed ends at ``killed_at`` (or now)."""
    found: list[tuple[str, float, float]] = []
    running: dict[str, float] = {}  # camera -> since

    def end_all(at: float) -> None:
        found.extend((camera, since, at) for camera, since in running.items())
        running.clear()

    for record in audit_records(data_dir):
        when = _when(record.time)
        if record.kind == "config":
            running.update({c["name"]: when for c in record.data["cameras"]})
        elif record.kind == "camera_start":
            running[record.data["camera"]] = when
        elif record.kind == "camera_stop" and record.data["camera"] in running:
            found.append((record.data["camera"], running.pop(record.data["camera"]), when))
        elif record.kind == "deployment_stop":
            end_all(when)
        elif record.kind == "seal" and record.data.get("reason") == "resume":
            end_all(killed_at or time.time())
    end_all(killed_at or time.time())
    return found


def assert_no_camera_on_two_nodes(intervals: dict[str, list[tuple[str, float, float]]]) -> None:
    for node, runs in intervals.items():
        for other, other_runs in intervals.items():
            if other <= node:
                continue
            for camera, start, end in runs:
                for camera2, start2, end2 in other_runs:
                    assert not (camera == camera2 and start < end2 and start2 < end), (
                        f"{camera} ran on {node} ({start}-{end}) and {other} ({start2}-{end2})")


def assert_cameras_ran_on(nodes: Nodes, before: dict[str, str], lost: set[str],
                          killed_at: float, moved_at: float) -> None:
    """The surviving nodes took the lost cameras beside the ones they ran: none of those
    stopped or started again, and their deployment was not restarted."""
    taken = set()
    for name in set(before.values()) - {before[c] for c in lost}:
        records = [r for r in audit_records(nodes.data_dir(name))
                   if killed_at <= _when(r.time) <= moved_at]
        restarts = [(r.kind, r.data.get("camera")) for r in records
                    if r.kind in ("camera_stop", "deployment_stop", "deployment_start")]
        assert not restarts, f"{name} stopped or restarted cameras taking over: {restarts}"
        taken |= {r.data["camera"] for r in records if r.kind == "camera_start"}
        kept = {c for c, n in before.items() if n == name}
        runs = camera_intervals(nodes.data_dir(name))
        for camera in kept:  # one run from before the kill, still on
            spans = [(start, end) for c, start, end in runs if c == camera and end >= moved_at]
            assert len(spans) == 1 and spans[0][0] < killed_at, (name, camera, spans)
    assert taken == lost


@pytest.mark.timeout(420)
def test_three_nodes_share_six_cameras_and_survive_a_sigkill(
        tmp_path: Path, bundle: Path, nats_server: NatsServer) -> None:
    config = write_config(tmp_path, bundle, cameras=6)
    nodes = Nodes(config, nats_server.url)
    names = ["node0", "node1", "node2"]
    try:
        for name in names:
            nodes.start(name)

        def spread_evenly() -> bool:
            held = holders(nodes)
            counts = sorted(list(held.values()).count(n) for n in names)
            return len(held) == 6 and counts == [2, 2, 2]

        wait_until(spread_evenly, 120, "six cameras running, two per node", nodes)
        victim = holders(nodes)
        lost = {c for c, n in victim.items() if n == "node2"}
        wait_until(lambda: bool(stored_alerts(nodes.data_dir("node2"))), 90,
                   "an alert on node2", nodes)

        nodes.kill("node2")
        killed_at = time.time()
        stored = stored_alerts(nodes.data_dir("node2"))

        def moved() -> bool:
            held = holders(nodes)
            return all(held.get(c) in ("node0", "node1") for c in lost)

        # The lease, two heartbeats before node2 is counted dead, the taker's restart: wide.
        took = wait_until(moved, LEASE_S + 40, "node2's cameras on the others", nodes)
        assert took <= LEASE_S + 20, f"node2's cameras took {took:.1f} s to move"
        print(f"node2's cameras ran on the others {took:.1f} s after SIGKILL")
        assert_cameras_ran_on(nodes, victim, lost, killed_at, time.time())
        status = read_status(nodes)
        alive = {n["name"]: n["alive"] for n in status["nodes"]}
        assert alive == {"node0": True, "node1": True, "node2": False}

        nodes.start("node2")  # comes back: publishes what it had stored, takes its share again
        wait_until(lambda: not unpublished(nodes.data_dir("node2"))
                   and spread_evenly(), 120, "node2 back with its share, outbox published",
                   nodes)
        result = cluster_status.alerts(nodes.url, "site")
        in_stream = [a["id"] for a in result["alerts"]]
        assert stored <= set(in_stream), "an alert node2 had stored is not in the stream"
        assert result["duplicates"] == 0
        assert result["stream_records"] == len(in_stream) == len(set(in_stream))
        by_id = {a["id"]: a for a in result["alerts"]}
        assert {by_id[i]["node"] for i in stored} == {"node2"}
    finally:
        codes = nodes.stop_all()
    assert codes == {name: 0 for name in names}, codes
    everything = set()
    for name in names:
        everything |= stored_alerts(nodes.data_dir(name))
        assert verify(nodes.data_dir(name) / "audit.jsonl").ok
    final = cluster_status.alerts(nats_server.url, "site")
    assert {a["id"] for a in final["alerts"]} == everything  # every node's, published at stop
    assert final["duplicates"] == 0
    assert_no_camera_on_two_nodes({
        name: camera_intervals(nodes.data_dir(name), killed_at if name == "node2" else None)
        for name in names})
    # The killed run of node2 is in the stream's copy of its audit chain, in order, once.
    nats_audit = _audit_in_stream(nats_server.url)
    for name in names:
        seqs = [r["seq"] for r in nats_audit[name]]
        assert seqs == list(range(1, len(seqs) + 1))
    check_report(nats_server.url, config, names)


def check_report(url: str, config: Path, names: list[str]) -> None:
    """`lfr report --nats` verifies every node's chain, from the stream and against its own
    log; a log truncated or rewritten after publishing fails, naming the node."""
    args = ["report", "--nats", url, "--deployment", "site", "--config", str(config), "--json"]
    report = run_json(args)
    assert report["ok"] and report["duplicates"] == 0
    assert set(report["nodes"]) == set(names)
    assert all(n["checked_against_local_log"] and not n["problems"]
               for n in report["nodes"].values())
    assert report["faces"] > 0

    log = config.parent / "data" / names[1] / "audit.jsonl"
    lines = log.read_bytes().splitlines(keepends=True)
    log.write_bytes(b"".join(lines[:-3]))  # truncated after publishing
    report = run_json(args, expect=1)
    assert not report["ok"]
    assert [n for n, node in report["nodes"].items() if node["problems"]] == [names[1]]
    assert "truncated" in report["nodes"][names[1]]["problems"][0]

    log.write_bytes(b"".join(lines[:2]) + lines[2].replace(b'"kind"', b'"kind" ', 1)
                    + b"".join(lines[3:]))  # rewritten
    report = run_json(args, expect=1)
    assert "rewritten" in report["nodes"][names[1]]["problems"][0]


def run_json(args: list[str], expect: int = 0, stdin: str = "") -> dict[str, Any]:
    done = subprocess.run([str(LFR), *args], capture_output=True, timeout=120,
                          input=(stdin + "\n").encode())
    assert done.returncode == expect, done.stderr.decode()[-2000:]
    result: dict[str, Any] = json.loads(done.stdout)
    return result


def _audit_in_stream(url: str) -> dict[str, list[dict[str, Any]]]:
    import asyncio

    from lfr.cluster.bus import Bus, Names, connect
    from lfr.cluster.status import audit_records_by_node

    async def read() -> dict[str, list[dict[str, Any]]]:
        nc = await connect(url, "test")
        try:
            return await audit_records_by_node(await Bus(nc, Names("site")).bind())
        finally:
            await nc.close()

    return asyncio.run(read())


def deployment_starts(data_dir: Path) -> int:
    return sum(1 for r in audit_records(data_dir) if r.kind == "deployment_start")


async def offer_to_node(url: str, console: Any, node: str, camera: str
                        ) -> tuple[dict[str, Any], dict[str, Any]]:
    """An aiortc offer for ``camera`` sent to ``node`` as the console sends a browser's; the
    node's answer, and its reply to closing that viewer."""
    from aiortc import RTCPeerConnection

    from lfr.cluster.bus import Names, connect
    from lfr.cluster.viewer import request_viewer
    from lfr.web import ice_host_addresses

    names = Names("site")
    nc = await connect(url, "ops", credentials=console, wait=False)
    pc = RTCPeerConnection()
    try:
        pc.addTransceiver("video", direction="recvonly")
        with ice_host_addresses(["127.0.0.1"]):
            await pc.setLocalDescription(await pc.createOffer())
        who = {"by": "olive", "role": "operator"}
        answer = await request_viewer(nc, names, node, {
            "op": "offer", **who, "camera": camera, "sdp": pc.localDescription.sdp,
            "type": "offer"})
        closed = await request_viewer(nc, names, node, {
            "op": "close", **who, "viewer": answer.get("viewer", "")})
        return answer, closed
    finally:
        await pc.close()
        await nc.close()


@pytest.mark.timeout(300)
def test_nodes_keep_processing_while_the_server_restarts(
        tmp_path: Path, bundle: Path, nats_server: NatsServer) -> None:
    # A longer lease than the default: the outage must be shorter than a lease, and on a loaded
    # machine both nodes may need more than the default's few seconds to raise an alert in it.
    lease_s = 30.0
    config = write_config(tmp_path, bundle, cameras=4,
                          cluster=f'merge = "off"\nlease_s = {lease_s}')
    nodes = Nodes(config, nats_server.url)
    names = ["node0", "node1"]
    try:
        for name in names:
            nodes.start(name)
        wait_until(lambda: len(holders(nodes)) == 4 and set(holders(nodes).values()) ==
                   set(names), 120, "four cameras running on two nodes", nodes)
        runs = {name: deployment_starts(nodes.data_dir(name)) for name in names}
        before = {name: stored_alerts(nodes.data_dir(name)) for name in names}

        # Down for less than a lease: nobody's cameras stop, alerts wait in the outboxes.
        nats_server.stop(signal.SIGKILL)
        down_since = time.monotonic()

        def raised_while_down() -> bool:
            return all(stored_alerts(nodes.data_dir(n)) - before[n] for n in names)

        wait_until(raised_while_down, lease_s - 10, "alerts on both nodes while the server is "
                   "down", nodes)
        waiting = {n: unpublished(nodes.data_dir(n)) for n in names}
        assert all(waiting.values()), f"nothing waiting for the stream: {waiting}"
        # The stream comes first: no notifier has delivered what it does not hold yet.
        time.sleep(1.0)
        for name in names:
            assert not waiting[name] & notified(nodes.data_dir(name))
        time.sleep(max(0.0, 5.0 - (time.monotonic() - down_since)))
        nats_server.start()
        wait_until(lambda: not any(unpublished(nodes.data_dir(n)) for n in names), 60,
                   "the outboxes published after the server came back", nodes)
        wait_until(lambda: all(waiting[n] <= notified(nodes.data_dir(n)) for n in names), 60,
                   "the local notifiers delivering them after the stream has them", nodes)
        # They kept processing: no camera was stopped and started again.
        assert {n: deployment_starts(nodes.data_dir(n)) for n in names} == runs
        result = cluster_status.alerts(nodes.url, "site")
        in_stream = {a["id"] for a in result["alerts"]}
        for name in names:
            assert waiting[name] <= in_stream
        assert result["duplicates"] == 0
    finally:
        codes = nodes.stop_all()
    assert codes == {name: 0 for name in names}, codes
    final = cluster_status.alerts(nats_server.url, "site")
    everything = set().union(*(stored_alerts(nodes.data_dir(n)) for n in names))
    assert {a["id"] for a in final["alerts"]} == everything
    assert final["duplicates"] == 0 and final["stream_records"] == len(everything)


def audit_data(data_dir: Path, kind: str) -> list[dict[str, Any]]:
    return [r.data for r in audit_records(data_dir) if r.kind == kind]


@pytest.mark.timeout(300)
def test_a_published_watchlist_reaches_every_node_and_a_destroyed_one_leaves(
        tmp_path: Path, bundle: Path, nats_server: NatsServer) -> None:
    from lfr.cli import main

    smaller = tmp_path / "two-people"
    smaller.mkdir()
    for person in sorted(PEOPLE.iterdir())[:2]:  # links: the shared photos are not copied
        (smaller / person.name).symlink_to(person)
    second = tmp_path / "bundle2"
    build_watchlist(smaller, second, default_analyzer())
    # Embedded without the flip: no node can search it against its cameras' embeddings.
    unusable = tmp_path / "bundle-no-flip"
    build_watchlist(smaller, unusable, default_analyzer(flip=False))

    config = write_config(tmp_path, bundle, cameras=2)
    nodes = Nodes(config, nats_server.url)
    names = ["node0", "node1"]

    def versions() -> dict[str, Any]:
        return read_status(nodes).get("watchlist", {}).get("nodes", {})

    try:
        for name in names:
            nodes.start(name)
        # The first node published the config's bundle as version 1; both run it.
        wait_until(lambda: versions() == {"node0": 1, "node1": 1} and len(holders(nodes)) == 2,
                   120, "both nodes on watchlist version 1", nodes)
        runs = {n: deployment_starts(nodes.data_dir(n)) for n in names}
        assert main(["watchlist", "publish", str(second), "--nats", nodes.url,
                     "--deployment", "site", "--operator", "sup", "--json"]) == 0
        # A heartbeat says version 2 once the node's cameras decide on it.
        took = wait_until(lambda: versions() == {"node0": 2, "node1": 2}, 60,
                          "both nodes on version 2", nodes)
        assert took < 30
        status = read_status(nodes)
        assert status["watchlist"]["version"] == 2 and status["watchlist"]["people"] == 2
        for name in names:
            # Switched between two frames of the running deployment: its cameras never stopped.
            (switched,) = [r for r in audit_data(nodes.data_dir(name), "watchlist_loaded")
                           if "switched" in r]
            assert (switched["version"], switched["persons"]) == (2, 2)
            assert set(switched["switched"]["after_frames"]) <= {"cam0", "cam1"}
        assert {n: deployment_starts(nodes.data_dir(n)) for n in names} == runs
        assert len(holders(nodes)) == 2

        # A version the nodes cannot run is refused, naming it; version 2 runs on.
        assert main(["watchlist", "publish", str(unusable), "--nats", nodes.url,
                     "--deployment", "site", "--operator", "sup", "--json"]) == 0

        def log_text(name: str) -> str:  # the log wraps long lines: compared without spaces
            return "".join((tmp_path / f"{name}.log").read_text().split())

        wait_until(lambda: all("watchlistversion3refused" in log_text(n) for n in names), 60,
                   "version 3 refused", nodes)
        assert "node0/watchlists/v3:builtwithembedder" in log_text("node0")
        assert versions() == {"node0": 2, "node1": 2} and len(holders(nodes)) == 2
        for name in names:
            loaded = audit_data(nodes.data_dir(name), "watchlist_loaded")
            assert loaded[-1]["version"] == 2
            (refused,) = audit_data(nodes.data_dir(name), "watchlist_refused")
            assert (refused["version"], refused["operator"], refused["node"]) == (3, "sup", name)
            assert "built with embedder" in refused["error"]
        assert {n: deployment_starts(nodes.data_dir(n)) for n in names} == runs

        assert main(["watchlist", "destroy", "--nats", nodes.url, "--deployment", "site",
                     "--operator", "sup", "--json"]) == 0
        wait_until(lambda: all(audit_data(nodes.data_dir(n), "watchlist_destroyed")
                               for n in names), 60, "every node's copy destroyed", nodes)
        for name in names:
            copies = nodes.data_dir(name) / "watchlists"
            assert not any(copies.iterdir())
            (record,) = audit_data(nodes.data_dir(name), "watchlist_destroyed")
            assert record["version"] == 4 and record["operator"] == "sup"
        assert read_status(nodes)["watchlist"]["destroyed"] is True
        wait_until(lambda: not holders(nodes), 30, "no camera running without a watchlist",
                   nodes)
    finally:
        codes = nodes.stop_all()
    assert codes == {name: 0 for name in names}, codes


@pytest.mark.timeout(300)
def test_a_node_runs_on_a_locked_bus_with_its_own_credentials(
        tmp_path: Path, bundle: Path) -> None:
    from lfr.cli import main
    from lfr.cluster.credentials import load_credentials

    port = free_port()
    conf, creds = tmp_path / "server.conf", tmp_path / "creds"
    assert main(["nats-config", "site", "--node", "node0", "--console", "ops", "--listen",
                 f"127.0.0.1:{port}", "--store", str(tmp_path / "store"), "-o", str(conf),
                 "--credentials-dir", str(creds)]) == 0
    server = NatsServer(tmp_path / "store", port=port, config=conf)
    server.start()
    # One alert per person on: the node's credentials let it claim open alerts.
    nodes = Nodes(write_config(tmp_path, bundle, cameras=1, cluster='merge = "person"'),
                  server.url)
    console = load_credentials(creds / "ops.json")
    try:
        nodes.start("node0", "--credentials", str(creds / "node0.json"))

        def running() -> bool:
            try:
                found = cluster_status.status(server.url, "site", console)
            except Exception:
                return False
            return [c["state"] for c in found["cameras"]] == ["running"]

        wait_until(running, 120, "the camera running on a locked bus", nodes)
        wait_until(lambda: bool(stored_alerts(nodes.data_dir("node0"))), 90, "an alert", nodes)
        wait_until(lambda: not unpublished(nodes.data_dir("node0")), 30, "it published", nodes)
        found = cluster_status.alerts(server.url, "site", console)
        assert found["alerts"] and found["duplicates"] == 0

        # A person logs in at a console and decides; the node that raised the alert records
        # the decision (audit log: who, with which role) and publishes it.
        make_users(tmp_path / "users.json")
        alert_id = found["alerts"][0]["id"]
        decide = ["decide", alert_id, "false_alert", "--nats", server.url, "--deployment",
                  "site", "--credentials", str(creds / "ops.json"), "--users-file",
                  str(tmp_path / "users.json"), "--user", "olive", "--password-stdin", "--json"]
        reply = run_json(decide, stdin=PASSWORDS["olive"])
        assert reply["ok"] and reply["node"] == "node0"
        assert reply["decision"]["operator"] == "olive"
        audrey = [*decide[:-4], "--user", "audrey", "--password-stdin", "--json"]
        assert "auditor" in run_json(audrey, expect=2, stdin=PASSWORDS["audrey"])["error"]
        wait_until(lambda: {a["id"]: a["decision"] for a in cluster_status.alerts(
            server.url, "site", console)["alerts"]}[alert_id] == "false_alert", 30,
            "the decision in the stream", nodes)
        (record,) = [r for r in audit_data(nodes.data_dir("node0"), "adjudication")]
        assert (record["alert_id"], record["operator"], record["role"]) == (
            alert_id, "olive", "operator")

        # A browser's video offer, carried by the console over the bus: the node answers it
        # with a peer connection of its own for the camera it runs (lfr console --web).
        answer, closed = asyncio.run(offer_to_node(server.url, console, "node0", "cam0"))
        assert answer["status"] == 200, answer
        assert "m=video" in answer["sdp"] and answer["viewer"]
        assert closed == {"status": 200, "closed": True}
    finally:
        codes = nodes.stop_all()
        server.stop()
    assert codes == {"node0": 0}
    assert "violation" not in (tmp_path / "node0.log").read_text().lower()


@pytest.mark.timeout(300)
def test_a_node_on_a_three_server_cluster_survives_the_loss_of_its_server(
        tmp_path: Path, bundle: Path) -> None:
    """Streams and buckets replicated on three servers: the server the node is connected to is
    killed; the node reconnects to another, keeps its camera and loses no alert."""
    ports = [(free_port(), free_port(), free_port()) for _ in range(3)]
    servers = []
    for i, (client, route, monitor) in enumerate(ports):
        routes = ",".join(f"nats://127.0.0.1:{r}" for j, (_, r, _) in enumerate(ports) if j != i)
        servers.append(NatsServer(tmp_path / f"store{i}", port=client, extra=(
            "-n", f"s{i}", "--cluster_name", "lfr", "--cluster", f"nats://127.0.0.1:{route}",
            "--routes", routes, "-m", str(monitor))))
    for server in servers:
        server.start()
    config = write_config(tmp_path, bundle, cameras=1, cluster='merge = "off"\nreplicas = 3')
    url = ",".join(s.url for s in servers)
    nodes = Nodes(config, url)

    def serving_node() -> NatsServer | None:
        """The server node0 is connected to (its monitoring endpoint's connections)."""
        for server, (_, _, monitor) in zip(servers, ports, strict=True):
            if server.process is None:
                continue
            with urllib.request.urlopen(f"http://127.0.0.1:{monitor}/connz", timeout=5) as r:
                names = [c.get("name") for c in json.load(r)["connections"]]
            if "lfr-node-node0" in names:
                return server
        return None

    try:
        nodes.start("node0")
        wait_until(lambda: holders(nodes) == {"cam0": "node0"}, 120, "the camera running",
                   nodes)
        wait_until(lambda: bool(stored_alerts(nodes.data_dir("node0"))), 90, "an alert", nodes)
        runs = deployment_starts(nodes.data_dir("node0"))
        before = stored_alerts(nodes.data_dir("node0"))
        serving = serving_node()
        assert serving is not None
        serving.stop(signal.SIGKILL)
        wait_until(lambda: serving_node() not in (None, serving), 30,
                   "node0 on another server", nodes)
        wait_until(lambda: bool(stored_alerts(nodes.data_dir("node0")) - before), 60,
                   "alerts after the server was killed", nodes)
        wait_until(lambda: not unpublished(nodes.data_dir("node0")), 60,
                   "every alert in the replicated stream", nodes)
        assert deployment_starts(nodes.data_dir("node0")) == runs  # the camera never stopped
        # A console read may time out while the replicas catch up after the kill: retried.
        found: dict[str, Any] = {}

        def read_back() -> bool:
            try:
                found.update(cluster_status.alerts(url, "site"))
            except Exception:
                return False
            return True

        wait_until(read_back, 30, "the alerts read back", nodes)
        assert {a["id"] for a in found["alerts"]} == stored_alerts(nodes.data_dir("node0"))
        assert found["duplicates"] == 0
    finally:
        codes = nodes.stop_all()
        for server in servers:
            server.stop(signal.SIGKILL)
    assert codes == {"node0": 0}


MERGE_WINDOW_S = 6.0


@pytest.mark.timeout(300)
def test_two_nodes_seeing_one_person_give_one_alert_with_sightings(
        tmp_path: Path, bundle: Path, nats_server: NatsServer) -> None:
    """The demo clip on two cameras, one per node: the person's alert is raised once while it is
    open; the other node's matches join it as sightings (audited there, never notified); after
    the window a new match raises a new alert."""
    config = write_config(tmp_path, bundle, cameras=2, cluster=(
        f'merge = "person"\nmerge_window_s = {MERGE_WINDOW_S}'))
    nodes = Nodes(config, nats_server.url)
    names = ["node0", "node1"]

    def merged_enough() -> bool:
        try:
            found = cluster_status.alerts(nodes.url, "site")
        except Exception:
            return False
        across = any(s["node"] != a["node"] for a in found["alerts"] for s in a["sightings"])
        per_person: dict[str, int] = {}
        for a in found["alerts"]:
            per_person[a["person_id"]] = per_person.get(a["person_id"], 0) + 1
        return across and max(per_person.values(), default=0) >= 2

    try:
        for name in names:
            nodes.start(name)
        wait_until(lambda: set(holders(nodes).values()) == set(names), 120,
                   "one camera running on each node", nodes)
        wait_until(merged_enough, 120, "a sighting from the other node and an alert raised "
                   "again after the window", nodes)
    finally:
        codes = nodes.stop_all()
    assert codes == {name: 0 for name in names}, codes

    final = cluster_status.alerts(nats_server.url, "site")
    alerts, sightings = final["alerts"], [s for a in final["alerts"] for s in a["sightings"]]
    assert final["duplicates"] == 0 and final["sighting_records"] == len(sightings)
    stored = {n: stored_alerts(nodes.data_dir(n)) for n in names}
    # Every match stored on a node is in the stream exactly once: as an alert or a sighting.
    alert_ids, sighting_ids = {a["id"] for a in alerts}, {s["id"] for s in sightings}
    assert not alert_ids & sighting_ids
    assert alert_ids | sighting_ids == stored["node0"] | stored["node1"]
    assert any(s["node"] != a["node"] for a in alerts for s in a["sightings"])

    # The rule: a person's alerts are more than the window apart; each sighting within it.
    by_person: dict[str, list[float]] = {}
    for a in alerts:
        by_person.setdefault(a["person_id"], []).append(_when(a["time"]))
        for s in a["sightings"]:
            assert abs(_when(s["time"]) - _when(a["time"])) <= MERGE_WINDOW_S + 0.01, (a, s)
    assert max(len(times) for times in by_person.values()) >= 2
    for times in by_person.values():
        times.sort()
        assert all(b - a > MERGE_WINDOW_S - 0.01 for a, b in itertools.pairwise(times)), times

    for name in names:
        data_dir = nodes.data_dir(name)
        mine = {s["id"]: a["id"] for a in alerts for s in a["sightings"] if s["node"] == name}
        # Every sighting audited on the node that saw it, with the alert it joined.
        assert {r["id"]: r["alert_id"] for r in audit_data(data_dir, "sighting")} == mine
        # The officer is notified of alerts only: a sighting reaches no notifier.
        assert not notified(data_dir) & sighting_ids
        assert notified(data_dir) <= alert_ids
    report = run_json(["report", "--nats", nats_server.url, "--deployment", "site", "--config",
                       str(config), "--json"])
    assert report["ok"] and report["alerts"] == len(alerts)
    assert report["sightings"] == len(sightings)

    # Each alert's crop and watchlist picture, each sighting's crop, crossed sealed: opened with
    # the nodes' data key they are the bytes each node's outbox holds; in the stream, no JPEG.
    wanted = [(a["node"], a["id"], ("crop_jpeg", "watchlist_jpeg")) for a in alerts]
    wanted += [(s["node"], s["id"], ("crop_jpeg",)) for s in sightings]
    opened, raw = asyncio.run(_pictures(nats_server.url, wanted))
    from lfr.notify.outbox import Outbox

    for name in names:
        with Outbox(nodes.data_dir(name)) as outbox:
            for (node, item_id, field), data in opened.items():
                if node == name:
                    assert data == getattr(outbox.get_alert(item_id), field), (item_id, field)
    assert len(opened) == 2 * len(alerts) + len(sightings) == len(raw)
    assert not any(b"\xff\xd8\xff" in blob for blob in raw)


async def _pictures(url: str, wanted: list[tuple[str, str, tuple[str, ...]]]
                    ) -> tuple[dict[tuple[str, str, str], bytes], list[bytes]]:
    """The pictures of ``wanted`` (node, id, fields) opened as a console with the key opens
    them, and every message of the pictures stream as any reader gets it."""
    from nats.js.api import DeliverPolicy

    from lfr.cluster.bus import Bus, Names, connect
    from lfr.cluster.pictures import PictureReader
    from lfr.keys import load_data_key

    nc = await connect(url, "console", wait=False)
    try:
        bus = await Bus(nc, Names("site")).bind()
        reader = PictureReader(load_data_key())
        opened = {(node, item_id, field): await reader.get(bus, node, item_id, field)
                  for node, item_id, fields in wanted for field in fields}
        info = await bus.js.stream_info(bus.names.pictures_stream)
        sub = await bus.js.subscribe(bus.names.pictures, ordered_consumer=True,
                                     deliver_policy=DeliverPolicy.ALL)
        raw = [(await sub.next_msg(timeout=5)).data for _ in range(info.state.messages)]
        await sub.unsubscribe()
        return opened, raw
    finally:
        await nc.close()
