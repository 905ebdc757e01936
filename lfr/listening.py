"""Where a service beside the pipeline listens: an aiohttp app on a ``HOST:PORT`` setting.

The web viewer (``web.listen``) and the metrics service (``metrics.listen``) both serve this way:
port 0 picks a free port, ``wait_ready()`` returns the bound URL, and an address that cannot be
bound is an error naming the setting.
"""

from __future__ import annotations

import ipaddress
import ssl

import anyio
from aiohttp import web

from lfr.config import parse_listen

LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:  # a host name: it may resolve to any interface
        return False


class Listening:
    """``host`` and ``port`` from the setting; ``url`` once `start` has bound them."""

    def __init__(self, setting: str, listen: str) -> None:
        self.setting, self.listen = setting, listen
        self.host, self.port = parse_listen(listen, setting)
        self.url: str | None = None
        self._ready: anyio.Event | None = None  # made on the event loop, when first needed

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    async def start(self, runner: web.AppRunner, ssl_context: ssl.SSLContext | None = None
                    ) -> str:
        """Bind ``runner``'s app; OSError naming the setting when the address is refused."""
        site = web.TCPSite(runner, self.host, self.port, ssl_context=ssl_context)
        try:
            await site.start()
        except OSError as exc:
            raise OSError(exc.errno, f"{self.setting} {self.listen}: cannot listen: "
                          f"{exc.strerror or exc}") from None
        host, port = runner.addresses[0][:2]
        shown = f"[{host}]" if ":" in host else host
        self.url = f"{'https' if ssl_context else 'http'}://{shown}:{port}/"
        self._event().set()
        return self.url

    async def wait_ready(self) -> str:
        """The bound URL, once `start` has returned."""
        await self._event().wait()
        assert self.url is not None
        return self.url

    def _event(self) -> anyio.Event:
        if self._ready is None:
            self._ready = anyio.Event()
        return self._ready
