"""The supervisors' browser viewer: live video over WebRTC (aiortc), alerts, decisions (aiohttp).

Named users log in (``lfr users``; the login page, ``POST /api/login``) and get a server-side
session: a random id in a cookie (HttpOnly, SameSite=Strict, Secure under TLS) that expires after
``[web] session_minutes``. Every decision records the session's user, never a name from the
request. The single shared token is a demo mode only (``[web] demo_token``, audited): sent as
``Authorization: Bearer``, or exchanged for a session by the page (it reads the token from the
URL's fragment, which never reaches the server). A token in the query string is refused
everywhere; a state-changing request needs a JSON body (Content-Type application/json) and comes
from the page's own origin, so another site's form cannot submit one.

Beyond loopback the viewer speaks TLS (``[web] tls_cert``/``tls_key``) unless ``[web]
allow_plain_http`` says otherwise; the settings it runs with go to the audit log
(``web_settings``) once it listens.

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
import ssl
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio
import msgspec
from aiohttp import web
from aiohttp.abc import AbstractAccessLogger
from aiohttp.typedefs import Handler
from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from anyio.streams.memory import MemoryObjectSendStream

from lfr.audit import Kind
from lfr.config import WebConfig
from lfr.decisions import AlreadyDecided, JoinedAlert, NotAllowed
from lfr.listening import Listening
from lfr.runtime.broadcast import Subscription
from lfr.users import AuthError, Principal, UsersFileError, UserStore
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
SESSION_COOKIE = "lfr_session"
PUBLIC_PATHS = frozenset({"/login", "/api/login"})  # and /static/: the page code, no data
PRINCIPAL = web.RequestKey("principal", Principal)  # who is asking, set by the auth middleware


class TooManyViewers(Exception):
    """The camera already has max_viewers_per_camera viewers."""


class WebStats(msgspec.Struct, frozen=True):
    url: str | None
    viewers: tuple[ViewerStats, ...]
    refused: int  # offers refused by the viewer cap
    event_clients: int


def tls_context(config: WebConfig) -> ssl.SSLContext | None:
    """The server's TLS context from ``[web] tls_cert``/``tls_key``; None without them."""
    if config.tls_cert is None or config.tls_key is None:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(config.tls_cert, config.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"web.tls_cert {config.tls_cert} / web.tls_key {config.tls_key}: "
                         f"cannot load the certificate and key: {exc}") from None
    return context


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
    """Path without the query string: whatever a client put there stays out of the logs."""

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
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data: blob:; media-src 'self' blob:; "
        "connect-src 'self'; style-src 'self'; script-src 'self'; frame-ancestors 'none'"
    ),
}


class _Session(msgspec.Struct):
    principal: Principal
    expires: float  # time.monotonic()


class WebService:
    """``await WebService(config.effective_web()).run(deployment)`` beside the pipeline (a
    deployment service). ``users``: the store logins are checked against (default: the config's
    ``users_file``, else the key directory's). ``demo_operator``: the name decisions made with the
    demo token are recorded under (default: the config's operator name).

    ``url`` is the bound address once ``wait_ready()`` returns (port 0 picks a free port).
    ValueError for settings it refuses: plain HTTP beyond loopback without ``allow_plain_http``,
    a certificate that does not load, an ICE address that is no IP address.
    """

    def __init__(self, config: WebConfig, users: UserStore | None = None,
                 demo_operator: str | None = None) -> None:
        self.config = config
        self.demo_operator = demo_operator
        self.listening = Listening("web.listen", config.listen)
        for i, address in enumerate(config.ice_addresses):
            try:
                ipaddress.ip_address(address)
            except ValueError:
                raise ValueError(
                    f"web.ice_addresses[{i}]: not an IP address: {address!r}"
                ) from None
        if not self.listening.loopback and not config.tls and not config.allow_plain_http:
            raise ValueError(
                f"web.listen {config.listen}: beyond this machine the viewer needs TLS "
                "(set web.tls_cert and web.tls_key; `lfr web make-cert` makes a self-signed "
                "pair for trials), or say web.allow_plain_http = true (audited): logins, "
                "sessions and faces would cross the network in clear"
            )
        self.ssl_context = tls_context(config)
        self.users = users if users is not None else UserStore(
            Path(config.users_file) if config.users_file else None)
        self.token = (config.token or secrets.token_urlsafe(24)) if config.demo_token else None
        self.token_generated = config.demo_token and not config.token
        self._sessions: dict[str, _Session] = {}
        self.deployment: DeploymentView | None = None
        self.blur_non_matches = True
        self.refused = 0
        self._feeds: dict[str, CameraFeed] = {}
        self._peers: dict[str, tuple[RTCPeerConnection, ViewerTrack]] = {}
        self._subscribers: set[MemoryObjectSendStream[bytes]] = set()
        self._limiter: anyio.CapacityLimiter | None = None
        self._closing = False
        self._cameras: frozenset[str] | None = None  # None: any camera (no deployment attached)

    def __repr__(self) -> str:
        return (f"WebService(listen={self.config.listen!r}, url={self.url!r}, "
                f"demo_token={'***' if self.token else None})")

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
        deployment = self.deployment
        if self._cameras is not None and item.frame.camera not in self._cameras:
            # A camera that joined the running deployment (a node's lease) is let in.
            self._cameras = frozenset(deployment.cameras) if deployment else self._cameras
            if item.frame.camera not in self._cameras:
                return
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

    def _alert_json(self, alert: Alert, sightings: Mapping[str, str] | None = None
                    ) -> dict[str, Any]:
        """``sightings``: DeploymentView.sightings(), asked once for a list of alerts (a new
        alert has not been placed yet: the state events say so once it is)."""
        data = alert.summary()
        data["sighting_of"] = (sightings or {}).get(alert.id)
        data["category"] = alert.category
        decided = self.deployment.decision(alert.id) if self.deployment else None
        data["decision"] = decided.decision if decided else None
        data["operator"] = decided.operator if decided else None
        data["crop_url"] = f"api/alerts/{alert.id}/crop.jpg"
        data["watchlist_url"] = f"api/alerts/{alert.id}/watchlist.jpg"
        return data

    def state(self, principal: Principal | None = None) -> dict[str, Any]:
        """What the page shows besides video and alerts: cameras, counters, viewers, and who
        ``principal`` (the page's user) is."""
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
        decisions = deployment.decisions()
        sightings = deployment.sightings()
        # A sighting waits for no decision here: the alert it joined (on another node) does.
        undecided_sightings = sum(1 for a in sightings if a not in decisions)
        counters["pending"] = max(0, counters["pending"] - undecided_sightings)
        counters["alerts"] -= undecided_sightings
        counters["false_alerts_per_1000_faces"] = round(
            snap.counters.false_alerts_per_1000_faces, 3
        )
        return {
            "name": snap.name,
            "location": snap.location,
            "threshold": snap.threshold,
            "watchlist_size": snap.watchlist_size,
            "watchlist_version": snap.watchlist_version,  # published version (lfr node)
            "running_s": round(snap.running_s, 1),
            "operator": snap.operator,  # who started the deployment
            "user": msgspec.to_builtins(principal) if principal else None,
            "blur_non_matches": self.blur_non_matches,
            "max_viewers_per_camera": self.config.max_viewers_per_camera,
            "stun_servers": list(self.config.stun_servers),
            "counters": counters,
            "cameras": cameras,
            "viewers": msgspec.to_builtins(self.statistics().viewers),
            "decisions": {k: v.decision for k, v in decisions.items()},
            "sightings": sightings,  # alert id -> the open alert it joined (lfr.cluster)
        }

    # -- handlers ----------------------------------------------------------------------------

    def _running(self) -> DeploymentView:
        if self.deployment is None:
            raise web.HTTPServiceUnavailable(text="no deployment attached")
        return self.deployment

    # -- who is asking ------------------------------------------------------------------------

    def demo_principal(self) -> Principal:
        """Whoever holds the demo token: recorded under the configured operator name, marked as
        the demo token's."""
        name = self.demo_operator or (
            self.deployment.operator_name() if self.deployment else "operator")
        return Principal(name, "operator", auth="demo_token")

    def _principal(self, request: web.Request) -> Principal | None:
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            supplied = value.strip()
            if self.token and hmac.compare_digest(supplied.encode(), self.token.encode()):
                return self.demo_principal()
            return None
        session_id = request.cookies.get(SESSION_COOKIE)
        session = self._sessions.get(session_id) if session_id else None
        if session is None:
            return None
        if session.expires < time.monotonic():
            self._sessions.pop(session_id or "", None)
            return None
        try:
            active = self.users.active(session.principal)
        except UsersFileError:
            log.exception("web: users file unreadable; session of %s refused",
                          session.principal.name)
            active = False
        if not active:  # disabled (or role changed) since the login: the session ends
            self._sessions.pop(session_id or "", None)
            return None
        return session.principal

    def _same_origin(self, request: web.Request) -> bool:
        origin = request.headers.get("Origin")
        return origin is None or origin == f"{request.scheme}://{request.host}"

    @web.middleware
    async def _auth(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        if "token" in request.query:
            # A token in an address ends up in histories, logs and Referer headers, and lets a
            # plain link or form act for whoever holds it.
            return _error(400, "a token in the address is never accepted: log in, or send "
                          "Authorization: Bearer <token> (demo mode)")
        if request.method not in ("GET", "HEAD", "OPTIONS"):
            if request.content_type != "application/json":
                return _error(415, "state-changing requests take a JSON body "
                              "(Content-Type: application/json)")
            if not self._same_origin(request):
                return _error(403, "cross-origin request refused")
        if request.path.startswith("/static/") or request.path in PUBLIC_PATHS:
            return await handler(request)
        principal = self._principal(request)
        if principal is None:
            if request.method == "GET" and request.path == "/":
                raise web.HTTPSeeOther("login")
            response = _error(401, "not logged in: log in at /login (or, in demo mode, send "
                              "Authorization: Bearer <token>)")
            response.headers["WWW-Authenticate"] = "Bearer"
            return response
        request[PRINCIPAL] = principal
        return await handler(request)

    async def _login_page(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "login.html")

    async def _login(self, request: web.Request) -> web.Response:
        """``{name, password}`` (or, in demo mode, ``{token}``) -> a session cookie."""
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return _error(400, "expected a JSON body {name, password}")
        if isinstance(body.get("token"), str):
            if not self.token or not hmac.compare_digest(body["token"].encode(),
                                                         self.token.encode()):
                return _error(401, "wrong token" if self.token else "demo mode is off: log in "
                              "with your user name and password")
            principal = self.demo_principal()
        elif isinstance(body.get("name"), str) and isinstance(body.get("password"), str):
            try:
                # argon2 takes a fraction of a second and 64 MiB: off the event loop.
                principal = await anyio.to_thread.run_sync(
                    self.users.authenticate, body["name"], body["password"])
            except AuthError as exc:
                log.warning("web: login refused for %r: %s", body["name"][:64], exc)
                await self.on_login(body["name"][:64], None, str(exc))
                return _error(401, str(exc))
            except UsersFileError as exc:
                log.error("web: %s", exc)
                return _error(503, "the users file cannot be read; see the server's log")
        else:
            return _error(400, "expected a JSON body {name, password}")
        now = time.monotonic()
        for sid in [k for k, v in self._sessions.items() if v.expires < now]:
            del self._sessions[sid]
        session_id = secrets.token_urlsafe(32)
        lifetime_s = self.config.session_minutes * 60
        self._sessions[session_id] = _Session(principal, now + lifetime_s)
        log.info("web: %s (%s) logged in", principal.name, principal.role)
        await self.on_login(principal.name, principal, "")
        response = _json(msgspec.to_builtins(principal))
        response.set_cookie(SESSION_COOKIE, session_id, max_age=lifetime_s, path="/",
                            httponly=True, samesite="Strict", secure=self.config.tls)
        return response

    async def on_login(self, name: str, principal: Principal | None, refused: str) -> None:
        """A login attempt as ``name``: ``principal`` when it succeeded, else None and why it
        was ``refused``. Logged only here; the deployment console audits it."""

    async def _logout(self, request: web.Request) -> web.Response:
        self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)
        response = _json({"logged_out": True})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response

    async def _me(self, request: web.Request) -> web.Response:
        return _json(msgspec.to_builtins(request[PRINCIPAL]))

    async def _headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.update(_SECURITY_HEADERS)
        if not request.path.startswith("/static/"):
            response.headers["Cache-Control"] = "no-store"

    async def _index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "index.html")

    async def _state(self, request: web.Request) -> web.Response:
        return _json(self.state(request[PRINCIPAL]))

    async def _alerts(self, request: web.Request) -> web.Response:
        deployment = self._running()
        sightings = deployment.sightings()
        return _json([self._alert_json(a, sightings)
                      for a in reversed(deployment.recent_alerts())])

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
            return _error(400, "expected a JSON body {decision, note?}")
        if not isinstance(body, dict) or not isinstance(body.get("decision"), str):
            return _error(400, "expected a JSON body {decision, note?}")
        # Any "operator" in the body is ignored: the decision is the logged-in user's.
        note = body.get("note", "")
        if not isinstance(note, str):
            return _error(400, "note: must be a string")
        try:
            # In the event loop thread, like the pipeline's own updates of the counters.
            adjudication = deployment.adjudicate(
                alert_id, body["decision"], request[PRINCIPAL], note=note[:1000]
            )
        except NotAllowed as exc:
            return _error(403, str(exc))
        except (AlreadyDecided, JoinedAlert) as exc:
            return _error(409, str(exc))
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
        status, answer = await self.answer_offer(request[PRINCIPAL], body)
        return _json(answer, status)

    async def answer_offer(self, principal: Principal, body: Any) -> tuple[int, dict[str, Any]]:
        """A browser's WebRTC offer ``{sdp, type, camera}`` for ``principal`` -> (HTTP status,
        the answer ``{sdp, type, viewer}`` or ``{error}``): a peer connection whose video
        track is the camera's. The page's own request, or one a console carried over NATS to
        the node that runs the camera (lfr.cluster.viewer)."""
        if not principal.may("watch_video"):
            return 403, {"error": f"{principal.name} is an {principal.role}: auditors read the "
                         "record (alerts, counts); live video is for operators and supervisors"}
        if not isinstance(body, dict) or not all(
            isinstance(body.get(k), str) for k in ("sdp", "type", "camera")
        ):
            return 400, {"error": "expected a JSON body {sdp, type, camera}"}
        if body["type"] != "offer":
            return 400, {"error": f"type: expected 'offer', got {body['type']!r}"}
        try:
            track = self.open_viewer(body["camera"])
        except KeyError as exc:
            return 404, {"error": str(exc.args[0])}
        except TooManyViewers as exc:
            return 429, {"error": str(exc)}
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
            return 400, {"error": f"cannot answer this offer: {exc}"}
        log.info("viewer %s on camera %s", viewer_id, track.feed.camera)
        answer = pc.localDescription
        return 200, {"sdp": answer.sdp, "type": answer.type, "viewer": viewer_id}

    async def _close(self, request: web.Request) -> web.Response:
        closed = await self.close_viewer(request.match_info["viewer_id"])
        return _json({"closed": closed})

    async def _events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: ``state`` every second, ``alert`` and ``decision`` as they happen
        (the recent alerts first, so a reconnecting page misses nothing)."""
        deployment = self._running()
        principal: Principal = request[PRINCIPAL]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"}
        )
        await response.prepare(request)
        send, receive = anyio.create_memory_object_stream[bytes](EVENT_BUFFER)
        self._subscribers.add(send)
        try:
            with receive:
                await response.write(b"retry: 2000\n\n" + _sse("state", self.state(principal)))
                sightings = deployment.sightings()
                for alert in deployment.recent_alerts():
                    await response.write(_sse("alert", self._alert_json(alert, sightings)))
                while not self._closing:
                    message = None
                    with anyio.move_on_after(STATE_EVERY_S):
                        message = await receive.receive()
                    await response.write(message or _sse("state", self.state(principal)))
        except (anyio.EndOfStream, ConnectionResetError):
            pass  # dropped for lagging, shutting down, or the page went away
        finally:
            self._subscribers.discard(send)
            send.close()
        return response

    def app_behind_login(self, index: Handler) -> web.Application:
        """An app behind the login: its middleware and headers, ``index`` at /, the login
        routes and the static files; the caller adds its own API."""
        app = web.Application(middlewares=[self._auth])
        app.on_response_prepare.append(self._headers)
        app.router.add_get("/", index)
        app.router.add_get("/login", self._login_page)
        app.router.add_post("/api/login", self._login)
        app.router.add_post("/api/logout", self._logout)
        app.router.add_get("/api/me", self._me)
        app.router.add_static("/static/", STATIC)
        return app

    def make_app(self) -> web.Application:
        app = self.app_behind_login(self._index)
        app.router.add_get("/api/state", self._state)
        app.router.add_get("/api/alerts", self._alerts)
        app.router.add_get("/api/events", self._events)
        app.router.add_get(
            f"/api/alerts/{{alert_id:{_ID}}}/{{which:crop|watchlist}}.jpg", self._image
        )
        app.router.add_post(f"/api/alerts/{{alert_id:{_ID}}}/decision", self._decision)
        app.router.add_post("/offer", self._offer)
        app.router.add_post(f"/api/viewers/{{viewer_id:{_ID}}}/close", self._close)
        return app

    # -- running -----------------------------------------------------------------------------

    @property
    def url(self) -> str | None:
        """The bound address (no token), once the server listens."""
        return self.listening.url

    async def wait_ready(self) -> str:
        """Returns the URL (without the token) once the server listens."""
        return await self.listening.wait_ready()

    def settings(self) -> dict[str, Any]:
        """The settings this viewer runs with: the audit log's ``web_settings`` record."""
        return {
            "listen": self.config.listen,
            "url": self.url,
            "beyond_loopback": not self.listening.loopback,
            "tls": self.config.tls,
            "tls_cert": self.config.tls_cert,
            "allow_plain_http": self.config.allow_plain_http,
            "auth": "demo_token" if self.token else "users",
            "users_file": str(self.users.path),
            "session_minutes": self.config.session_minutes,
            "max_viewers_per_camera": self.config.max_viewers_per_camera,
        }

    def _announce(self) -> None:
        if not self.listening.loopback:
            how = "over TLS" if self.config.tls else "in PLAIN HTTP (web.allow_plain_http)"
            print(f"lfr web: listening on {self.listening.host} {how}, not only this machine",
                  file=sys.stderr)
        if self.token is None:
            print(f"lfr web: {self.url} (log in as a user: lfr users add)", file=sys.stderr,
                  flush=True)
            return
        print("lfr web: DEMO MODE (web.demo_token): one shared token, decisions are recorded "
              f"as {self.demo_principal().name}'s whoever holds it", file=sys.stderr)
        if self.token_generated:  # in the fragment: it never reaches the server or its logs
            print(f"lfr web: {self.url}#token={self.token}", file=sys.stderr, flush=True)
        else:
            print(f"lfr web: {self.url} (token from the config)", file=sys.stderr, flush=True)

    async def run(self, deployment: DeploymentView) -> None:
        """Serve ``deployment`` until cancelled. Frames and alerts come from its broadcast
        channels: a viewer that lags loses the oldest items of its own buffer, and the matcher
        never waits for it."""
        self.attach(deployment)  # before listening: the announcement names its operator
        runner = web.AppRunner(
            self.make_app(),
            access_log_class=_AccessLogger,
            access_log=logging.getLogger("lfr.web.access"),
            shutdown_timeout=2.0,
        )
        await runner.setup()
        try:
            await self._listen(runner)
            deployment.record_setting(Kind.WEB_SETTINGS, self.settings())
            await self.feed(deployment)
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await self.aclose()
                await runner.cleanup()

    async def feed(self, deployment: DeploymentView) -> None:
        """Take ``deployment``'s frames and alerts for the viewers until cancelled (``run``
        does this beside its HTTP server; a node of a deployment spread over nodes does it
        alone, its viewers' offers coming over NATS)."""
        self.attach(deployment)
        with deployment.subscribe_frames() as frames, deployment.subscribe_alerts() as alerts:
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._take_frames, frames)
                tg.start_soon(self._take_alerts, alerts)

    async def _listen(self, runner: web.AppRunner) -> None:
        await self.listening.start(runner, self.ssl_context)
        self._announce()

    async def aclose(self) -> None:
        """Close every peer connection and end the alert streams."""
        self._closing = True
        for send in list(self._subscribers):
            send.close()
        self._subscribers.clear()
        for viewer_id in list(self._peers):
            await self.close_viewer(viewer_id)
