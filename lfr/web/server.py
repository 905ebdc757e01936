"""The supervisors' browser viewer: live video over WebRTC (aiortc), alerts, decisions (aiohttp).

Everything but the static page code needs the token (``?token=`` or ``Authorization: Bearer``).
Frames reach viewers through per-camera latest-frame slots (lfr.web.tracks): the pipeline's
listener only stores a reference; drawing, blurring and encoding happen on the viewers' side.
"""

from __future__ import annotations

import contextlib
import contextvars
import hmac
import ipaddress
import logging
import secrets
import sys
import uuid
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from anyio.streams.memory import MemoryObjectSendStream

from lfr.config import WebConfig
from lfr.runtime.broadcast import Subscription
from lfr.web.tracks import CameraFeed, FaceMark, Shot, ViewerStats, ViewerTrack

if TYPE_CHECKING:
    from lfr.deployment import DeploymentView, FrameReport
    from lfr.messages import Alert

log = logging.getLogger("lfr.web")

STATIC = Path(__file__).parent / "static"
EVENT_BUFFER = 256  # per alert-stream client; a client this far behind is dropped and reconnects
STATE_EVERY_S = 1.0  # the alert stream pushes the cameras and counters this often
RENDER_THREADS = 2  # worker threads drawing frames for viewers, all cameras together
_ID = r"[0-9A-Za-z_-]{1,64}"


class TooManyViewers(Exception):
    """The camera already has max_viewers_per_camera viewers."""


class WebStats(msgspec.Struct, frozen=True):
    url: str | None
    viewers: tuple[ViewerStats, ...]
    refused: int  # offers refused by the viewer cap
    event_clients: int


def parse_listen(listen: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8080`` for IPv6) -> (host, port)."""
    host, sep, port = listen.rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ValueError(f"web.listen: expected HOST:PORT (port 0-65535), got {listen!r}")
    return host, int(port)


# -- ICE host addresses ------------------------------------------------------------------------
# aioice gathers host candidates from every interface except loopback, and offers no option to
# choose them (aiortc/aioice#2, #57). lfr wraps aioice's module-level get_host_addresses once; the
# wrapper answers from a context variable when one is set, so only the peer connections that lfr
# negotiates inside ice_host_addresses() are affected, and anything else in the process is not.

_PINNED: contextvars.ContextVar[tuple[str, ...] | None] = contextvars.ContextVar(
    "lfr_ice_host_addresses", default=None
)
_hooked = False


def _install_ice_hook() -> None:
    global _hooked
    if _hooked:
        return
    import aioice.ice

    original: Callable[[bool, bool], list[str]] | None = getattr(
        aioice.ice, "get_host_addresses", None
    )
    if original is None:  # pragma: no cover - guards an aioice upgrade
        raise RuntimeError("web.ice_addresses: this aioice has no get_host_addresses to pin")
    gather: Callable[[bool, bool], list[str]] = original

    def get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
        pinned = _PINNED.get()
        if pinned is None:
            return gather(use_ipv4, use_ipv6)
        return [
            a for a in pinned if (use_ipv4 if ipaddress.ip_address(a).version == 4 else use_ipv6)
        ]

    aioice.ice.get_host_addresses = get_host_addresses
    _hooked = True


@contextlib.contextmanager
def ice_host_addresses(addresses: Sequence[str]) -> Iterator[None]:
    """Peer connections that gather candidates in this context (setLocalDescription) offer
    exactly these host addresses (127.0.0.1 included); empty: aioice's choice (all but loopback).
    """
    if not addresses:
        yield
        return
    _install_ice_hook()
    token = _PINNED.set(tuple(addresses))
    try:
        yield
    finally:
        _PINNED.reset(token)


# -- HTTP plumbing -----------------------------------------------------------------------------


class _AccessLogger(AbstractAccessLogger):
    """Path without the query string: the token must not reach the logs."""

    def log(self, request: web.BaseRequest, response: web.StreamResponse, time: float) -> None:
        self.logger.info("%s %s %d %.3fs", request.method, request.path, response.status, time)


def _json(data: Any, status: int = 200) -> web.Response:
    return web.Response(
        body=msgspec.json.encode(data), status=status, content_type="application/json"
    )


def _error(status: int, message: str) -> web.Response:
    return _json({"error": message}, status)


def _sse(event: str, data: Any) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + msgspec.json.encode(data) + b"\n\n"


_SECURITY_HEADERS = {
    "Referrer-Policy": "no-referrer",  # page URLs carry the token
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
        "connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    ),
}


class WebService:
    """``await WebService(config.web).run(deployment)`` beside the pipeline (a deployment service).

    ``url`` is the bound address once ``wait_ready()`` returns (port 0 picks a free port).
    """

    def __init__(self, config: WebConfig, operator: str | None = None) -> None:
        self.config = config
        self.operator = operator
        self.host, self.port = parse_listen(config.listen)
        for i, address in enumerate(config.ice_addresses):
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(
                    f"web.ice_addresses[{i}]: not an IP address: {address!r}"
                ) from None
        self.token = config.token or secrets.token_urlsafe(24)
        self.token_generated = not config.token
        self.url: str | None = None
        self.deployment: DeploymentView | None = None
        self.blur_non_matches = True
        self.refused = 0
        self._feeds: dict[str, CameraFeed] = {}
        self._peers: dict[str, tuple[RTCPeerConnection, ViewerTrack]] = {}
        self._subscribers: set[MemoryObjectSendStream[bytes]] = set()
        self._ready: anyio.Event | None = None
        self._limiter: anyio.CapacityLimiter | None = None
        self._closing = False
        self._cameras: frozenset[str] | None = None  # None: any camera (no deployment attached)

    def __repr__(self) -> str:
        return f"WebService(listen={self.config.listen!r}, url={self.url!r}, token=***)"

    # -- wiring into the deployment ----------------------------------------------------------

    def attach(self, deployment: DeploymentView) -> None:
        """Serve this deployment (run() does this)."""
        self.deployment = deployment
        self.blur_non_matches = deployment.blur_non_matches
        # Cameras only: stills (--photos) would each keep a slot holding their image.
        self._cameras = frozenset(deployment.cameras)

    async def _take_frames(self, frames: Subscription[FrameReport]) -> None:
        async for report in frames:
            self.on_frame(report)

    async def _take_alerts(self, alerts: Subscription[Alert]) -> None:
        async for alert in alerts:
            self.on_alert(alert)

    def _feed(self, camera: str) -> CameraFeed:
        feed = self._feeds.get(camera)
        if feed is None:
            if self._limiter is None:
                self._limiter = anyio.CapacityLimiter(RENDER_THREADS)
            feed = self._feeds[camera] = CameraFeed(camera, self.blur_non_matches, self._limiter)
        return feed

    def on_frame(self, report: FrameReport) -> None:
        """A frame that went through detection and matching: keeps a reference to the frame and
        the boxes only (no face crop or embedding); the drawing happens when a viewer takes it.
        """
        item, results = report.faces, report.persons
        if self._cameras is not None and item.frame.camera not in self._cameras:
            return
        deployment = self.deployment
        marks = []
        for i, face in enumerate(item.faces):
            result = results[i] if i < len(results) else None
            if result is None:
                marks.append(FaceMark(face.detection.box, None, 0.0))
            else:
                name = deployment.person_name(result.person_id) if deployment else result.person_id
                marks.append(FaceMark(face.detection.box, name, result.score))
        # Faces the quality gate turned away (too small, blurred) are not matches either.
        for detection in item.rejected:
            marks.append(FaceMark(detection.box, None, 0.0))
        self._feed(item.frame.camera).publish(item.frame.image, item.frame.mono_time, tuple(marks))

    def on_alert(self, alert: Alert) -> None:
        self._broadcast(_sse("alert", self._alert_json(alert)))

    # -- viewers -----------------------------------------------------------------------------

    def latest(self, camera: str) -> Shot | None:
        """The newest frame published for ``camera`` (with its face marks), if any."""
        feed = self._feeds.get(camera)
        return feed.latest if feed else None

    def cameras(self) -> list[str]:
        names = list(self.deployment.cameras) if self.deployment else []
        return names + sorted(n for n in self._feeds if n not in names)

    def open_viewer(self, camera: str) -> ViewerTrack:
        """A new viewer's track on ``camera``; TooManyViewers past the cap, KeyError if unknown."""
        if camera not in self.cameras():
            raise KeyError(f"no camera {camera!r}; cameras: {', '.join(self.cameras())}")
        feed = self._feed(camera)
        cap = self.config.max_viewers_per_camera
        if len(feed.viewers) >= cap:
            self.refused += 1
            raise TooManyViewers(
                f"camera {camera!r} already has {len(feed.viewers)} viewers, the most allowed "
                f"(web.max_viewers_per_camera = {cap}: each viewer costs its own video encoder); "
                "close another viewer of this camera or raise the setting"
            )
        track = ViewerTrack(feed, uuid.uuid4().hex[:12])
        feed.viewers[track.viewer_id] = track
        return track

    async def close_viewer(self, viewer_id: str) -> bool:
        entry = self._peers.pop(viewer_id, None)
        if entry is None:
            return False
        pc, track = entry
        track.stop()
        await pc.close()
        return True

    def statistics(self) -> WebStats:
        viewers = tuple(
            v.statistics() for feed in self._feeds.values() for v in feed.viewers.values()
        )
        return WebStats(
            url=self.url,
            viewers=viewers,
            refused=self.refused,
            event_clients=len(self._subscribers),
        )

    # -- alert stream ------------------------------------------------------------------------

    def _broadcast(self, message: bytes) -> None:
        for send in list(self._subscribers):
            try:
                send.send_nowait(message)
            except anyio.WouldBlock:
                # Far behind: end its stream; the page reconnects and reloads the recent alerts.
                self._subscribers.discard(send)
                send.close()
            except (anyio.BrokenResourceError, anyio.ClosedResourceError):
                self._subscribers.discard(send)

    def _alert_json(self, alert: Alert) -> dict[str, Any]:
        data = alert.summary()
        data["category"] = alert.category
        decided = self.deployment.decision(alert.id) if self.deployment else None
        data["decision"] = decided.decision if decided else None
        data["operator"] = decided.operator if decided else None
        data["crop_url"] = f"api/alerts/{alert.id}/crop.jpg"
        data["watchlist_url"] = f"api/alerts/{alert.id}/watchlist.jpg"
        return data

    def state(self) -> dict[str, Any]:
        """What the page shows besides video and alerts: cameras, counters, viewers."""
        deployment = self._running()
        snap = deployment.snapshot()
        cameras = []
        by_name = {s.name: s for s in snap.actors if s.kind == "camera"}
        for name in self.cameras():
            stats = by_name.get(name)
            feed = self._feeds.get(name)
            cameras.append(
                {
                    "name": name,
                    "state": getattr(stats, "source_state", stats.state) if stats else "unknown",
                    "fps": round(getattr(stats, "fps_out", 0.0), 1) if stats else 0.0,
                    "width": getattr(stats, "width", None),
                    "height": getattr(stats, "height", None),
                    "frames_shown": feed.latest.seq if feed and feed.latest else 0,
                    "viewers": len(feed.viewers) if feed else 0,
                }
            )
        counters = msgspec.to_builtins(snap.counters)
        counters["false_alerts_per_1000_faces"] = round(
            snap.counters.false_alerts_per_1000_faces, 3
        )
        return {
            "name": snap.name,
            "location": snap.location,
            "threshold": snap.threshold,
            "watchlist_size": snap.watchlist_size,
            "running_s": round(snap.running_s, 1),
            "operator": self.operator or snap.operator,
            "blur_non_matches": self.blur_non_matches,
            "max_viewers_per_camera": self.config.max_viewers_per_camera,
            "stun_servers": list(self.config.stun_servers),
            "counters": counters,
            "cameras": cameras,
            "viewers": msgspec.to_builtins(self.statistics().viewers),
            "decisions": {k: v.decision for k, v in deployment.decisions().items()},
        }

    # -- handlers ----------------------------------------------------------------------------

    def _running(self) -> DeploymentView:
        if self.deployment is None:
            raise web.HTTPServiceUnavailable(text="no deployment attached")
        return self.deployment

    def _authorised(self, request: web.Request) -> bool:
        supplied = request.query.get("token")
        if supplied is None:
            scheme, _, value = request.headers.get("Authorization", "").partition(" ")
            supplied = value.strip() if scheme.lower() == "bearer" else None
        return supplied is not None and hmac.compare_digest(supplied.encode(), self.token.encode())

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        # The page's code and style carry no data; everything else needs the token.
        if not request.path.startswith("/static/") and not self._authorised(request):
            response = _error(
                401,
                "missing or wrong token: open the URL printed at start "
                "(?token=...) or send Authorization: Bearer <token>",
            )
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        return await handler(request)

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(_SECURITY_HEADERS)
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _state(self, request: web.Request) -> web.Response:
        return _json(self.state())

    async def _alerts(self, request: web.Request) -> web.Response:
        deployment = self._running()
        return _json([self._alert_json(a) for a in reversed(deployment.recent_alerts())])

    async def _find_alert(self, alert_id: str) -> Alert | None:
        # From the outbox, not the in-memory recent alerts: it is where retention blanks images.
        return await anyio.to_thread.run_sync(self._running().get_alert, alert_id)

    async def _image(self, request: web.Request) -> web.Response:
        alert = await self._find_alert(request.match_info["alert_id"])
        if alert is None:
            return _error(404, "no such alert in this deployment")
        which = request.match_info["which"]
        data = alert.crop_jpeg if which == "crop" else alert.watchlist_jpeg
        if not data:
            return _error(404, f"the {which} image of this alert was purged (retention)")
        return web.Response(body=data, content_type="image/jpeg")

    async def _decision(self, request: web.Request) -> web.Response:
        deployment = self._running()
        alert_id = request.match_info["alert_id"]
        try:
            body = await request.json()
        except ValueError:
            return _error(400, "expected a JSON body {decision, operator?, note?}")
        if not isinstance(body, dict) or not isinstance(body.get("decision"), str):
            return _error(400, "expected a JSON body {decision, operator?, note?}")
        operator = body.get("operator")
        note = body.get("note", "")
        if operator is not None and not isinstance(operator, str):
            return _error(400, "operator: must be a string")
        if not isinstance(note, str):
            return _error(400, "note: must be a string")
        operator = (operator or "").strip()[:100] or self.operator
        try:
            # In the event loop thread, like the pipeline's own updates of the counters.
            adjudication = deployment.adjudicate(
                alert_id, body["decision"], operator=operator, note=note[:1000]
            )
        except ValueError as exc:
            return _error(400, str(exc))
        except KeyError:
            return _error(404, f"no alert {alert_id!r} in this deployment")
        except RuntimeError as exc:
            return _error(503, str(exc))
        data = msgspec.to_builtins(adjudication)
        self._broadcast(_sse("decision", data))
        return _json(data)

    async def _offer(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("sdp", "type", "camera")
        ):
            return _error(400, "expected a JSON body {sdp, type, camera}")
        if body["type"] != "offer":
            return _error(400, f"type: expected 'offer', got {body['type']!r}")
        try:
            track = self.open_viewer(body["camera"])
        except KeyError as exc:
            return _error(404, str(exc.args[0]))
        except TooManyViewers as exc:
            return _error(429, str(exc))
        servers = [RTCIceServer(urls=url) for url in self.config.stun_servers]
        pc = RTCPeerConnection(RTCConfiguration(iceServers=servers))
        viewer_id = track.viewer_id
        self._peers[viewer_id] = (pc, track)

        @pc.on("connectionstatechange")
        async def on_state() -> None:
            if pc.connectionState in ("failed", "closed"):
                try:
                    await self.close_viewer(viewer_id)
                except Exception:  # pragma: no cover - logged, the peer is gone anyway
                    log.exception("closing viewer %s", viewer_id)

        try:
            with ice_host_addresses(self.config.ice_addresses):
                await pc.setRemoteDescription(RTCSessionDescription(sdp=body["sdp"], type="offer"))
                if not any(t.kind == "video" for t in pc.getTransceivers()):
                    raise ValueError("the offer has no video section")
                pc.addTrack(track)
                await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:
            await self.close_viewer(viewer_id)
            return _error(400, f"cannot answer this offer: {exc}")
        log.info("viewer %s on camera %s", viewer_id, track.feed.camera)
        answer = pc.localDescription
        return _json({"sdp": answer.sdp, "type": answer.type, "viewer": viewer_id})

    async def _close(self, request: web.Request) -> web.Response:
        closed = await self.close_viewer(request.match_info["viewer_id"])
        return _json({"closed": closed})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``state`` every second, ``alert`` and ``decision`` as they happen
        (the recent alerts first, so a reconnecting page misses nothing)."""
        deployment = self._running()
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        send, receive = anyio.create_memory_object_stream[bytes](EVENT_BUFFER)
        self._subscribers.add(send)
        try:
            with receive:
                await response.write(b"retry: 2000\n\n" + _sse("state", self.state()))
                for alert in deployment.recent_alerts():
                    await response.write(_sse("alert", self._alert_json(alert)))
                while not self._closing:
                    message = None
                    with anyio.move_on_after(STATE_EVERY_S):
                        message = await receive.receive()
                    await response.write(message or _sse("state", self.state()))
        except (anyio.EndOfStream, ConnectionResetError):
            pass  # dropped for lagging, shutting down, or the page went away
        finally:
            self._subscribers.discard(send)
            send.close()
        return response

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.on_response_prepare.append(self._headers)
        app.router.add_get("/", self._index)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/alerts", self._alerts)
        app.router.add_get("/api/events", self._events)
        app.router.add_get(
            f"/api/alerts/{{alert_id:{_ID}}}/{{which:crop|watchlist}}.jpg", self._image
        )
        app.router.add_post(f"/api/alerts/{{alert_id:{_ID}}}/decision", self._decision)
        app.router.add_post("/offer", self._offer)
        app.router.add_post(f"/api/viewers/{{viewer_id:{_ID}}}/close", self._close)
        app.router.add_static("/static/", STATIC)
        return app

    # -- running -----------------------------------------------------------------------------

    def _ready_event(self) -> anyio.Event:
        if self._ready is None:
            self._ready = anyio.Event()
        return self._ready

    async def wait_ready(self) -> str:
        """Returns the URL (without the token) once the server listens."""
        await self._ready_event().wait()
        assert self.url is not None
        return self.url

    def _announce(self) -> None:
        if self.host not in ("127.0.0.1", "::1", "localhost"):
            print(
                f"lfr web: listening on {self.host}, not only this machine: anyone who can "
                "reach it and has the token sees the cameras",
                file=sys.stderr,
            )
        if self.token_generated:
            print(f"lfr web: {self.url}?token={self.token}", file=sys.stderr, flush=True)
        else:
            print(f"lfr web: {self.url} (token from the config)", file=sys.stderr, flush=True)

    async def run(self, deployment: DeploymentView) -> None:
        """Serve ``deployment`` until cancelled. Frames and alerts come from its broadcast
        channels: a viewer that lags loses the oldest items of its own buffer, and the matcher
        never waits for it."""
        self.attach(deployment)
        with deployment.subscribe_frames() as frames, deployment.subscribe_alerts() as alerts:
            runner = web.AppRunner(
                self.make_app(),
                access_log_class=_AccessLogger,
                access_log=logging.getLogger("lfr.web.access"),
                shutdown_timeout=2.0,
            )
            await runner.setup()
            try:
                await self._listen(runner)
                async with anyio.create_task_group() as tg:
                    tg.start_soon(self._take_frames, frames)
                    tg.start_soon(self._take_alerts, alerts)
            finally:
                with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                    await self.aclose()
                    await runner.cleanup()

    async def _listen(self, runner: web.AppRunner) -> None:
        site = web.TCPSite(runner, self.host, self.port)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(
                exc.errno,
                f"web.listen {self.config.listen}: cannot listen: {exc.strerror or exc}",
            ) from None
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"http://{shown}:{port}/"
        self._announce()
        self._ready_event().set()

    async def aclose(self) -> None:
        """Close every peer connection and end the alert streams."""
        self._closing = True
        for send in list(self._subscribers):
            send.close()
        self._subscribers.clear()
        for viewer_id in list(self._peers):
            await self.close_viewer(viewer_id)
