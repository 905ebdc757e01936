"""Actor runtime: bounded channels with overflow policies, supervised actors with a stuck-call
watchdog, broadcast channels for listeners, cheap metrics."""

from lfr.runtime.actor import Actor, ActorState, ActorStats, BusyCall
from lfr.runtime.broadcast import Broadcast, BroadcastStats, Subscription
from lfr.runtime.channels import Channel, ChannelStats, Overflow, Receiver, Sender, open_channel
from lfr.runtime.metrics import ActorMetrics, LatencyWindow, RateMeter
from lfr.runtime.supervisor import (
    RestartPolicy,
    Supervisor,
    SupervisorEvent,
    SupervisorStats,
    WorkerStuck,
)

__all__ = [
    "Actor",
    "ActorMetrics",
    "ActorState",
    "ActorStats",
    "Broadcast",
    "BroadcastStats",
    "BusyCall",
    "Channel",
    "ChannelStats",
    "LatencyWindow",
    "Overflow",
    "RateMeter",
    "Receiver",
    "RestartPolicy",
    "Sender",
    "Subscription",
    "Supervisor",
    "SupervisorEvent",
    "SupervisorStats",
    "WorkerStuck",
    "open_channel",
]
