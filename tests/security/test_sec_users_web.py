"""Attacks on who decides (issue 13): a name written into the request, a shared token in a link or
a form, one operator overruling another, an auditor deciding, a disabled account, a guessed
password; plain HTTP beyond this machine; the web settings the audit log recorded.

Each decision must name the person who logged in, and only a supervisor may change another
person's decision (a correction naming both)."""

from __future__ import annotations

import io
import json
import ssl
import stat
from contextlib import asynccontextmanager
from pathlib import Path

import anyio
import pytest
from paths import CLIP, PEOPLE
from web_users import PASSWORDS, client, login, make_users

from lfr.audit import Kind, audit_records
from lfr.cli import main
from lfr.config import WebConfig, parse_config
from lfr.deployment import Deployment
from lfr.plugins import load_plugins
from lfr.users import UserStore
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist
from lfr.web import WebService
from lfr.web.tls import make_self_signed

LIMIT_S = 90
LOOPING_CLIP = {"name": "stage", "url": str(CLIP), "realtime": True, "loop": True, "fps_cap": 5}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


@pytest.fixture(scope="module")
def users(tmp_path_factory: pytest.TempPathFactory) -> UserStore:
    return make_users(tmp_path_factory.mktemp("users") / "users.json")


@asynccontextmanager
async def serving(deployment, service):  # type: ignore[no-untyped-def]
    async with anyio.create_task_group() as tg:
        tg.start_soon(deployment.run, False, [service.run])
        with anyio.fail_after(LIMIT_S):
            await service.wait_ready()
        try:
            yield service.url
        finally:
            deployment.stop()


async def first_alert(deployment):  # type: ignore[no-untyped-def]
    with anyio.fail_after(LIMIT_S):
        while not deployment.view.recent_alerts():  # noqa: ASYNC110 - no event for it
            await anyio.sleep(0.05)
    return deployment.view.recent_alerts()[0]


@pytest.mark.anyio
async def test_decisions_name_the_logged_in_user_over_tls(
    tmp_path: Path, bundle: Path, users: UserStore
) -> None:
    cert, key = make_self_signed(tmp_path / "tls", ["127.0.0.1"])
    config = parse_config({
        "name": "sec-web", "data_dir": str(tmp_path / "data"),
        "watchlist": {"bundle": str(bundle)}, "cameras": [LOOPING_CLIP],
        "notifiers": [{"kind": "jsonl"}],
        "web": {"listen": "127.0.0.1:0", "users_file": str(users.path),
                "tls_cert": str(cert), "tls_key": str(key)},
    }, "test")
    deployment = Deployment(config, load_plugins())
    service = WebService(config.web)
    trust = ssl.create_default_context(cafile=str(cert))
    async with serving(deployment, service) as url, \
            client(connector=_tls(trust)) as olive, client(connector=_tls(trust)) as otto, \
            client(connector=_tls(trust)) as sam, client(connector=_tls(trust)) as audrey, \
            client(connector=_tls(trust)) as anyone:
        assert url.startswith("https://127.0.0.1:")
        alert = await first_alert(deployment)
        decide = url + f"api/alerts/{alert.id}/decision"

        # a guessed password, an unknown name: refused alike, no cookie
        for name, password in (("olive", "olive-wrong-password"), ("mallory", "whatever-pw-1")):
            response = await login(anyone, url, name, password)
            assert response.status == 401 and "lfr_session" not in response.cookies
        # no credential at all
        async with anyone.post(decide, json={"decision": "confirmed"}) as r:
            assert r.status == 401

        response = await login(olive, url, "olive")
        assert response.status == 200
        assert response.cookies["lfr_session"]["secure"]  # under TLS the cookie stays on TLS
        for session, name in ((otto, "otto"), (sam, "sam"), (audrey, "audrey")):
            assert (await login(session, url, name)).status == 200

        # the body names someone else: ignored, the decision is olive's
        async with olive.post(decide, json={"decision": "false_alert",
                                            "operator": "Chief Inspector"}) as r:
            assert r.status == 200 and (await r.json())["operator"] == "olive"
        # a state change from a form (text/plain), or from another site's page: refused
        async with olive.post(decide, data='{"decision": "confirmed"}',
                              headers={"Content-Type": "text/plain"}) as r:
            assert r.status == 415
        async with olive.post(decide, json={"decision": "confirmed"},
                              headers={"Origin": "https://evil.example"}) as r:
            assert r.status == 403
        # another operator cannot overrule olive
        async with otto.post(decide, json={"decision": "confirmed"}) as r:
            assert r.status == 409 and "decided by olive" in (await r.json())["error"]
        # an auditor reads, never decides, and gets no live video
        async with audrey.get(url + "api/state") as r:
            assert r.status == 200 and (await r.json())["user"]["role"] == "auditor"
        async with audrey.post(decide, json={"decision": "confirmed"}) as r:
            assert r.status == 403
        async with audrey.post(url + "offer", json={"sdp": "", "type": "offer",
                                                    "camera": "stage"}) as r:
            assert r.status == 403
        # the supervisor corrects olive's decision: both names on the record
        async with sam.post(decide, json={"decision": "confirmed", "note": "checked ID"}) as r:
            assert r.status == 200 and (await r.json())["operator"] == "sam"

        # disabled while logged in: the next request is refused, and so is a new login
        UserStore(users.path).disable("otto")
        async with otto.get(url + "api/state") as r:
            assert r.status == 401
        assert (await login(otto, url, "otto")).status == 401
        assert deployment.view.decision(alert.id).operator == "sam"
    decisions = [r.data for r in audit_records(tmp_path / "data") if r.kind == Kind.ADJUDICATION]
    assert [(d["operator"], d["role"], d["decision"]) for d in decisions] == [
        ("olive", "operator", "false_alert"), ("sam", "supervisor", "confirmed")]
    assert "corrects" not in decisions[0]
    assert decisions[1]["corrects"] == {"operator": "olive", "decision": "false_alert",
                                        "time": decisions[0]["time"]}
    assert all("Chief Inspector" not in json.dumps(d) for d in decisions)
    (settings,) = [r.data for r in audit_records(tmp_path / "data")
                   if r.kind == Kind.WEB_SETTINGS]
    assert settings["tls"] is True and settings["auth"] == "users"


def _tls(context: ssl.SSLContext):  # type: ignore[no-untyped-def]
    import aiohttp

    return aiohttp.TCPConnector(ssl=context)


@pytest.mark.anyio
async def test_demo_token_only_in_a_header_never_in_the_address(
    tmp_path: Path, bundle: Path
) -> None:
    config = parse_config({
        "name": "sec-demo", "data_dir": str(tmp_path / "data"), "operator": "Desk",
        "watchlist": {"bundle": str(bundle)}, "cameras": [LOOPING_CLIP],
        "notifiers": [{"kind": "jsonl"}],
        "web": {"listen": "127.0.0.1:0", "demo_token": True},
    }, "test")
    deployment = Deployment(config, load_plugins())
    service = WebService(config.web)
    token = service.token
    assert token
    async with serving(deployment, service) as url, client() as http:
        alert = await first_alert(deployment)
        decide = url + f"api/alerts/{alert.id}/decision"
        # the valid token, in the query string (a link, a form's action): refused everywhere
        for method, path in (("GET", "api/state"), ("POST", f"api/alerts/{alert.id}/decision")):
            async with http.request(method, url + path, params={"token": token},
                                    json={"decision": "confirmed"}) as r:
                assert r.status == 400 and "never accepted" in (await r.json())["error"]
        # a plain form post with the token in a header still needs a JSON body
        bearer = {"Authorization": f"Bearer {token}"}
        async with http.post(decide, data="decision=confirmed", headers={
                **bearer, "Content-Type": "application/x-www-form-urlencoded"}) as r:
            assert r.status == 415
        async with http.post(decide, headers=bearer,
                             json={"decision": "confirmed", "operator": "Someone Else"}) as r:
            assert r.status == 200
            assert (await r.json())["operator"] == "Desk"
    records = list(audit_records(tmp_path / "data"))
    (decision,) = [r.data for r in records if r.kind == Kind.ADJUDICATION]
    assert decision["operator"] == "Desk" and decision["auth"] == "demo_token"
    (settings,) = [r.data for r in records if r.kind == Kind.WEB_SETTINGS]
    assert settings["auth"] == "demo_token"  # the demo mode is on the record


def test_plain_http_beyond_loopback_needs_the_explicit_setting(tmp_path: Path) -> None:
    for listen in ("0.0.0.0:8080", "[::]:8080", "192.0.2.7:8080", "viewer.example:443"):
        with pytest.raises(ValueError, match="allow_plain_http"):
            WebService(WebConfig(listen=listen))
    for listen in ("127.0.0.1:0", "127.0.0.2:0", "[::1]:0", "localhost:0"):
        WebService(WebConfig(listen=listen))
    cert, key = make_self_signed(tmp_path, ["viewer.example"])
    assert WebService(WebConfig(listen="0.0.0.0:8443", tls_cert=str(cert),
                                tls_key=str(key))).settings()["tls"] is True
    chosen = WebService(WebConfig(listen="0.0.0.0:8080", allow_plain_http=True)).settings()
    assert chosen["beyond_loopback"] is True and chosen["allow_plain_http"] is True
    with pytest.raises(ValueError, match="tls_cert and tls_key: set both or neither"):
        WebConfig(tls_cert=str(cert))


def _config_file(tmp_path: Path, bundle: Path, users: Path, web: str = "") -> Path:
    config = tmp_path / "site.toml"
    config.write_text(
        f'name = "site"\ndata_dir = "{tmp_path / "data"}"\n'
        f'[watchlist]\nbundle = "{bundle}"\n'
        f'[[cameras]]\nname = "stage"\nurl = "{CLIP}"\n'
        '[[notifiers]]\nkind = "jsonl"\n'
        f'[web]\nlisten = "127.0.0.1:8080"\nenabled = false\nusers_file = "{users}"\n{web}')
    return config


def test_the_effective_web_settings_are_audited(
    tmp_path: Path, bundle: Path, users: UserStore, capsys: pytest.CaptureFixture[str]
) -> None:
    config = _config_file(tmp_path, bundle, users.path)
    # beyond loopback in plain HTTP: refused before anything starts
    assert main(["run", str(config), "--once", "--web", "0.0.0.0:0"]) == 2
    assert "allow_plain_http" in capsys.readouterr().err
    assert not (tmp_path / "data").exists()
    # the config says 127.0.0.1:8080, disabled; the command line says otherwise: the log says
    # what ran
    assert main(["run", str(config), "--once", "--web", "127.0.0.1:0"]) == 0
    records = list(audit_records(tmp_path / "data"))
    (recorded,) = [r.data for r in records if r.kind == Kind.CONFIG]
    assert recorded["web"]["listen"] == "127.0.0.1:0" and recorded["web"]["enabled"] is True
    (settings,) = [r.data for r in records if r.kind == Kind.WEB_SETTINGS]
    assert settings["listen"] == "127.0.0.1:0"
    assert settings["url"].startswith("http://127.0.0.1:") and ":8080/" not in settings["url"]
    assert settings["allow_plain_http"] is False and settings["auth"] == "users"


def test_dashboard_login_refuses_auditors_disabled_users_and_wrong_passwords(
    tmp_path: Path, bundle: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    path = tmp_path / "users.json"
    store = make_users(path)
    store.disable("otto")
    config = _config_file(tmp_path, bundle, path)
    for user, password, why in (("audrey", PASSWORDS["audrey"], "auditor"),
                                ("otto", PASSWORDS["otto"], "disabled"),
                                ("olive", "not-olives-password", "wrong user name or password"),
                                ("nobody", "not-a-password", "wrong user name or password")):
        monkeypatch.setattr("sys.stdin", io.StringIO(password + "\n"))
        assert main(["run", str(config), "--dashboard", "--user", user,
                     "--password-stdin"]) == 2, user
        assert why in capsys.readouterr().err
    assert not (tmp_path / "data").exists()  # refused before the deployment started


def test_users_file_is_private_and_holds_no_password(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LFR_KEY_DIR", str(tmp_path / "keys"))  # the default place
    secret = "correct horse battery staple"
    monkeypatch.setattr("sys.stdin", io.StringIO(secret + "\n"))
    assert main(["users", "add", "Pat Smith", "--role", "supervisor", "--password-stdin"]) == 0
    path = tmp_path / "keys" / "users.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    text = path.read_text()
    assert secret not in text and "$argon2id$" in text
    capsys.readouterr()
    assert main(["users", "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert listed["users"] == [{"name": "Pat Smith", "role": "supervisor", "disabled": False,
                                "created": listed["users"][0]["created"]}]
    assert "argon2" not in json.dumps(listed)  # never the hashes
    # refused: a taken name, a short password, a role that does not exist, a markup name
    for argv, stdin, why in (
            (["Pat Smith", "--role", "operator"], secret, "exists already"),
            (["kim", "--role", "operator"], "short", "at least 10 characters"),
            (["[bold]kim", "--role", "operator"], secret, "user name")):
        monkeypatch.setattr("sys.stdin", io.StringIO(stdin + "\n"))
        assert main(["users", "add", *argv, "--password-stdin"]) == 2
        assert why in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["users", "add", "kim", "--role", "admin", "--password-stdin"])
    assert main(["users", "disable", "Pat Smith"]) == 0
    assert UserStore(path).users()["Pat Smith"].disabled
    assert main(["users", "disable", "nobody"]) == 2
    # a users file others can read is refused, not used
    path.chmod(0o644)
    assert main(["users", "list"]) == 2
    assert "open to other users" in capsys.readouterr().err


def test_make_cert_writes_a_pair_the_viewer_loads(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["web", "make-cert", "--out", str(tmp_path / "tls"), "--host", "127.0.0.1",
                 "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert stat.S_IMODE(Path(out["tls_key"]).stat().st_mode) == 0o600
    service = WebService(WebConfig(listen="0.0.0.0:8443", tls_cert=out["tls_cert"],
                                   tls_key=out["tls_key"]))
    assert service.ssl_context is not None
    # a key that does not match the certificate is a clear error naming both files
    other = make_self_signed(tmp_path / "other")[1]
    with pytest.raises(ValueError, match="cannot load the certificate and key"):
        WebService(WebConfig(tls_cert=out["tls_cert"], tls_key=str(other)))
