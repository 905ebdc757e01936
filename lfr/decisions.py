"""Officers' decisions on alerts: recorded durably, audited with who decided, counted.

The dashboard's keys and the web page's buttons both come here, through the deployment's view,
with the authenticated person (``lfr.users.Principal``), never a name a request carries. A
decision goes to the outbox and the audit log before it counts; the counts feed the deployment's
own figures (confirmed, false alerts, false alerts per 1,000 faces).

Who may decide what: operators and supervisors decide an undecided alert and may change their own
decision; only a supervisor changes someone else's (a correction: its audit record names the
corrector and, under ``corrects``, the original decider and decision); auditors never decide.
"""

from __future__ import annotations

import msgspec

from lfr.audit import AuditLog, Kind
from lfr.messages import DECISIONS, Adjudication, Decision
from lfr.notify.outbox import Outbox
from lfr.users import Principal


class NotAllowed(PermissionError):
    """The person's role does not allow this decision (an auditor deciding)."""


class AlreadyDecided(Exception):
    """Someone else decided this alert; only a supervisor may correct it."""


class JoinedAlert(ValueError):
    """The alert joined another's open alert as a further sighting of the same person (a
    deployment spread over nodes, lfr.cluster.sightings): the officer decides that alert."""

    def __init__(self, alert_id: str, into: str) -> None:
        super().__init__(f"{alert_id} is a further sighting of alert {into} (the same person, "
                         f"raised first and still open): decide alert {into}")
        self.alert_id, self.into = alert_id, into


class DecisionStats(msgspec.Struct, frozen=True):
    confirmed: int
    false_alerts: int
    no_action: int

    @property
    def decided(self) -> int:
        return self.confirmed + self.false_alerts + self.no_action


class DecisionLog:
    """This run's decisions, newest per alert."""

    def __init__(self, outbox: Outbox, audit: AuditLog) -> None:
        self._outbox, self._audit = outbox, audit
        self._latest: dict[str, Adjudication] = {}

    def record(self, alert_id: str, decision: Decision, by: Principal,
               note: str = "") -> Adjudication:
        """Outbox, then audit log, then the counts. KeyError for an alert this deployment does
        not hold, ValueError for a decision that is not one of ``DECISIONS``, NotAllowed for a
        role that does not decide, AlreadyDecided when another person decided it and ``by`` is
        not a supervisor, JoinedAlert for a sighting of another alert."""
        if not by.may("decide"):
            raise NotAllowed(f"{by.name} is an {by.role}: auditors read, they do not decide")
        if decision not in DECISIONS:
            raise ValueError(f"decision must be one of {', '.join(DECISIONS)}, got {decision!r}")
        if self._outbox.get_alert(alert_id) is None:
            raise KeyError(f"no alert {alert_id!r} in this deployment")
        into = self._outbox.merged_into(alert_id)
        if into is not None and into != alert_id:
            raise JoinedAlert(alert_id, into)
        # From the outbox: decisions of earlier runs of this deployment count too.
        earlier = self._outbox.adjudications(alert_id)
        previous = earlier[-1] if earlier else None
        correcting = previous is not None and previous.operator != by.name
        if correcting and not by.may("correct"):
            assert previous is not None
            raise AlreadyDecided(
                f"alert {alert_id} was decided by {previous.operator} ({previous.decision}); "
                "only a supervisor may correct another person's decision")
        adjudication = Adjudication(alert_id=alert_id, decision=decision, operator=by.name,
                                    note=note)
        record = {**msgspec.structs.asdict(adjudication), "role": by.role, "auth": by.auth}
        if correcting:
            assert previous is not None
            record["corrects"] = {"operator": previous.operator, "decision": previous.decision,
                                  "time": previous.time}
        self._outbox.add_adjudication(adjudication)
        self._audit.append(Kind.ADJUDICATION, record)
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
