"""The operator's terminal dashboard over a deployment spread over nodes (``lfr console
--dashboard``): every node (alive, last seen), every camera and the node that runs it, the
deployment's alerts with their further sightings and decisions, and decisions by keys.

What it shows comes from the bus (lfr.cluster.console follows the stream and the buckets); it
draws with lfr.dashboard.render's panels, tables and styles, and reads keys and keeps log lines
as the single-node dashboard does (lfr.dashboard.terminal). A decision is the logged-in user's
and goes to the node that raised the alert, which records and publishes it.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import msgspec
from rich.console import Console, Group, RenderableType
from rich.layout import Layout
from rich.live import Live
from rich.table import Table
from rich.text import Text

from lfr.cluster.console import ConsoleModel, NodeAway
from lfr.dashboard.render import (
    DECISION_LABELS,
    DECISION_STYLES,
    STATE_STYLES,
    _Fixed,
    _pair,
    _panel,
    _table,
    pack,
)
from lfr.dashboard.service import KEY_DECISIONS, step_selection
from lfr.dashboard.terminal import LogCapture, cbreak, stdin_terminal, terminal_keys
from lfr.textsafe import plain, safe_text
from lfr.users import Principal

log = logging.getLogger("lfr.dashboard.cluster")

HELP = (("↑/↓ j/k", "select alert"), ("c", "confirmed"), ("f", "false alert"),
        ("n", "no action"), ("q", "leave the console"))

MIN_REDRAW_S = 0.1
# Ask the node that raised an alert to record a decision: (node, alert id, decision, who,
# note) -> its reply (lfr.cluster.console.request_decision).
Decide = Callable[[str, str, str, Principal, str], Awaitable[dict[str, Any]]]


class ConsoleView(msgspec.Struct, frozen=True, kw_only=True):
    """One frame of the console: the model's view plus the operator's own state."""

    state: dict[str, Any]  # ConsoleModel.view()
    selected: str | None = None
    operator: str = ""
    status: str = ""
    # "available" (the console opens the alert pictures: lfr console --web shows them), or why
    # they stay sealed, e.g. "pictures sealed (no data key)".
    pictures: str = ""


def _clock(iso: str | None) -> str:
    return (iso or "")[11:19]


def nodes_panel(view: ConsoleView, lines: int) -> RenderableType:
    nodes = view.state["nodes"]
    table = _table(True)
    for column in ("node", "alive", "cameras", "last seen", "unpublished"):
        table.add_column(column, no_wrap=True, overflow="ellipsis",
                         ratio=1 if column == "cameras" else None)
    room = max(lines - 3, 0)
    for node in nodes[:room]:
        table.add_row(safe_text(node["name"]),
                      Text("yes" if node["alive"] else "no",
                           style="bold green" if node["alive"] else "bold red"),
                      safe_text(", ".join(node["cameras"]) or "-"),
                      _clock(node["last_seen"]), str(node["unpublished"]))
    alive = sum(1 for n in nodes if n["alive"])
    body: RenderableType = table if nodes else Text("no node has started", style="dim")
    return _panel(body, f"Nodes ({alive} alive of {len(nodes)})")


def cameras_panel(view: ConsoleView, lines: int) -> RenderableType:
    cameras = view.state["cameras"]
    table = _table(True)
    for column in ("camera", "node", "state"):
        table.add_column(column, no_wrap=True, overflow="ellipsis")
    room = max(lines - 3, 0)
    shown = cameras if len(cameras) <= room else cameras[:max(room - 1, 0)]
    for camera in shown:
        table.add_row(safe_text(camera["name"]), safe_text(camera["node"] or "-"),
                      Text(camera["state"], style=STATE_STYLES.get(camera["state"], "yellow")))
    if len(shown) < len(cameras):
        table.add_row(Text(f"… {len(cameras) - len(shown)} more", style="dim"))
    body: RenderableType = table if cameras else Text("no cameras", style="dim")
    return _panel(body, f"Cameras ({len(cameras)})")


def alerts_panel(view: ConsoleView, lines: int) -> RenderableType:
    alerts = view.state["alerts"]
    title = f"Alerts ({len(alerts)}, newest first)"
    if not alerts:
        return _panel(Text("no alerts yet", style="dim"), title, "red")
    table = _table(True)
    table.add_column("", no_wrap=True, width=1)
    for column in ("time", "node", "camera", "person", "score", "decision", "sightings"):
        table.add_column(column, no_wrap=True, overflow="ellipsis",
                         ratio=1 if column in ("person", "sightings") else None,
                         justify="right" if column == "score" else "left")
    ids = [a["id"] for a in alerts]
    selected = ids.index(view.selected) if view.selected in ids else None
    room = max(lines - 3, 1)
    start = 0 if selected is None else max(0, selected - room + 1)
    for i, alert in enumerate(alerts[start:start + room], start):
        decision = alert["decision"] or "pending"
        person = alert["name"] or alert["person_id"]
        if alert["name"] and alert["name"] != alert["person_id"]:
            person = f"{alert['name']} ({alert['person_id']})"
        seen = ", ".join(f"{s['node']}/{s['camera']} {_clock(s['time'])}"
                         for s in alert["sightings"])
        label = DECISION_LABELS.get(decision, decision)
        if alert.get("decided_by"):
            label += f" by {alert['decided_by']}"
        table.add_row("▶" if i == selected else "", _clock(alert["time"]),
                      safe_text(alert["node"]), safe_text(alert["camera"]), safe_text(person),
                      f"{alert['score']:.3f}",
                      Text(plain(label), style=DECISION_STYLES.get(decision, "")),
                      safe_text(seen or "-"), style="reverse" if i == selected else "")
    return _panel(table, title, "red")


def render_console(view: ConsoleView, width: int, height: int) -> RenderableType:
    """The whole console for ``view``: exactly ``height`` lines of ``width`` cells."""
    width, height = max(width, 20), max(height, 3)
    state = view.state
    counters = pack([
        _pair("nodes alive", str(sum(1 for n in state["nodes"] if n["alive"]))),
        _pair("cameras running", str(sum(1 for c in state["cameras"]
                                         if c["state"] == "running"))),
        _pair("alerts", str(len(state["alerts"]))),
        _pair("pending", str(sum(1 for a in state["alerts"] if not a["decision"])),
              "bold yellow"),
        _pair("stream duplicates", str(state["duplicates"])),
        *([_pair("pictures", view.pictures.removeprefix("pictures "),
                 "bold green" if view.pictures == "available" else "bold yellow")]
          if view.pictures else []),
    ], width)
    footer_items = [Text.assemble((key, "bold cyan"), " ", what) for key, what in HELP]
    if view.status:
        footer_items.append(safe_text(view.status, style="italic"))
    footer = pack(footer_items, width)
    header = Table.grid(expand=True)
    header.add_column(no_wrap=True, overflow="ellipsis", ratio=1)
    header.add_column(no_wrap=True, justify="right")
    header.add_row(Text.assemble(("LFR ", "bold white on blue"), " ",
                                 (plain(state["deployment"]), "bold"),
                                 ("  deployment over nodes", "dim")),
                   Text.assemble(
                       (" NATS DISCONNECTED: this may be stale ", "bold white on red")
                       if state.get("bus") == "disconnected" else "",
                       ("  operator ", "dim"), (plain(view.operator), "bold")))
    body = height - 1 - len(counters) - len(footer)
    root = Layout()
    if body < 6:
        root.split_column(Layout(header, size=1), Layout(Group(*counters, *footer)))
        return _Fixed(root, width, height)
    top_h = min(max(len(state["nodes"]), len(state["cameras"]), 1) + 3, max(4, body // 3))
    top = Layout(size=top_h)
    top.split_row(Layout(nodes_panel(view, top_h), ratio=3),
                  Layout(cameras_panel(view, top_h), ratio=2))
    root.split_column(Layout(header, size=1), Layout(Group(*counters), size=len(counters)),
                      top, Layout(alerts_panel(view, body - top_h), size=body - top_h),
                      Layout(Group(*footer), size=len(footer)))
    return _Fixed(root, width, height)


class ConsoleDashboard:
    """The console's screen and keys: ``run(model)`` until ``q`` (or cancelled).

    ``decide(node, alert_id, decision, user, note)`` asks the node that raised the alert to
    record the logged-in ``user``'s decision (lfr.cluster.console.request_decision). On a
    terminal it takes the alternate screen and reads keys; ``keys`` replaces them (tests)."""

    def __init__(self, user: Principal, decide: Decide, console: Console | None = None,
                 keys: AsyncIterator[str] | None = None, refresh_s: float = 1.0,
                 pictures: str = "") -> None:
        if not user.may("decide"):
            raise ValueError(f"{user.name} is an {user.role}: the console decides on alerts, "
                             "for operators and supervisors (auditors: lfr alerts, lfr report)")
        self.user, self._decide = user, decide
        self.console = console if console is not None else Console(stderr=True)
        self.keys, self.refresh_s = keys, refresh_s
        self.pictures = pictures  # PictureReader.status: the terminal shows no picture itself
        self.selected: str | None = None
        self.status = ""
        self.logs = LogCapture()
        self._wake = anyio.Event()
        self._done = anyio.Event()

    def view(self, model: ConsoleModel) -> ConsoleView:
        """What the screen shows now; the selection stays on one alert as newer ones arrive."""
        state = model.view()
        ids = [a["id"] for a in state["alerts"]]
        if ids and self.selected not in ids:
            self.selected = ids[0]
        return ConsoleView(state=state, selected=self.selected, operator=self.user.name,
                           status=self.status, pictures=self.pictures)

    async def handle_key(self, key: str, model: ConsoleModel) -> None:
        ids = [a["id"] for a in model.view()["alerts"]]
        index = ids.index(self.selected) if self.selected in ids else None
        if (moved := step_selection(ids, self.selected, key)) is not None:
            self.selected = moved
        elif key in KEY_DECISIONS:
            if index is None:
                self.status = "no alert selected"
                return
            await self.decide(model, ids[index], KEY_DECISIONS[key])
        elif key == "q":
            self._done.set()

    async def decide(self, model: ConsoleModel, alert_id: str, decision: str) -> None:
        node = model.raised_by(alert_id)
        if node is None:
            self.status = f"not recorded: no alert {alert_id} in the stream"
            return
        self.status = f"asking {node} to record {DECISION_LABELS.get(decision, decision)}…"
        self._wake.set()
        try:
            reply = await self._decide(node, alert_id, decision, self.user, "")
        except NodeAway as exc:
            self.status = f"not recorded: {exc}"
            return
        except Exception as exc:  # the server away: tell the operator, keep running
            log.warning("console: decision on %s not recorded: %s", alert_id, exc)
            self.status = f"not recorded: {type(exc).__name__}: {exc}"
            return
        if reply.get("ok"):
            decided = reply["decision"]
            self.status = (f"{DECISION_LABELS.get(decided['decision'], decided['decision'])}: "
                           f"{alert_id[:8]} by {decided['operator']}, recorded on {node}")
        else:
            self.status = f"not recorded: {reply.get('error')}"

    async def run(self, model: ConsoleModel) -> None:
        console = self.console
        screen = console.is_terminal
        fd = stdin_terminal() if self.keys is None and screen else None
        keys = self.keys if self.keys is not None else terminal_keys(fd) if fd is not None else None
        with contextlib.ExitStack() as stack:
            stack.enter_context(self.logs.installed(take_terminal=screen))
            if fd is not None:
                stack.enter_context(cbreak(fd))
            live = stack.enter_context(Live(console=console, screen=screen, auto_refresh=False,
                                            transient=screen, redirect_stdout=False,
                                            redirect_stderr=False))
            async with anyio.create_task_group() as tg:
                if keys is not None:
                    tg.start_soon(self._read_keys, keys, model)
                tg.start_soon(self._refresh_forever, live, model)
                await self._done.wait()
                tg.cancel_scope.cancel()

    def draw(self, model: ConsoleModel, width: int, height: int) -> RenderableType:
        return render_console(self.view(model), width, height)

    async def _refresh_forever(self, live: Live, model: ConsoleModel) -> None:
        while True:
            width, height = self.console.size
            live.update(self.draw(model, width, height), refresh=True)
            # Redrawn on every update from the bus or key, and each refresh_s for the ages
            # (a node's liveness is judged against the clock).
            async with anyio.create_task_group() as tg:
                async def woken() -> None:
                    await self._wake.wait()
                    tg.cancel_scope.cancel()

                async def updated() -> None:
                    await model.changed(self.refresh_s)
                    tg.cancel_scope.cancel()

                tg.start_soon(woken)
                tg.start_soon(updated)
            self._wake = anyio.Event()
            await anyio.sleep(MIN_REDRAW_S)  # a burst of records: one frame, not one each

    async def _read_keys(self, keys: AsyncIterator[str], model: ConsoleModel) -> None:
        async for key in keys:
            await self.handle_key(key, model)
            self._wake.set()
