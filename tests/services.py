"""Running a deployment with a service (web viewer, metrics) beside it, for tests."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio

LIMIT_S = 90  # bound for anything that waits on the pipeline or the network


@asynccontextmanager
async def running(deployment: Any, service: Any) -> AsyncIterator[dict[str, Any]]:
    """Runs the deployment with the service beside it, once the service listens; stops and
    drains it on exit (``result["summary"]`` then holds the run's summary)."""
    result: dict[str, Any] = {}

    async def run() -> None:
        result["summary"] = await deployment.run(False, [service.run])

    async with anyio.create_task_group() as tg:
        tg.start_soon(run)
        with anyio.fail_after(LIMIT_S):
            await service.wait_ready()
        try:
            yield result
        finally:
            deployment.stop()
