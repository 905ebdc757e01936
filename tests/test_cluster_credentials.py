"""The bus locked (lfr nats-config): a client without credentials is refused, a node cannot
publish as another node, a console cannot publish an alert; each still does its own job."""

from __future__ import annotations

import base64
import json
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import anyio
import msgspec
import pytest
from natsserver import NatsServer, free_port

from lfr.cli import main
from lfr.cluster.bus import ALERT, AUDIT, Bus, Names, connect
from lfr.cluster.credentials import CredentialsError, load_credentials, new_seed, public_key
from lfr.cluster.leases import Heartbeat
from lfr.cluster.status import read_alerts

pytestmark = pytest.mark.anyio


@pytest.fixture
def locked(tmp_path: Path) -> Iterator[tuple[NatsServer, Path]]:
    port = free_port()
    conf, creds = tmp_path / "server.conf", tmp_path / "creds"
    assert main(["nats-config", "sec", "--node", "node0", "--node", "node1", "--console", "ops",
                 "--listen", f"127.0.0.1:{port}", "--store", str(tmp_path / "store"),
                 "-o", str(conf), "--credentials-dir", str(creds), "--json"]) == 0
    assert stat.S_IMODE(conf.stat().st_mode) == 0o600
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o600 for p in creds.iterdir())
    server = NatsServer(tmp_path / "store", port=port, config=conf)
    server.start()
    try:
        yield server, creds
    finally:
        server.stop()


async def test_a_client_without_credentials_is_refused(locked: tuple[NatsServer, Path]) -> None:
    """Spoken in the NATS protocol itself (nats-py leaves a refused socket open): a client
    that sends no credentials is refused before it can subscribe to alerts or publish."""
    server, _ = locked
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        assert raw.recv(4096).startswith(b"INFO ")
        raw.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\nSUB lfr.sec.> 1\r\n'
                    b'PUB lfr.sec.decision.node0 2\r\n{}\r\nPING\r\n')
        reply = _first_line(raw)
    assert reply.startswith(b"-ERR 'Authorization Violation'"), reply


def _login_reply(port: int, public_key: str, seed: str) -> bytes:
    """CONNECT as the user of ``public_key``, the server's nonce signed with ``seed``; the
    server's first answer."""
    import nkeys

    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
        info = json.loads(raw.recv(4096).split(b" ", 1)[1])
        pair = nkeys.from_seed(bytearray(seed.encode()))
        signature = base64.b64encode(pair.sign(info["nonce"].encode())).decode()
        login = {"nkey": public_key, "sig": signature, "verbose": False, "pedantic": False,
                 "protocol": 1}
        raw.sendall(b"CONNECT " + json.dumps(login).encode() + b"\r\nPING\r\n")
        return _first_line(raw)


def _first_line(raw: socket.socket) -> bytes:
    """The server's first answer line (or what came before it closed the connection)."""
    reply = b""
    while b"\r\n" not in reply:
        chunk = raw.recv(4096)
        if not chunk:
            break
        reply += chunk
    return reply


async def test_a_client_with_a_wrong_seed_is_refused(locked: tuple[NatsServer, Path]) -> None:
    """A seed the server does not know is refused, and so is node0's seed claiming node1's
    public key (the signature does not hold); node1's own seed gets in."""
    server, creds = locked
    node0, node1 = (load_credentials(creds / f"{n}.json") for n in ("node0", "node1"))
    stranger = new_seed()
    assert _login_reply(server.port, node1.public_key, node1.seed).startswith(b"PONG")
    for public, seed in ((public_key(stranger), stranger), (node1.public_key, node0.seed)):
        reply = _login_reply(server.port, public, seed)
        assert reply.startswith(b"-ERR 'Authorization Violation'"), reply
    # nats-py with a seed of its own: the connection fails, nothing is published.
    forged = msgspec.structs.replace(node1, seed=stranger)
    errors: list[str] = []
    with pytest.raises(Exception):  # noqa: B017  (nats-py: "no servers available")
        await connect(server.url, "forger", credentials=forged, wait=False,
                      on_state=errors.append)
    assert any("authorization violation" in e.lower() for e in errors), errors


async def test_each_user_may_do_its_job_and_no_other(locked: tuple[NatsServer, Path]) -> None:
    server, creds = locked
    names = Names("sec")
    errors: list[str] = []
    node0 = load_credentials(creds / "node0.json")
    nc = await connect(server.url, "node0", credentials=node0,
                       on_state=lambda s: errors.append(s))
    bus = await Bus(nc, names).open()
    # Its own records and heartbeat: accepted.
    assert not await bus.publish(names.subject(ALERT, "node0"),
                                 msgspec.json.encode({"id": "a1", "node": "node0"}), "a1")
    assert bus.nodes is not None
    beat = Heartbeat(node="node0", time=0.0, cameras=[], capacity=None, heartbeat_s=2.0)
    await bus.nodes.put("node0", msgspec.json.encode(beat))
    # Another node's alert or heartbeat: refused by the server.
    with pytest.raises(Exception):  # noqa: B017  (no reply comes: a timeout)
        await bus.publish(names.subject(ALERT, "node1"),
                          msgspec.json.encode({"id": "forged", "node": "node1"}), "forged")
    with pytest.raises(Exception):  # noqa: B017
        await bus.nodes.put("node1", msgspec.json.encode(beat))
    with pytest.raises(Exception):  # noqa: B017
        await bus.publish(names.subject(AUDIT, "node1"), b'{"seq": 1}', "node1:1")
    # Nor may it erase the stream.
    with pytest.raises(Exception):  # noqa: B017
        await bus.js.delete_stream(names.stream)
    await anyio.sleep(0.2)
    refused = [e for e in errors if "permissions violation" in e.lower()]
    assert len(refused) == 4 and all(
        what in " ".join(refused) for what in ("lfr.sec.alert.node1", "lfr_sec_nodes.node1",
                                               "lfr.sec.audit.node1", "stream.delete.lfr_sec")
    ), errors
    await nc.close()

    console = load_credentials(creds / "ops.json")
    nc = await connect(server.url, "ops", credentials=console)
    bus = await Bus(nc, names).bind()
    found = await read_alerts(bus)  # it reads
    assert [a["id"] for a in found["alerts"]] == ["a1"] and found["duplicates"] == 0
    with pytest.raises(Exception):  # noqa: B017  it cannot raise or decide an alert
        await bus.publish(names.subject(ALERT, "node0"), b"{}", "console-forged")
    await nc.close()


def test_the_server_config_names_each_users_subjects(tmp_path: Path) -> None:
    conf = tmp_path / "server.conf"
    assert main(["nats-config", "sec", "--node", "n1", "--console", "ops", "--store",
                 str(tmp_path / "s"), "-o", str(conf), "--credentials-dir",
                 str(tmp_path / "c")]) == 0
    text = conf.read_text()
    users = {u["nkey"]: u for u in json.loads(text)["authorization"]["users"]}
    n1, ops = (load_credentials(tmp_path / "c" / f"{u}.json") for u in ("n1", "ops"))
    # Public keys only: nothing in the server config lets its reader log in.
    assert sorted(users) == sorted([n1.public_key, ops.public_key])
    assert n1.seed not in text and ops.seed not in text and "password" not in text
    users = {"n1": users[n1.public_key], "ops": users[ops.public_key]}
    node = users["n1"]["permissions"]["publish"]
    assert "lfr.sec.alert.n1" in node["allow"] and "lfr.sec.alert.*" not in node["allow"]
    assert "lfr.sec.>" in users["ops"]["permissions"]["publish"]["deny"]
    assert main(["nats-config", "sec", "--node", "a.b", "--store", str(tmp_path / "s"),
                 "-o", str(conf)]) == 2


def test_credentials_open_to_others_or_without_a_seed_are_refused(tmp_path: Path) -> None:
    assert main(["nats-config", "sec", "--node", "n1", "--store", str(tmp_path / "s"),
                 "-o", str(tmp_path / "server.conf"), "--credentials-dir",
                 str(tmp_path / "c")]) == 0
    path = tmp_path / "c" / "n1.json"
    path.chmod(0o644)
    with pytest.raises(CredentialsError, match="readable by other users"):
        load_credentials(path)
    path.chmod(0o600)
    forged = msgspec.structs.replace(load_credentials(path), seed="SUNOTASEED")
    path.write_bytes(msgspec.json.encode(forged))
    with pytest.raises(CredentialsError, match=r"n1\.json: \$\.seed: not an nkey seed"):
        load_credentials(path)
    # A file from before the bus used nkeys: a user and password, no seed.
    old = {k: v for k, v in msgspec.to_builtins(forged).items() if k != "seed"}
    path.write_bytes(msgspec.json.encode({**old, "password": "hunter2"}))
    with pytest.raises(CredentialsError, match=r"n1\.json: .*holds a password.*lfr nats-config"):
        load_credentials(path)


async def test_beyond_loopback_the_bus_speaks_tls(tmp_path: Path) -> None:
    from lfr.web.tls import make_self_signed

    conf, creds = tmp_path / "server.conf", tmp_path / "creds"
    base = ["nats-config", "tls", "--node", "node0", "--store", str(tmp_path / "store"),
            "-o", str(conf), "--credentials-dir", str(creds)]
    assert main([*base, "--listen", "192.0.2.5:4222"]) == 2  # plain beyond loopback: refused
    cert, key = make_self_signed(tmp_path / "tls", hosts=("127.0.0.1",))
    port = free_port()
    assert main([*base, "--listen", f"127.0.0.1:{port}", "--tls-cert", str(cert),
                 "--tls-key", str(key)]) == 0
    node0 = load_credentials(creds / "node0.json")
    assert node0.ca_file == str(cert.resolve())
    server = NatsServer(tmp_path / "store", port=port, config=conf)
    server.start()
    try:
        nc = await connect(server.url, "node0", credentials=node0)
        bus = await Bus(nc, Names("tls")).open()
        assert not await bus.publish(Names("tls").subject(ALERT, "node0"), b"{}", "t1")
        await nc.close()
        # The same user without TLS: refused (the server asks for TLS first and drops a
        # client that speaks plain text).
        with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
            info = json.loads(raw.recv(4096).split(b" ", 1)[1])
            assert info["tls_required"] is True
            login = {"nkey": node0.public_key, "sig": "", "verbose": False}
            raw.sendall(b"CONNECT " + json.dumps(login).encode() + b"\r\nPING\r\n")
            try:
                reply = raw.recv(4096)
            except ConnectionResetError:
                reply = b""
            assert b"PONG" not in reply and b"+OK" not in reply, reply
    finally:
        server.stop()
