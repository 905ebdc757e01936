"""lfr-webhook: POSTs each alert as JSON to an HTTPS endpoint, signed with HMAC-SHA256.

Delivery is lfr's: every alert is in the durable outbox before this notifier sees it, and lfr's
notifier actor replays undelivered alerts after a restart and retries a failed delivery with
backoff, so delivery is at least once. Each request carries ``Idempotency-Key: <alert id>``: the
receiver deduplicates by it. Within one delivery, a connection error, a timeout, a 5xx, 408 or 429
is retried here first (``attempts``, exponential backoff from ``backoff_s``, honouring
``Retry-After``); then the failure goes back to lfr, which records it and retries later.

Signature: ``X-Lfr-Signature: sha256=<hex HMAC-SHA256(secret, "<timestamp>." + body)>`` with
``X-Lfr-Timestamp: <unix seconds>``; ``verify_signature`` checks one (and its age).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import os
import time
from typing import Annotated, Any

import anyio
import msgspec
from lfr.api import Alert, BackendSettings, BuildContext, Register, hookimpl
from msgspec import Meta

LFR_PLUGIN_API = 1
__version__ = "0.1.0"

log = logging.getLogger("lfr_webhook")

SIGNATURE_HEADER = "X-Lfr-Signature"
TIMESTAMP_HEADER = "X-Lfr-Timestamp"
RETRYABLE = frozenset({408, 429, 500, 502, 503, 504})


class WebhookSettings(BackendSettings, frozen=True, tag="webhook"):
    url: Annotated[str, Meta(pattern=r"^https?://")]
    secret: str = ""  # the HMAC key; or name an environment variable in secret_env
    secret_env: str = ""
    name: str = "webhook"
    timeout_s: Annotated[float, Meta(gt=0)] = 10.0
    attempts: Annotated[int, Meta(ge=1)] = 3  # per delivery, before lfr's own retry
    backoff_s: Annotated[float, Meta(gt=0)] = 0.5
    include_images: bool = False  # crop and watchlist JPEGs, base64, in the body
    headers: dict[str, str] = msgspec.field(default_factory=dict)  # sent with every request

    def __post_init__(self) -> None:
        if bool(self.secret) == bool(self.secret_env):
            raise ValueError("set exactly one of secret and secret_env")
        if self.secret and len(self.secret) < 16:
            raise ValueError("secret: use at least 16 characters")

    def __repr__(self) -> str:  # the secret stays out of logs and tracebacks
        return f"WebhookSettings(url={self.url!r}, name={self.name!r}, secret=***)"


class WebhookError(Exception):
    """A delivery that failed; ``retryable`` says whether trying again may help."""

    def __init__(self, message: str, retryable: bool, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.retry_after_s = retry_after_s


def sign(secret: bytes, timestamp: str, body: bytes) -> str:
    digest = hmac.new(secret, timestamp.encode() + b"." + body, hashlib.sha256).hexdigest()
    return f"sha256={digest}"


def verify_signature(
    secret: bytes,
    body: bytes,
    timestamp: str,
    signature: str,
    max_age_s: float = 300.0,
    now: float | None = None,
) -> bool:
    """For receivers: is ``signature`` valid for ``body`` sent at ``timestamp``, and recent?"""
    try:
        age = (time.time() if now is None else now) - int(timestamp)
    except ValueError:
        return False
    return abs(age) <= max_age_s and hmac.compare_digest(sign(secret, timestamp, body), signature)


def payload(alert: Alert, include_images: bool) -> dict[str, Any]:
    body: dict[str, Any] = {
        **alert.summary(),
        "category": alert.category,
        "latency_s": round(alert.latency_s, 4),
    }
    if include_images:
        body["crop_jpeg"] = base64.b64encode(alert.crop_jpeg).decode()
        body["watchlist_jpeg"] = base64.b64encode(alert.watchlist_jpeg).decode()
    return body


def _retry_after(value: str | None) -> float | None:
    try:
        return max(0.0, float(value)) if value else None
    except ValueError:
        return None  # an HTTP date: use our own backoff


class WebhookNotifier:
    """``lfr.api.Notifier``: one aiohttp session, opened at the first delivery."""

    def __init__(
        self,
        url: str,
        secret: bytes,
        *,
        name: str = "webhook",
        timeout_s: float = 10.0,
        attempts: int = 3,
        backoff_s: float = 0.5,
        include_images: bool = False,
        headers: dict[str, str] | None = None,
    ) -> None:
        if not secret:
            raise ValueError(f"webhook {name!r}: empty secret")
        self.name = name
        self.url = url
        self._secret = secret
        self.timeout_s, self.attempts, self.backoff_s = timeout_s, attempts, backoff_s
        self.include_images = include_images
        self.headers = dict(headers or {})
        self.sent = 0  # requests made (each retry counts)
        self._session: Any = None  # aiohttp.ClientSession

    def __repr__(self) -> str:
        return f"WebhookNotifier(name={self.name!r}, url={self.url!r}, secret=***)"

    async def deliver(self, alert: Alert) -> None:
        body = json.dumps(payload(alert, self.include_images), separators=(",", ":")).encode()
        delay = self.backoff_s
        for attempt in range(1, self.attempts + 1):
            try:
                await self._post(alert.id, body)
                return
            except WebhookError as exc:
                if not exc.retryable or attempt == self.attempts:
                    raise
                wait = exc.retry_after_s if exc.retry_after_s is not None else delay
                log.info(
                    "%s: alert %s attempt %d: %s; again in %.1f s",
                    self.name,
                    alert.id,
                    attempt,
                    exc,
                    wait,
                )
                await anyio.sleep(min(wait, 60.0))
                delay *= 2

    async def _post(self, alert_id: str, body: bytes) -> None:
        import aiohttp

        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=self.timeout_s),
                headers={"User-Agent": f"lfr-webhook/{__version__}"},
            )
        timestamp = str(int(time.time()))
        headers = {
            **self.headers,
            "Content-Type": "application/json",
            "Idempotency-Key": alert_id,
            TIMESTAMP_HEADER: timestamp,
            SIGNATURE_HEADER: sign(self._secret, timestamp, body),
        }
        self.sent += 1
        try:
            async with self._session.post(self.url, data=body, headers=headers) as response:
                if 200 <= response.status < 300:
                    return
                text = (await response.text(errors="replace"))[:200]
                raise WebhookError(
                    f"HTTP {response.status} from {self.url}: {text}",
                    retryable=response.status in RETRYABLE,
                    retry_after_s=_retry_after(response.headers.get("Retry-After")),
                )
        except (aiohttp.ClientError, TimeoutError) as exc:
            reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise WebhookError(f"{self.url}: {reason}", retryable=True) from None

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


def from_settings(
    settings: WebhookSettings, context: BuildContext | None = None
) -> WebhookNotifier:
    secret = settings.secret or os.environ.get(settings.secret_env, "")
    if not secret:
        raise ValueError(
            f"webhook {settings.name!r}: environment variable {settings.secret_env} is not set"
        )
    return WebhookNotifier(
        settings.url,
        secret.encode(),
        name=settings.name,
        timeout_s=settings.timeout_s,
        attempts=settings.attempts,
        backoff_s=settings.backoff_s,
        include_images=settings.include_images,
        headers=settings.headers,
    )


@hookimpl
def lfr_register_notifiers(register: Register) -> None:
    register("webhook", from_settings, settings=WebhookSettings)
