"""The dashboard service: runs beside a deployment, draws `render()` and turns keys into decisions.

`lfr run CONFIG --dashboard` authenticates the operator at the terminal (``lfr users``), then
starts it with `Deployment.run(services=[DashboardService(user).run])`; the deployment cancels it
once the pipeline has drained.
"""

from __future__ import annotations

import contextlib
import logging
import signal
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import anyio
from rich.console import Console
from rich.live import Live

from lfr.dashboard.render import DECISION_LABELS, CameraFlow, DashboardView, render
from lfr.dashboard.terminal import LogCapture, cbreak, stdin_terminal, terminal_keys
from lfr.decisions import AlreadyDecided, NotAllowed
from lfr.messages import Alert, Decision
from lfr.notify.console import terminal_owned
from lfr.pipeline.matcher import MatcherStats
from lfr.users import Principal

if TYPE_CHECKING:
    from lfr.deployment import DeploymentView, Snapshot

log = logging.getLogger("lfr.dashboard")


def flows(snapshot: Snapshot) -> dict[str, CameraFlow]:
    """Per camera, as the matcher measured it: faces per second, capture-to-decision latency."""
    matcher = next((a for a in snapshot.actors if isinstance(a, MatcherStats)), None)
    if matcher is None:
        return {}
    return {name: CameraFlow(c.faces_per_s, c.latency_ms.p50, c.latency_ms.p95)
            for name, c in matcher.cameras.items()}


KEY_DECISIONS: dict[str, Decision] = {"c": "confirmed", "f": "false_alert", "n": "no_action"}
NEWER, OLDER = ("up", "k"), ("down", "j")


def step_selection(ids: list[str], selected: str | None, key: str) -> str | None:
    """The alert a move key (NEWER, OLDER) selects in ``ids`` (newest first), kept within the
    list; None for another key or when nothing is selected."""
    if key not in NEWER + OLDER or selected not in ids:
        return None
    step = -1 if key in NEWER else 1
    return ids[min(max(ids.index(selected) + step, 0), len(ids) - 1)]


class DashboardService:
    """The operator's terminal dashboard.

    On a terminal it takes the alternate screen and reads keys from stdin in cbreak mode (restored
    at exit); elsewhere (a file console in tests) it only renders. ``keys`` replaces the terminal's
    keys, e.g. an async generator in tests. Decisions go to ``deployment.adjudicate`` as
    ``user``'s, the person authenticated at start (an operator or a supervisor; a supervisor may
    also correct others' decisions and stop the deployment with ``q``).
    """

    def __init__(
        self,
        user: Principal,
        refresh_s: float = 0.5,
        console: Console | None = None,
        keys: AsyncIterator[str] | None = None,
    ) -> None:
        if refresh_s <= 0:
            raise ValueError(f"refresh_s must be > 0, got {refresh_s!r}")
        if not user.may("decide"):
            raise ValueError(f"{user.name} is an {user.role}: the dashboard is for operators and "
                             "supervisors (auditors read reports: lfr report, lfr audit)")
        self.user = user
        self.refresh_s = refresh_s
        self.console = console if console is not None else Console(stderr=True)
        self.keys = keys
        self.selected: str | None = None  # the alert id the operator's keys act on
        self.status = ""
        self.stopping = False
        self.logs = LogCapture()
        self._wake = anyio.Event()

    # -- state the screen shows ---------------------------------------------------------------

    def view(self, deployment: DeploymentView) -> DashboardView:
        """What the screen shows now. Pins the selection to a concrete alert, so an alert that
        arrives later never slides under the operator's keys."""
        snapshot = deployment.snapshot()
        alerts = tuple(reversed(deployment.recent_alerts()))
        if alerts and all(a.id != self.selected for a in alerts):
            self.selected = alerts[0].id
        return DashboardView(
            snapshot=snapshot,
            alerts=alerts,
            decisions={k: v.decision for k, v in deployment.decisions().items()},
            sightings=deployment.sightings(),
            selected=self.selected,
            flows=flows(snapshot),
            log=tuple(self.logs.lines),
            operator=self.user.name,
            status=self.status,
            stopping=self.stopping,
        )

    def handle_key(self, key: str, deployment: DeploymentView) -> None:
        alerts = list(reversed(deployment.recent_alerts()))
        ids = [a.id for a in alerts]
        index = ids.index(self.selected) if self.selected in ids else None
        if (moved := step_selection(ids, self.selected, key)) is not None:
            self.selected = moved
        elif key in KEY_DECISIONS:
            if index is None:
                self.status = "no alert selected"
                return
            self._decide(deployment, alerts[index], KEY_DECISIONS[key])
        elif key == "q" and not self.user.may("stop"):
            self.status = ("only a supervisor stops the deployment from the dashboard "
                           "(Ctrl-C at the terminal that started it stops it too)")
        elif key == "q" and not self.stopping:
            self.stopping = True
            self.status = "stopping: sources stop, queues drain, notifiers flush"
            deployment.stop()

    def _decide(self, deployment: DeploymentView, alert: Alert, decision: Decision) -> None:
        # On the event loop thread: the deployment's counters read its decisions there too.
        try:
            adj = deployment.adjudicate(alert.id, decision, self.user)
        except (KeyError, RuntimeError, ValueError, NotAllowed, AlreadyDecided) as exc:
            # gone, stopped, bad decision, or another person's decision (operators only)
            self.status = f"not recorded: {exc}"
            return
        except Exception as exc:  # the disk, the database: tell the operator, keep running
            log.exception("dashboard: decision on alert %s not recorded", alert.id)
            self.status = f"not recorded: {type(exc).__name__}: {exc}"
            return
        self.status = (
            f"{DECISION_LABELS[decision]}: {alert.name or alert.person_id} "
            f"({alert.camera} {alert.time[11:19]}) by {adj.operator}"
        )

    # -- running ----------------------------------------------------------------------------

    async def run(self, deployment: DeploymentView) -> None:
        console = self.console
        screen = console.is_terminal
        fd = stdin_terminal() if self.keys is None and screen else None
        keys = self.keys if self.keys is not None else terminal_keys(fd) if fd is not None else None
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.logs.installed(take_terminal=screen))
            if screen:
                stack.enter_context(terminal_owned())
            if fd is not None:
                stack.enter_context(cbreak(fd))
            # Our own refresh task (no auto refresh thread), and no stdout/stderr redirection:
            # on the alternate screen, redirected lines would push the screen down.
            live = stack.enter_context(
                Live(
                    console=console,
                    screen=screen,
                    auto_refresh=False,
                    transient=screen,
                    redirect_stdout=False,
                    redirect_stderr=False,
                )
            )
            async with anyio.create_task_group() as tg:
                if keys is not None:
                    tg.start_soon(self._read_keys, keys, deployment)
                if screen:
                    tg.start_soon(self._watch_resize)
                await self._refresh_forever(live, deployment)

    async def _refresh_forever(self, live: Live, deployment: DeploymentView) -> None:
        failed: set[str] = set()
        while True:
            # Measured every time: a resized terminal gets a layout for its new size.
            width, height = self.console.size
            try:
                live.update(render(self.view(deployment), width, height), refresh=True)
            except Exception as exc:  # a viewer's bug must not stop the pipeline it watches
                if str(exc) not in failed:
                    failed.add(str(exc))
                    log.exception("dashboard: cannot draw the screen: %s", exc)
            with anyio.move_on_after(self.refresh_s):
                await self._wake.wait()
            self._wake = anyio.Event()

    async def _read_keys(self, keys: AsyncIterator[str], deployment: DeploymentView) -> None:
        async for key in keys:
            self.handle_key(key, deployment)
            self._wake.set()  # show the effect of a key at once

    async def _watch_resize(self) -> None:
        try:
            signals = anyio.open_signal_receiver(signal.SIGWINCH)
            with signals as received:
                async for _ in received:
                    self._wake.set()
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread
            return
