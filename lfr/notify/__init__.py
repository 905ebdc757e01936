"""Notifiers and the durable outbox that feeds them."""

from lfr.notify.base import Notifier, NotifierActor, NotifierStats
from lfr.notify.console import ConsoleNotifier
from lfr.notify.jsonl import JsonlNotifier
from lfr.notify.outbox import Delivery, Outbox, OutboxCounts

__all__ = [
    "ConsoleNotifier",
    "Delivery",
    "JsonlNotifier",
    "Notifier",
    "NotifierActor",
    "NotifierStats",
    "Outbox",
    "OutboxCounts",
]
