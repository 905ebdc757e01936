"""The browser viewer: access control, blurred video, latest-frame slots, WebRTC to a real peer."""

from __future__ import annotations

import logging
import socket
import time
from types import SimpleNamespace

import aiohttp
import anyio
import cv2
import msgspec
import numpy as np
import pytest
from aiortc import RTCPeerConnection, RTCSessionDescription
from paths import CLIP, PEOPLE, SCENES
from services import LIMIT_S, running
from web_users import client, login, make_users

import lfr.web.tracks
from lfr.audit import audit_records
from lfr.config import WebConfig, parse_config
from lfr.deployment import Deployment
from lfr.listening import Listening
from lfr.matching import MatchResult
from lfr.messages import Detection, Face, Frame, FrameFaces
from lfr.notify.outbox import Outbox
from lfr.pipeline.matcher import FrameReport
from lfr.plugins import load_plugins
from lfr.vision.defaults import default_analyzer
from lfr.vision.privacy import padded_box
from lfr.watchlist import build_watchlist
from lfr.web import TooManyViewers, WebService, ice_host_addresses
from lfr.web.tracks import FaceMark, render


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    path = tmp_path_factory.mktemp("wl") / "bundle"
    build_watchlist(PEOPLE, path, default_analyzer())
    return path


@pytest.fixture(scope="module")
def users(tmp_path_factory):
    return make_users(tmp_path_factory.mktemp("users") / "users.json")


def make_config(tmp_path, bundle, camera, **web):
    return parse_config(
        {
            "name": "web",
            "data_dir": str(tmp_path / "data"),
            "watchlist": {"bundle": str(bundle)},
            "cameras": [camera],
            "notifiers": [{"kind": "jsonl"}],
            "web": {"listen": "127.0.0.1:0", **web},
        },
        "test",
    )


LOOPING_CLIP = {"name": "stage", "url": str(CLIP), "realtime": True, "loop": True, "fps_cap": 5}


async def wait_for(predicate):
    """Polls state that other tasks and threads change (bounded, not a timing assertion)."""
    with anyio.fail_after(LIMIT_S):
        while not predicate():  # noqa: ASYNC110 - no event to wait on for these conditions
            await anyio.sleep(0.05)


# -- configuration -----------------------------------------------------------------------------


def test_listen_is_parsed_and_localhost_by_default():
    def parse(listen: str) -> tuple[str, int]:
        where = Listening("web.listen", listen)
        return where.host, where.port

    assert parse(WebConfig().listen)[0] == "127.0.0.1"
    assert parse("0.0.0.0:9000") == ("0.0.0.0", 9000)
    assert parse("[::1]:0") == ("::1", 0)
    for bad in ("8080", "host:", "host:http", "host:70000"):
        with pytest.raises(ValueError, match=r"web\.listen"):
            parse(bad)
    with pytest.raises(ValueError, match=r"web.ice_addresses\[1\]: not an IP address"):
        WebService(WebConfig(ice_addresses=["127.0.0.1", "eth0"]))
    assert WebService(WebConfig()).token is None  # named users; no shared token
    generated = WebService(WebConfig(demo_token=True))
    assert len(generated.token) >= 32 and generated.token_generated
    assert generated.token not in repr(generated)
    assert WebService(WebConfig(demo_token=True, token="s3cret")).token == "s3cret"
    with pytest.raises(ValueError, match="token: a shared token is the demo mode only"):
        WebConfig(token="s3cret")


# -- what a viewer sees ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene():
    image = cv2.imread(str(SCENES / "kit_with_rose.jpg"))
    boxes = [f.detection.box for f in default_analyzer().detect(image)]
    assert len(boxes) == 2
    return image, boxes


def inner(image, box, margin=4):
    x, y, w, h = (round(v) for v in box)
    return image[y + margin : y + h - margin, x + margin : x + w - margin].astype(np.float64)


def detail(region):
    """High-frequency energy: what identifies a face, and what blurring must remove."""
    return cv2.Laplacian(region, cv2.CV_64F).var()


def test_non_matching_face_is_blurred_and_matching_face_is_not(scene):
    image, (other, listed) = scene
    original = image.copy()
    out = render(image, (FaceMark(other, None, 0.0), FaceMark(listed, "Rose Leslie", 0.71)), True)
    assert np.array_equal(image, original)  # the pipeline's frame is never drawn on
    before, after = inner(image, other), inner(out, other)
    assert detail(after) < 0.02 * detail(before)
    assert after.var() < before.var()
    assert np.abs(after - before).mean() > 10
    # the whole padded box is covered, not only the detector's box
    x0, y0, x1, _ = padded_box(other, image.shape)
    ring = out[y0 : y0 + 6, x0:x1].astype(np.float64)
    assert detail(ring) < 0.2 * detail(image[y0 : y0 + 6, x0:x1].astype(np.float64))
    # the match is left as it is (inside its box outline), with a label above it
    assert np.array_equal(inner(out, listed), inner(image, listed))
    x, y, _, _ = (round(v) for v in listed)
    label_area = (slice(max(0, y - 20), y), slice(x, x + 60))
    assert not np.array_equal(out[label_area], image[label_area])


def test_blur_can_be_turned_off(scene):
    image, (other, _) = scene
    out = render(image, (FaceMark(other, None, 0.0),), False)
    assert np.array_equal(inner(out, other), inner(image, other))


def test_wide_frames_are_scaled_down_for_encoding():
    image = np.zeros((1080, 1920, 3), np.uint8)
    out = render(image, (FaceMark((960.0, 540.0, 100.0, 120.0), "X", 0.9),), True)
    assert out.shape == (720, 1280, 3)


# -- latest-frame slots ------------------------------------------------------------------------


def synthetic(camera, index, faces=()):
    image = np.full((72, 128, 3), index % 256, np.uint8)
    return FrameFaces(Frame(camera, index, time.time(), time.monotonic(), image), tuple(faces))


def report(item, persons=()):
    """What the deployment's frame broadcast carries for ``item``."""
    return FrameReport(item, list(persons), [], time.monotonic())


@pytest.mark.anyio
async def test_stalled_viewer_skips_frames_and_never_holds_up_the_others(monkeypatch):
    renders = []
    original = lfr.web.tracks.render

    def counting_render(*args):
        renders.append(args[0])
        return original(*args)

    monkeypatch.setattr(lfr.web.tracks, "render", counting_render)
    service = WebService(WebConfig(max_viewers_per_camera=3))
    service.on_frame(report(synthetic("cam", 0)))
    readers = [service.open_viewer("cam") for _ in range(2)]
    stalled = service.open_viewer("cam")
    with pytest.raises(TooManyViewers, match="max_viewers_per_camera = 3"):
        service.open_viewer("cam")
    await stalled.recv()  # takes the first frame, then never asks again
    received = {r.viewer_id: 0 for r in readers}

    async def read(track):
        while True:
            frame = await track.recv()
            assert (frame.width, frame.height) == (128, 72)
            received[track.viewer_id] += 1

    published = 1
    async with anyio.create_task_group() as tg:
        for reader in readers:
            tg.start_soon(read, reader)
        for index in range(1, 40):
            # the "pipeline": a plain call that returns at once whatever the viewers do
            service.on_frame(report(synthetic("cam", index)))
            published += 1
            await wait_for(lambda n=published: all(r.taken_seq == n for r in readers))
        tg.cancel_scope.cancel()
    stats = {v.id: v for v in service.statistics().viewers}
    assert stats[stalled.viewer_id].dropped == published - 2  # all but the one it took, the last
    assert stats[stalled.viewer_id].frames_sent == 1
    for reader in readers:
        assert stats[reader.viewer_id].dropped == 0
        assert received[reader.viewer_id] >= published - 1
    assert len(renders) <= published  # drawn once per frame, not once per viewer


@pytest.mark.anyio
async def test_pipeline_keeps_going_with_a_stalled_viewer(tmp_path, bundle):
    camera = {"name": "clip", "url": str(CLIP), "fps_cap": 8, "realtime": True}
    config = make_config(tmp_path, bundle, camera)
    deployment = Deployment(config, load_plugins(), once=True)
    service = WebService(config.web)
    summary = {}
    done = anyio.Event()

    async def run():
        summary["s"] = await deployment.run(False, [service.run])
        done.set()

    async def read(track):
        while True:
            await track.recv()

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(LIMIT_S):
            await service.wait_ready()
        readers = [service.open_viewer("clip") for _ in range(2)]
        stalled = service.open_viewer("clip")
        for reader in readers:
            tg.start_soon(read, reader)
        with anyio.fail_after(LIMIT_S):
            await stalled.recv()
            await done.wait()
        tg.cancel_scope.cancel()
    result = summary["s"]
    feed = stalled.feed
    assert result.frames > 20
    assert feed.latest.seq == result.frames  # every frame the matcher finished was published
    # every frame that reached the detector was processed: nothing waited on a viewer
    assert result.frames == result.cameras["clip"]["frames_emitted"] - result.dropped_frames
    assert stalled.dropped == feed.latest.seq - stalled.taken_seq - 1 > 10
    assert stalled.frames_sent == 1
    assert all(r.frames_sent > 0 for r in readers)


# -- HTTP: access control, alerts, decisions ---------------------------------------------------


@pytest.mark.anyio
async def test_login_guards_everything_and_decisions_reach_the_audit_log(
    tmp_path, bundle, users, capsys, caplog
):
    caplog.set_level(logging.INFO, logger="lfr.web")
    config = make_config(tmp_path, bundle, LOOPING_CLIP, users_file=str(users.path))
    deployment = Deployment(config, load_plugins())
    service = WebService(config.web)
    async with running(deployment, service), client() as http:
        url = service.url
        assert url.startswith("http://127.0.0.1:")
        await wait_for(lambda: deployment.view.recent_alerts())
        alert = deployment.view.recent_alerts()[0]
        assert alert.person_id == "lin_manuel_miranda"
        guarded = [
            ("GET", "api/state"),
            ("GET", "api/alerts"),
            ("GET", "api/events"),
            ("GET", "api/me"),
            ("GET", f"api/alerts/{alert.id}/crop.jpg"),
            ("GET", f"api/alerts/{alert.id}/watchlist.jpg"),
            ("POST", "offer"),
            ("POST", f"api/alerts/{alert.id}/decision"),
            ("POST", "api/viewers/abc/close"),
        ]
        for method, path in guarded:
            for kwargs in (
                {},
                {"headers": {"Authorization": "Bearer wrong"}},
                {"cookies": {"lfr_session": "forged"}},
            ):
                async with http.request(method, url + path, json={}, **kwargs) as r:
                    assert r.status == 401, (method, path, kwargs)
                    assert "not logged in" in (await r.json())["error"]
        # the page sends the browser to the login page; the login page and code are public
        async with http.get(url, allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "login"
        async with http.get(url + "login") as r:
            assert r.status == 200 and "static/login.js" in await r.text()
            assert r.headers["Referrer-Policy"] == "no-referrer"
        async with http.get(url + "static/app.js") as r:
            assert r.status == 200

        response = await login(http, url, "olive")
        assert response.status == 200
        cookie = response.cookies["lfr_session"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict"
        assert not cookie["secure"]  # plain HTTP on loopback: a Secure cookie would not return
        async with http.get(url) as r:
            assert r.status == 200 and "static/app.js" in await r.text()
        async with http.get(url + "api/state") as r:
            assert r.status == 200
            state = await r.json()
        assert [c["name"] for c in state["cameras"]] == ["stage"]
        assert state["user"] == {"name": "olive", "role": "operator", "auth": "password"}
        assert state["blur_non_matches"] is True
        for which, data in (("crop", alert.crop_jpeg), ("watchlist", alert.watchlist_jpeg)):
            async with http.get(url + f"api/alerts/{alert.id}/{which}.jpg") as r:
                assert r.status == 200 and r.content_type == "image/jpeg"
                assert await r.read() == data
        async with http.get(url + "api/alerts/0123/crop.jpg") as r:
            assert r.status == 404

        # the live stream starts with the state and the recent alerts
        async with http.get(url + "api/events") as r:
            assert r.status == 200 and r.content_type == "text/event-stream"
            seen = b""
            with anyio.fail_after(LIMIT_S):
                while alert.id.encode() not in seen:
                    seen += await r.content.readany()
            assert b"event: state" in seen and b"event: alert" in seen

        decision_url = url + f"api/alerts/{alert.id}/decision"
        async with http.post(decision_url, json={"decision": "maybe"}) as r:
            assert r.status == 400 and "decision must be one of" in (await r.json())["error"]
        async with http.post(url + "api/alerts/nope/decision", json={"decision": "confirmed"}) as r:
            assert r.status == 404
        async with http.post(decision_url, json={"decision": "confirmed"}) as r:
            assert r.status == 200
            assert (await r.json())["operator"] == "olive"
        async with http.get(url + "api/state") as r:
            counters = (await r.json())["counters"]
        assert counters["confirmed"] == 1
        # images past their retention are gone from the page too
        with Outbox(tmp_path / "data") as outbox:  # as retention would, in its own connection
            outbox.purge_images(0.0, now=time.time() + 1)
        async with http.get(url + f"api/alerts/{alert.id}/crop.jpg") as r:
            assert r.status == 404 and "purged" in (await r.json())["error"]
        # logged out: the session is gone on the server, not only in the browser
        async with http.post(url + "api/logout", json={}) as r:
            assert r.status == 200
        async with http.get(url + "api/state", cookies={"lfr_session": cookie.value}) as r:
            assert r.status == 401
    records = list(audit_records(tmp_path / "data"))
    audit = [r for r in records if r.kind == "adjudication"]
    assert [(r.data["alert_id"], r.data["decision"], r.data["operator"], r.data["role"])
            for r in audit] == [(alert.id, "confirmed", "olive", "operator")]
    (settings,) = [r.data for r in records if r.kind == "web_settings"]
    assert settings["url"] == url and settings["auth"] == "users"
    assert settings["tls"] is False and settings["beyond_loopback"] is False
    assert "olive-operator-pw" not in capsys.readouterr().err
    assert any("/api/state" in m for m in caplog.messages)  # access is logged ...
    assert any("olive (operator) logged in" in m for m in caplog.messages)
    assert not any(cookie.value in m for m in caplog.messages)  # ... without the session id


# -- WebRTC to a real peer ---------------------------------------------------------------------


async def offer(http, url, token, camera):
    """An aiortc client's offer, gathered on 127.0.0.1 only; returns (pc, response, body)."""
    pc = RTCPeerConnection()
    pc.addTransceiver("video", direction="recvonly")
    with ice_host_addresses(["127.0.0.1"]):
        await pc.setLocalDescription(await pc.createOffer())
    payload = {"sdp": pc.localDescription.sdp, "type": "offer", "camera": camera}
    headers = {"Authorization": f"Bearer {token}"}  # the demo mode's shared token
    async with http.post(url + "offer", headers=headers, json=payload) as r:
        return pc, r.status, await r.json()


def host_candidates(sdp):
    return [
        line.split()[4]
        for line in sdp.splitlines()
        if line.startswith("a=candidate:") and " typ host" in line
    ]


@pytest.mark.anyio
async def test_real_webrtc_peer_receives_frames_and_the_viewer_cap_holds(tmp_path, bundle):
    config = make_config(
        tmp_path, bundle, LOOPING_CLIP, max_viewers_per_camera=1, ice_addresses=["127.0.0.1"],
        demo_token=True,
    )
    deployment = Deployment(config, load_plugins())
    service = WebService(config.web)
    tracks = []
    async with running(deployment, service), aiohttp.ClientSession() as http:
        url, token = service.url, service.token
        pc, status, answer = await offer(http, url, token, "stage")
        pc.on("track", tracks.append)
        assert status == 200, answer
        assert host_candidates(answer["sdp"]) == ["127.0.0.1"]  # pinned, loopback included
        await pc.setRemoteDescription(RTCSessionDescription(answer["sdp"], answer["type"]))
        await wait_for(lambda: tracks)
        pts = []
        with anyio.fail_after(LIMIT_S):
            while len(pts) < 8:
                frame = await tracks[0].recv()
                assert (frame.width, frame.height) == (640, 360)
                pts.append(frame.pts)
        assert pts == sorted(pts)

        second, status, body = await offer(http, url, token, "stage")
        assert status == 429
        assert "already has 1 viewers" in body["error"]
        assert "max_viewers_per_camera" in body["error"]
        await second.close()
        unknown, status, body = await offer(http, url, token, "nowhere")
        assert status == 404 and "cameras: stage" in body["error"]
        await unknown.close()
        (viewer,) = service.statistics().viewers
        assert viewer.id == answer["viewer"] and viewer.frames_sent >= 8

        # the viewer leaves: its slot frees up and the next one gets in
        await pc.close()
        await wait_for(lambda: not service.statistics().viewers)
        third, status, body = await offer(http, url, token, "stage")
        assert status == 200, body
        await third.close()
    assert not service._peers  # every peer connection closed at shutdown
    assert deployment.frames.statistics().subscribers == ()  # unsubscribed at stop
    assert msgspec.to_builtins(service.statistics())["refused"] == 1


def test_frame_listener_keeps_no_face_data():
    service = WebService(WebConfig())
    box = (10.0, 10.0, 20.0, 24.0)
    face = Face(
        camera="cam",
        frame_index=0,
        wall_time=0.0,
        mono_time=0.0,
        detection=Detection(box, ((0.0, 0.0),) * 5, 0.9),
        quality=1.0,
        embedding=np.ones(128, np.float32),
        crop=np.ones((8, 8, 3), np.uint8),
    )
    item = synthetic("cam", 1, [face, face])
    service.on_frame(report(item, [None, MatchResult("p", 0.8, ())]))
    shot = service._feeds["cam"].latest
    assert shot.marks == (FaceMark(box, None, 0.0), FaceMark(box, "p", 0.8))
    assert shot.image is item.frame.image  # a reference: no copy, no drawing in the pipeline
    # faces that the quality gate turned away are blurred like any other non-match
    with_rejected = SimpleNamespace(frame=item.frame, faces=(), rejected=(face.detection,))
    service.on_frame(report(with_rejected))
    assert service._feeds["cam"].latest.marks == (FaceMark(box, None, 0.0),)


@pytest.mark.anyio
async def test_a_taken_port_is_a_clear_error(tmp_path, bundle):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = make_config(tmp_path, bundle, LOOPING_CLIP)
        deployment = Deployment(config, load_plugins())
        service = WebService(WebConfig(listen=f"127.0.0.1:{port}"))
        with pytest.raises(OSError, match=rf"web.listen 127.0.0.1:{port}: cannot listen"):
            await service.run(deployment.view)
    # unsubscribed again
    assert deployment.frames.statistics().subscribers == ()
    assert deployment.alerts.statistics().subscribers == ()
