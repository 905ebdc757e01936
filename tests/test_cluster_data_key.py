"""The deployment's data key reaches each node at provisioning (lfr nats-config writes it beside
the node's credentials), never over the bus: a node provisioned with it opens the watchlist the
console published; one without it, or with another key, is stopped with an error naming it."""

from __future__ import annotations

import shutil
import stat
from pathlib import Path

import anyio
import numpy as np
import pytest
from bundles import vector_bundle
from natsserver import NatsServer, free_port

from lfr.cli import main
from lfr.cluster import watchlist as watchlists
from lfr.cluster.bus import Bus, Names, connect
from lfr.cluster.credentials import (
    CredentialsError,
    credentials_file,
    load_credentials,
    with_deployment_key,
)
from lfr.config import parse_config
from lfr.keys import load_data_key, write_data_key
from lfr.sealed import DataKey
from lfr.watchlist import load_bundle

pytestmark = pytest.mark.anyio


async def test_only_a_node_provisioned_with_the_data_key_opens_the_watchlist(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # The operator's machine: their data key seals the bundle they build.
    monkeypatch.setenv("LFR_KEY_DIR", str(tmp_path / "operator-keys"))
    vectors = np.eye(2, 8, dtype=np.float32)
    vector_bundle(tmp_path / "bundle", ["ann", "bob"], vectors)
    operator_key = load_data_key()
    port, creds = free_port(), tmp_path / "provisioning"
    assert main(["nats-config", "dk", "--node", "node0", "--node", "node1", "--console", "ops",
                 "--listen", f"127.0.0.1:{port}", "--store", str(tmp_path / "store"),
                 "-o", str(tmp_path / "server.conf"), "--credentials-dir", str(creds)]) == 0
    key_file = creds / "data.key"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert load_data_key(key_file).fingerprint == operator_key.fingerprint
    assert operator_key.secret.hex() not in (tmp_path / "server.conf").read_text()
    server = NatsServer(tmp_path / "store", port=port, config=tmp_path / "server.conf")
    server.start()
    try:
        publish = ["watchlist", "publish", str(tmp_path / "bundle"), "--nats", server.url,
                   "--deployment", "dk", "--credentials", str(creds / "ops.json")]
        assert await anyio.to_thread.run_sync(main, publish) == 0  # the console's own loop

        # Node machines: another user, a key directory of their own (whose data.key is
        # another key). node0 got its credentials and the deployment's key; node1 only its
        # credentials.
        monkeypatch.setenv("LFR_KEY_DIR", str(tmp_path / "node-keys"))
        own_key = load_data_key()
        assert own_key.fingerprint != operator_key.fingerprint
        # A bundle built here is sealed with this user's key: no node could open it, so the
        # console refuses to publish it, and version 1 stays in use.
        vector_bundle(tmp_path / "elsewhere-bundle", ["eve"], vectors[:1])
        elsewhere = [*publish[:2], str(tmp_path / "elsewhere-bundle"), *publish[3:]]
        assert await anyio.to_thread.run_sync(main, elsewhere) == 2
        with pytest.raises(watchlists.WatchlistError, match=f"sealed with data key "
                           f"{own_key.fingerprint}, not with deployment 'dk'"):
            watchlists.check_sealed_with(tmp_path / "elsewhere-bundle",
                                         operator_key.fingerprint, "dk")
        provisioned = tmp_path / "node-keys" / "nats" / "dk"
        provisioned.mkdir(parents=True, mode=0o700)
        for name in ("node0.json", "node1.json", "data.key"):
            shutil.copy2(creds / name, provisioned / name)
        config = parse_config({"name": "dk", "cameras": []})
        node0 = with_deployment_key(config, credentials_file("dk", "node0", None))
        assert node0.data_key_file() == (provisioned / "data.key").resolve()
        opened = await _fetch(server.url, load_credentials(provisioned / "node0.json"),
                              load_data_key(node0.data_key_file()), tmp_path / "node0")
        assert [p.id for p in load_bundle(opened, key=load_data_key(
            node0.data_key_file())).manifest.persons] == ["ann", "bob"]

        # node1 without the deployment's key: refused before it joins, naming the file.
        (provisioned / "data.key").unlink()
        with pytest.raises(CredentialsError, match=r"data\.key: no data key for deployment"):
            with_deployment_key(config, credentials_file("dk", "node1", None))
        (tmp_path / "dk.toml").write_text('name = "dk"\n')
        node = ["node", str(tmp_path / "dk.toml"), "--nats", server.url, "--node", "node1"]
        assert await anyio.to_thread.run_sync(main, node) == 2  # lfr node says so, exit 2
        # A config naming its own key wins; with another key the published version does not
        # open: the error names both keys and the copy is not kept.
        other = tmp_path / "elsewhere.key"
        write_data_key(other, DataKey.generate("test"))
        node1 = with_deployment_key(parse_config({"name": "dk", "cameras": [],
                                                  "keys": {"data_key": str(other)}}),
                                    credentials_file("dk", "node1", None))
        wrong = load_data_key(node1.data_key_file())
        with pytest.raises(watchlists.WatchlistError) as refused:
            await _fetch(server.url, load_credentials(provisioned / "node1.json"), wrong,
                         tmp_path / "node1")
        message = str(refused.value)
        assert operator_key.fingerprint in message and wrong.fingerprint in message
        assert "data key" in message and "'dk'" in message
        assert not (tmp_path / "node1" / "v1").exists()
    finally:
        server.stop()


async def _fetch(url: str, credentials: object, key: DataKey, into: Path) -> Path:
    """What a node does as it joins: the current version, fetched and opened with its key."""
    from lfr.cluster.credentials import Credentials

    assert isinstance(credentials, Credentials)
    nc = await connect(url, credentials.user, credentials=credentials, wait=False)
    try:
        bus = await Bus(nc, Names("dk")).open()
        version, _ = await watchlists.current(bus)
        assert version is not None and version.people == 2
        return await watchlists.fetch(bus, version, into / f"v{version.version}", key=key)
    finally:
        await nc.close()
