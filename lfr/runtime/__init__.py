"""Actor runtime: bounded channels with overflow policies, supervised actors, cheap metrics."""

from lfr.runtime.actor import Actor, ActorState, ActorStats
from lfr.runtime.channels import Channel, ChannelStats, Overflow, Receiver, Sender, open_channel
from lfr.runtime.metrics import ActorMetrics, LatencyWindow, RateMeter
from lfr.runtime.supervisor import (
    RestartPolicy,
    Supervisor,
    SupervisorEvent,
    SupervisorStats,
)

__all__ = [
    "Actor",
    "ActorMetrics",
    "ActorState",
    "ActorStats",
    "Channel",
    "ChannelStats",
    "LatencyWindow",
    "Overflow",
    "RateMeter",
    "Receiver",
    "RestartPolicy",
    "Sender",
    "Supervisor",
    "SupervisorEvent",
    "SupervisorStats",
    "open_channel",
]
