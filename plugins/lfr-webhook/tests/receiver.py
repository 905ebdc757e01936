"""A webhook receiver as an integrator would write one: checks the signature, deduplicates by
Idempotency-Key, and can be stopped and started again on the same port."""

from __future__ import annotations

import asyncio
import json
from collections import Counter
from typing import Any

from aiohttp import web

from lfr_webhook import SIGNATURE_HEADER, TIMESTAMP_HEADER, verify_signature


class Receiver:
    def __init__(self, secret: bytes) -> None:
        self.secret = secret
        self.port = 0
        self.by_key: dict[str, dict[str, Any]] = {}  # what the receiver acts on: once per key
        self.requests: Counter[str] = Counter()  # every request that got in, per key
        self.rejected = 0
        self.stall_first: set[str] = set()  # keys whose first answer comes too late
        self.stall_s = 2.0
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/alerts"

    async def handle(self, request: web.Request) -> web.Response:
        body = await request.read()
        signature = request.headers.get(SIGNATURE_HEADER, "")
        if not verify_signature(
            self.secret, body, request.headers.get(TIMESTAMP_HEADER, ""), signature
        ):
            self.rejected += 1
            return web.Response(status=401, text="bad signature")
        key = request.headers["Idempotency-Key"]
        self.requests[key] += 1
        self.by_key.setdefault(key, json.loads(body))
        if key in self.stall_first:
            # Processed, but the answer misses the sender's timeout: it will send it again.
            self.stall_first.discard(key)
            await asyncio.sleep(self.stall_s)
        return web.json_response({"ok": True})

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/alerts", self.handle)
        self._runner = web.AppRunner(app, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True)
        await site.start()
        if not self.port:
            self.port = self._runner.addresses[0][1]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def __aenter__(self) -> Receiver:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
