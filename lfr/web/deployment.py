"""The browser viewer over a deployment spread over nodes (``lfr console --web HOST:PORT``):
every node and camera, the deployment's alerts with their further sightings and decisions.

It is the single-node viewer's server (lfr.web.server.WebService) with other pages: the same
listening (lfr.listening), TLS rule, named users, login, sessions, security headers and
same-origin checks; what it shows comes from the console's model of the bus
(lfr.cluster.console), and a decision, the logged-in user's, goes to the node that raised the
alert, which records and publishes it. Alert images stay on their node (the stream carries
none), so the page lists alerts without pictures.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import msgspec
from aiohttp import web

from lfr.cluster.console import ConsoleModel, NodeAway
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


class ConsoleWeb(WebService):
    """``await ConsoleWeb(WebConfig(listen=...)).run(model, decide)``; ``decide(node, alert_id,
    decision, user, note)`` asks the node that raised the alert (request_decision)."""

    def __init__(self, config: WebConfig, users: UserStore | None = None) -> None:
        if config.demo_token:
            raise ValueError("lfr console --web: named users only (no demo token): decisions "
                             "across the deployment are each person's own")
        super().__init__(config, users=users)
        self.model: ConsoleModel | None = None
        self._decide: Decide | None = None

    def console_state(self, principal: Principal | None) -> dict[str, Any]:
        model = self._model()
        return {**model.view(), "user": msgspec.to_builtins(principal) if principal else None}

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

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self._auth])
        app.on_response_prepare.append(self._headers)
        app.router.add_get("/", self._console_index)
        app.router.add_get("/login", self._login_page)
        app.router.add_post("/api/login", self._login)
        app.router.add_post("/api/logout", self._logout)
        app.router.add_get("/api/me", self._me)
        app.router.add_get("/api/state", self._console_state)
        app.router.add_get("/api/events", self._console_events)
        app.router.add_post(f"/api/alerts/{{alert_id:{_ID}}}/decision", self._console_decision)
        app.router.add_static("/static/", STATIC)
        return app

    async def run(self, model: ConsoleModel, decide: Decide) -> None:  # type: ignore[override]
        """Serve ``model`` until cancelled."""
        self.model, self._decide = model, decide
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
