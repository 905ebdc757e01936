"""Officers' decisions on alerts: recorded durably, audited with who decided, counted.

The dashboard's keys and the web page's buttons both come here, through the deployment's view.
A decision goes to the outbox and the audit log before it counts; the counts feed the
deployment's own figures (confirmed, false alerts, false alerts per 1,000 faces).
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from lfr.audit import AuditLog
from lfr.messages import DECISIONS, Adjudication, Decision
from lfr.notify.outbox import Outbox


class DecisionStats(msgspec.Struct, frozen=True):
    confirmed: int
    false_alerts: int
    no_action: int

    @property
    def decided(self) -> int:
        return self.confirmed + self.false_alerts + self.no_action


class DecisionLog:
    """This run's decisions, newest per alert. ``operator_name`` turns the name a caller gives
    (or None) into the name recorded."""

    def __init__(self, outbox: Outbox, audit: AuditLog,
                 operator_name: Callable[[str | None], str]) -> None:
        self._outbox, self._audit = outbox, audit
        self._operator_name = operator_name
        self._latest: dict[str, Adjudication] = {}

    def record(self, alert_id: str, decision: Decision, operator: str | None = None,
               note: str = "") -> Adjudication:
        """Outbox, then audit log, then the counts. KeyError for an alert this deployment does
        not hold, ValueError for a decision that is not one of ``DECISIONS``."""
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        if self._outbox.get_alert(alert_id) is None:
            raise KeyError(f"no alert {alert_id!r} in this deployment")
        adjudication = Adjudication(alert_id=alert_id, decision=decision,
                                    operator=self._operator_name(operator), note=note)
        self._outbox.add_adjudication(adjudication)
        self._audit.record_adjudication(adjudication)
        self._latest[alert_id] = adjudication
        return adjudication

    def get(self, alert_id: str) -> Adjudication | None:
        return self._latest.get(alert_id)

    def latest(self) -> dict[str, Adjudication]:
        """A copy: alert id -> its newest decision in this run."""
        return dict(self._latest)

    def statistics(self) -> DecisionStats:
        decided = [a.decision for a in self._latest.values()]
        return DecisionStats(confirmed=decided.count("confirmed"),
                             false_alerts=decided.count("false_alert"),
                             no_action=decided.count("no_action"))
