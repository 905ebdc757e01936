"""A running deployment switches watchlists between two frames (`Deployment.switch_watchlist`,
what `lfr node` does for each published version): on the demo clip, played once offline, a list
without Miranda switched mid-run to one with him (and the reverse). Alerts follow the list in use
frame by frame, no actor stops or restarts, no frame is lost or dropped, the switch is audited
with its version, and a bundle that cannot run leaves the old list deciding.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

import anyio
import pytest
from paths import CLIP, PEOPLE

from lfr.audit import audit_records
from lfr.config import parse_config
from lfr.deployment import Deployment, DeploymentView, RunSummary, WatchlistSwitchError
from lfr.messages import Alert
from lfr.pipeline.matcher import FrameReport
from lfr.plugins import load_plugins
from lfr.runtime.broadcast import Subscription
from lfr.vision.defaults import default_analyzer
from lfr.watchlist import build_watchlist

pytestmark = pytest.mark.slow

MIRANDA = "lin_manuel_miranda"  # on stage from the clip's first frame


@pytest.fixture(scope="module")
def bundles(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """"all": every demo person; "without": all but Miranda (links: nothing copied)."""
    root = tmp_path_factory.mktemp("lists")
    without = root / "without-miranda"
    without.mkdir()
    for person in sorted(PEOPLE.iterdir()):
        if person.name != MIRANDA:
            (without / person.name).symlink_to(person)
    analyzer = default_analyzer()
    build_watchlist(PEOPLE, root / "all", analyzer)
    build_watchlist(without, root / "without", analyzer)
    return {"all": root / "all", "without": root / "without"}


def deployment_on(tmp_path: Path, bundle: Path, cooldown_s: float = 60.0) -> Deployment:
    config = parse_config({
        "name": "switch", "data_dir": str(tmp_path / "data"), "watchlist": {"bundle": str(bundle)},
        "cameras": [{"name": "clip", "url": str(CLIP), "fps_cap": 10}],
        "matching": {"cooldown_s": cooldown_s}, "notifiers": [{"kind": "jsonl"}]}, "test")
    # Offline: every frame is processed, whatever the machine's load.
    return Deployment(config, load_plugins(), offline=True, once=True)


Switcher = Callable[[Deployment, DeploymentView], Coroutine[Any, Any, None]]


def run_with(deployment: Deployment, switcher: Switcher
             ) -> tuple[RunSummary, list[FrameReport], list[Alert]]:
    """Run ``deployment`` to the clip's end with ``switcher`` beside it; every frame report and
    alert, in order."""
    with deployment.frames.record() as reports, deployment.alerts.record() as alerts:

        async def service(view: DeploymentView) -> None:
            await switcher(deployment, view)
            await anyio.sleep_forever()

        summary = anyio.run(lambda: deployment.run(False, [service]))
    return summary, reports.items, alerts.items


async def wait_for(subscription: Subscription[Any], condition: Callable[[Any], bool]) -> None:
    """Until an item published meets ``condition``."""
    try:
        async for item in subscription:
            if condition(item):
                return
    finally:
        subscription.close()


def audit_data(deployment: Deployment, kind: str) -> list[dict[str, Any]]:
    return [r.data for r in audit_records(deployment.data_dir) if r.kind == kind]


def assert_nothing_stopped_or_lost(summary: RunSummary, reports: list[FrameReport],
                                   last_before: int) -> None:
    """No actor restarted, every frame the camera gave was decided, none dropped, and the
    frames across the switch follow on as everywhere else (the fps cap skips a fixed share)."""
    assert summary.restarts == 0 and summary.failed_actors == [] and summary.failures == []
    camera = summary.cameras["clip"]
    assert summary.dropped_frames == 0
    assert summary.frames == camera["frames_emitted"] == len(reports) > 60
    indices = [r.faces.frame.index for r in reports]
    assert indices == sorted(set(indices))
    steps = [b - a for a, b in itertools.pairwise(indices)]
    at = indices.index(last_before)
    assert steps[at] <= max(steps[:at] + steps[at + 1:])


def test_a_list_switched_mid_run_alerts_a_person_added_only_after_the_switch(
        tmp_path: Path, bundles: dict[str, Path]) -> None:
    deployment = deployment_on(tmp_path, bundles["without"])
    broken = tmp_path / "broken-bundle"
    broken.mkdir()
    (broken / "manifest.json").write_text("{ not a manifest")
    outcome: dict[str, Any] = {}

    async def switch(deployment: Deployment, view: DeploymentView) -> None:
        # A second into the clip, Miranda in view all along and settled as not listed.
        await wait_for(view.subscribe_frames(), lambda r: r.faces.frame.index >= 30)
        before = deployment.view.snapshot()
        with pytest.raises(WatchlistSwitchError) as refused:
            await deployment.switch_watchlist(broken, version=7)
        outcome["refused"] = str(refused.value)
        outcome["size_after_refusal"] = deployment.view.snapshot().watchlist_size
        outcome["size_before"] = before.watchlist_size
        outcome["record"] = await deployment.switch_watchlist(bundles["all"], version=8)
        snapshot = deployment.view.snapshot()
        outcome["size_after"], outcome["version_after"] = (snapshot.watchlist_size,
                                                           snapshot.watchlist_version)
        outcome["name"] = deployment.view.person_name(MIRANDA)

    summary, reports, alerts = run_with(deployment, switch)

    # The broken bundle was refused by name, and the old list went on deciding.
    assert str(broken) in outcome["refused"] and "stays" in outcome["refused"]
    assert outcome["size_after_refusal"] == outcome["size_before"] == 5
    # Then the whole list: shown at once, Miranda named.
    assert (outcome["size_after"], outcome["version_after"]) == (6, 8)
    assert outcome["name"] != MIRANDA
    record = outcome["record"]
    last_before = record["switched"]["after_frames"]["clip"]
    assert last_before >= 30 and record["version"] == 8 and record["persons"] == 6
    # Miranda is alerted, from evidence seen after the switch only.
    miranda = [a for a in alerts if a.person_id == MIRANDA]
    assert miranda and all(a.frame_index > last_before for a in miranda)
    assert summary.watchlist["version"] == 8 and summary.watchlist["persons"] == 6
    assert_nothing_stopped_or_lost(summary, reports, last_before)
    # One run, its start and the switch audited: the refused bundle left no record.
    assert len(audit_data(deployment, "deployment_start")) == 1
    loaded = audit_data(deployment, "watchlist_loaded")
    assert [(r["persons"], r.get("version")) for r in loaded] == [(5, None), (6, 8)]
    assert loaded[1]["switched"]["after_frames"] == {"clip": last_before}


def test_a_person_taken_off_mid_run_is_alerted_only_before_the_switch(
        tmp_path: Path, bundles: dict[str, Path]) -> None:
    # No cooldown: a track on Miranda started after the switch would alert him again if the
    # old list were still searched.
    deployment = deployment_on(tmp_path, bundles["all"], cooldown_s=0.0)
    outcome: dict[str, Any] = {}

    async def switch(deployment: Deployment, view: DeploymentView) -> None:
        await wait_for(view.subscribe_alerts(), lambda a: a.person_id == MIRANDA)
        outcome["record"] = await deployment.switch_watchlist(bundles["without"], version=2)
        outcome["name"] = deployment.view.person_name(MIRANDA)

    summary, reports, alerts = run_with(deployment, switch)

    last_before = outcome["record"]["switched"]["after_frames"]["clip"]
    miranda = [a for a in alerts if a.person_id == MIRANDA]
    assert len(miranda) == 1 and miranda[0].frame_index <= last_before
    assert outcome["name"] == MIRANDA  # no longer on the list: no name for the id
    assert summary.watchlist["persons"] == 5
    assert_nothing_stopped_or_lost(summary, reports, last_before)
