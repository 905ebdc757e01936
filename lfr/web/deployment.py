"""The browser viewer over a deployment spread over nodes (``lfr console --web HOST:PORT``):
every node and camera, the deployment's alerts with their further sightings and decisions.

It is the single-node viewer's server (lfr.web.server.WebService) with other pages: the same
listening (lfr.listening), TLS rule, named users, login, sessions, security headers and
same-origin checks; what it shows comes from the console's model of the bus
(lfr.cluster.console), and a decision, the logged-in user's, goes to the node that raised the
alert, which records and publishes it. Each alert shows its camera crop beside the watchlist
picture, and each sighting its crop: the console fetches them sealed from the deployment's
pictures stream and opens them with the deployment's data key when a logged-in user's page asks
(lfr.cluster.pictures); without the key the page says "pictures sealed (no data key)". A camera
plays from the node that runs it:
the browser's WebRTC offer goes over NATS to that node (lfr.cluster.viewer) and the media
straight from the node to the browser.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
from aiohttp import web

from lfr.cluster.console import ConsoleAudit, ConsoleModel, NodeAway
from lfr.cluster.pictures import SEALED_NO_KEY, WHICH, PicturesSealed, PictureUnavailable
from lfr.config import WebConfig
from lfr.messages import DECISIONS
from lfr.users import Principal, UserStore
from lfr.web.server import (
    _ID,
    PRINCIPAL,
    STATIC,
    WebService,
    _AccessLogger,
    _error,
    _json,
    _sse,
)

log = logging.getLogger("lfr.web.deployment")

STATE_AT_LEAST_EVERY_S = 2.0  # the page's ages (last seen, alive) move even when nothing else does
MIN_PUSH_S = 0.2  # a burst of records: one state, not one each

Decide = Callable[[str, str, str, Principal, str], Awaitable[dict[str, Any]]]
# Carry a viewer request (lfr.cluster.viewer.ViewerRequest's fields) to a node: its reply.
Signal = Callable[[str, dict[str, Any]], Awaitable[dict[str, Any]]]
# Fetch and open one picture: (node, alert or sighting id, field) -> the JPEG
# (lfr.cluster.pictures.PictureReader.get on the console's bus).
Picture = Callable[[str, str, str], Awaitable[bytes]]


class ConsoleWeb(WebService):
    """``await ConsoleWeb(WebConfig(listen=...)).run(model, decide, signal)``; ``decide(node,
    alert_id, decision, user, note)`` asks the node that raised the alert (request_decision),
    ``signal(node, request)`` carries a browser's video offer to the node that runs the camera
    (lfr.cluster.viewer.request_viewer)."""

    def __init__(self, config: WebConfig, users: UserStore | None = None) -> None:
        if config.demo_token:
            raise ValueError("lfr console --web: named users only (no demo token): decisions "
                             "across the deployment are each person's own")
        super().__init__(config, users=users)
        self.model: ConsoleModel | None = None
        self._decide: Decide | None = None
        self._signal: Signal | None = None
        self._picture: Picture | None = None
        self.audit: ConsoleAudit | None = None  # the console's own log: its logins
        self.pictures_status = SEALED_NO_KEY  # "available" once run with a key
        self._viewer_nodes: dict[str, str] = {}  # viewer id -> the node that streams it

    def console_state(self, principal: Principal | None) -> dict[str, Any]:
        model = self._model()
        return {**model.view(), "user": msgspec.to_builtins(principal) if principal else None,
                "pictures": self.pictures_status}

    def _model(self) -> ConsoleModel:
        if self.model is None:
            raise web.HTTPServiceUnavailable(text="the console is not following a deployment")
        return self.model

    async def _console_index(self, request: web.Request) -> web.StreamResponse:
        return web.FileResponse(STATIC / "console.html")

    async def _console_state(self, request: web.Request) -> web.Response:
        return _json(self.console_state(request[PRINCIPAL]))

    async def _console_events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent ``state`` events: at once, on every change the bus brings (at most one
        each MIN_PUSH_S) and at least every STATE_AT_LEAST_EVERY_S."""
        model, principal = self._model(), request[PRINCIPAL]
        response = web.StreamResponse(
            headers={"Content-Type": "text/event-stream", "X-Accel-Buffering": "no"})
        await response.prepare(request)
        try:
            await response.write(b"retry: 2000\n\n")
            while not self._closing:
                await response.write(_sse("state", self.console_state(principal)))
                await model.changed(STATE_AT_LEAST_EVERY_S)
                await anyio.sleep(MIN_PUSH_S)
        except ConnectionResetError:
            pass  # the page went away
        return response

    async def _console_decision(self, request: web.Request) -> web.Response:
        model, principal = self._model(), request[PRINCIPAL]
        alert_id = request.match_info["alert_id"]
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not isinstance(body.get("decision"), str):
            return _error(400, "expected a JSON body {decision, note?}")
        note = body.get("note", "")
        if not isinstance(note, str):
            return _error(400, "note: must be a string")
        if body["decision"] not in DECISIONS:
            return _error(400, f"decision must be one of {', '.join(DECISIONS)}")
        if not principal.may("decide"):
            return _error(403, f"{principal.name} is an {principal.role}: auditors read, they "
                          "do not decide")
        node = model.raised_by(alert_id)
        if node is None:
            return _error(404, f"no alert {alert_id!r} in the stream of {model.names.deployment}")
        assert self._decide is not None
        try:
            reply = await self._decide(node, alert_id, body["decision"], principal, note[:1000])
        except NodeAway as exc:
            return _error(503, str(exc))
        if not reply.get("ok"):
            return _error(409, f"{node}: {reply.get('error')}")
        return _json({**reply["decision"], "node": node})

    async def on_login(self, name: str, principal: Principal | None, refused: str) -> None:
        if self.audit is not None:
            await self.audit.login(name, principal, "web", refused)

    async def _console_picture(self, request: web.Request) -> web.Response:
        """An alert's or a sighting's picture (``crop`` or ``watchlist``), fetched sealed from
        the pictures stream and opened here; nothing is kept."""
        item_id, which = request.match_info["alert_id"], request.match_info["which"]
        source = self._model().picture_source(item_id)
        if source is None:
            return _error(404, f"no alert or sighting {item_id!r} in the stream")
        node, fields = source
        field = WHICH[which]
        if field not in fields:
            return _error(404, f"{node} published no {which} picture of {item_id}")
        if self._picture is None:
            return _error(503, self.pictures_status)
        try:
            data = await self._picture(node, item_id, field)
        except PicturesSealed as exc:
            return _error(503, str(exc))
        except PictureUnavailable as exc:
            return _error(404, str(exc))
        return web.Response(body=data, content_type="image/jpeg")

    async def _console_offer(self, request: web.Request) -> web.Response:
        """The browser's WebRTC offer for a camera, carried over NATS to the node that runs it;
        the node's answer back. The media then flows from that node to the browser."""
        principal: Principal = request[PRINCIPAL]
        if not principal.may("watch_video"):
            return _error(403, f"{principal.name} is an {principal.role}: live video is for "
                          "operators and supervisors")
        try:
            body = await request.json()
        except ValueError:
            body = None
        if not isinstance(body, dict) or not all(
                isinstance(body.get(k), str) for k in ("sdp", "type", "camera")):
            return _error(400, "expected a JSON body {sdp, type, camera}")
        cameras = {c["name"]: c for c in self._model().view()["cameras"]}
        camera = cameras.get(body["camera"])
        if camera is None:
            return _error(404, f"no camera {body['camera']!r}; cameras: {', '.join(cameras)}")
        if camera["state"] != "running" or not camera["node"]:
            return _error(503, f"camera {body['camera']!r} runs on no node right now "
                          f"({camera['state']}): try again in a few seconds")
        assert self._signal is not None
        node = camera["node"]
        try:
            reply = await self._signal(node, {
                "op": "offer", "by": principal.name, "role": principal.role,
                "camera": body["camera"], "sdp": body["sdp"], "type": body["type"]})
        except NodeAway as exc:
            return _error(503, str(exc))
        status = int(reply.pop("status", 502))
        if status == 200:
            self._viewer_nodes[reply["viewer"]] = node
            log.info("console viewer %s: %s on %s for %s", reply["viewer"], body["camera"],
                     node, principal.name)
            reply["node"] = node
        return _json(reply, status)

    async def _console_close(self, request: web.Request) -> web.Response:
        viewer = request.match_info["viewer_id"]
        node = self._viewer_nodes.pop(viewer, None)
        if node is None or self._signal is None:
            return _json({"closed": False})
        principal: Principal = request[PRINCIPAL]
        try:
            reply = await self._signal(node, {"op": "close", "by": principal.name,
                                              "role": principal.role, "viewer": viewer})
        except NodeAway:
            return _json({"closed": False})
        return _json({"closed": bool(reply.get("closed"))})

    def make_app(self) -> web.Application:
        app = self.app_behind_login(self._console_index)
        app.router.add_get("/api/state", self._console_state)
        app.router.add_get("/api/events", self._console_events)
        app.router.add_post(f"/api/alerts/{{alert_id:{_ID}}}/decision", self._console_decision)
        app.router.add_get(f"/api/alerts/{{alert_id:{_ID}}}/{{which:crop|watchlist}}.jpg",
                           self._console_picture)
        app.router.add_post("/offer", self._console_offer)
        app.router.add_post(f"/api/viewers/{{viewer_id:{_ID}}}/close", self._console_close)
        return app

    async def run(self, model: ConsoleModel, decide: Decide,  # type: ignore[override]
                  signal: Signal | None = None, picture: Picture | None = None,
                  pictures_status: str = SEALED_NO_KEY, audit: ConsoleAudit | None = None
                  ) -> None:
        """Serve ``model`` until cancelled; ``signal`` carries video offers to nodes (None:
        no live video); ``picture`` fetches and opens alert pictures (None: they stay sealed,
        ``pictures_status`` says why); ``audit``: the console's log, where logins go (its
        ``decide`` audits the decisions asked)."""
        self.model, self._decide, self._signal = model, decide, signal
        self._picture, self.pictures_status = picture, pictures_status
        self.audit = audit
        runner = web.AppRunner(self.make_app(), access_log_class=_AccessLogger,
                               access_log=logging.getLogger("lfr.web.access"),
                               shutdown_timeout=2.0)
        await runner.setup()
        try:
            await self._listen(runner)
            await anyio.sleep_forever()
        finally:
            with anyio.CancelScope(shield=True), anyio.move_on_after(10):
                await self.aclose()
                await runner.cleanup()
