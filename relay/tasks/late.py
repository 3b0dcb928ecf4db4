"""The reply that set an A2A face task's current status, as the reply tracker keeps it: which
replies may still change the status, and where the others' content goes (SPEC.md "A2A
mapping", "Late replies").

Envelopes keep no order (SPEC.md §9.1, "No ordering guarantee"): an agent that sends an update
and then an answer — one that ends the task, or asks the client for input — can have the answer
arrive first (the update's delivery retried, or held up while its relay resolves the face's).
Applied as it comes, the update would undo the answer: an ended task would take no more of it,
and a waiting one would go back to working while the agent waits for the client. So when a
reply sets the task's status, the tracker keeps its envelope's ``created`` with the task
(:class:`StatusReply`, in ``A2ATask.status_by``: migration 0010 kept only the reply that
ended a task, 0011 renamed the column when it came to keep any status reply), and for every
later reply:

1. a reply created before the status reply is *late*: it is folded into the task without
   changing its status (adapters/a2a/tasks.py ``fold_late``) — unless it is one folded before,
   which its source (``<sender domain>/<id>``, the envelope's deduplication key, §3.1) in
   :attr:`StatusReply.late` tells; a late reply logs no event, so the store's own check of a
   reply's source (on the event log) cannot see it;
2. a late reply's messages go into the history in the order the agent created the replies:
   before the messages of the late replies created after it (:meth:`StatusReply.before`);
3. a reply created after the status reply applies as it comes; one that sets the status (an
   update, a snapshot, a message) starts a new record, an artifact update leaves it;
4. a task that has ended takes no reply that is not late: the agent made it after the end.

Synq writes ``created`` at millisecond precision, so an update and an answer made in the same
millisecond carry the same time, and equal times tell no order. A task that has ended or waits
for the client (A2A 1.0 §4.1.3: input-required, auth-required) takes a reply of its status
reply's own millisecond as late: an agent does not leave such a state by itself, a waiting one
only on the client's input, which cannot reach it within the millisecond; a working task takes
it as it comes, as before. The status reply itself, read again after a crash, changes nothing:
taken as late, it adds nothing the task lacks; taken as new, the store's check of its source,
which logged its event, makes it a duplicate.

The face's own changes of status (a cancel, a message the relay refused, the client's
follow-up) clear the record: the face's clock is not the agent's, and times of the two never
compare. After a cancel, as before, no later reply changes the task; after a follow-up, every
reply applies as it comes until one sets the status again.

Pure: the record is JSON text the store keeps without reading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["LateReply", "StatusReply"]


def _instant(value: datetime) -> str:
    # Full precision, not the envelope form's milliseconds: ``created`` of another
    # implementation's envelope may carry microseconds (SPEC.md §3.3), and comparing a
    # truncated end with them would call some replies made before the end later than it.
    return value.astimezone(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class LateReply:
    """A late reply folded into a task: its source, when it was created, and how many messages
    it added to the task's history."""

    source: str
    created: datetime
    messages: int


@dataclass(frozen=True, slots=True)
class StatusReply:
    """The reply that set a task's current status (its envelope's ``created``) and the late
    replies folded since, oldest first (module docstring)."""

    created: datetime
    late: tuple[LateReply, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> StatusReply | None:
        """The record as :meth:`to_json` wrote it; None for none, or one that does not parse
        (then no reply is late: an ended task declines them, the rule before the record
        existed, and any other task takes them as they come)."""
        if not text:
            return None
        try:
            data = json.loads(text)
            late = tuple(
                LateReply(
                    str(r["source"]), datetime.fromisoformat(r["created"]), int(r["messages"])
                )
                for r in data.get("late", ())
            )
            record = cls(datetime.fromisoformat(data["created"]), late)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        times = [record.created, *(r.created for r in record.late)]
        # Instants only: a time without an offset compares with no envelope's ``created``.
        return record if all(t.tzinfo is not None for t in times) else None

    def to_json(self) -> str:
        data = {
            "created": _instant(self.created),
            "late": [
                {"source": r.source, "created": _instant(r.created), "messages": r.messages}
                for r in self.late
            ],
        }
        return json.dumps(data, separators=(",", ":"))

    def admits(self, created: datetime, *, settled: bool) -> bool:
        """Whether a reply created at ``created`` is late: made before the status reply, or in
        its millisecond when the task is ``settled`` — ended, or waiting for the client —
        a state the agent does not leave by itself (module docstring)."""
        return created <= self.created if settled else created < self.created

    def folded(self, source: str) -> bool:
        """Whether the late reply from ``source`` was folded before."""
        return any(r.source == source for r in self.late)

    def before(self, created: datetime) -> int:
        """How many late messages at the end of the history a reply created at ``created``
        precedes: those of the late replies created after it."""
        return sum(r.messages for r in self.late if r.created > created)

    def with_late(self, source: str, created: datetime, messages: int) -> StatusReply:
        """The record once the late reply from ``source`` is folded, kept in ``created`` order
        (after the replies of the same time, as :meth:`before` places its messages)."""
        at = sum(1 for r in self.late if r.created <= created)
        reply = LateReply(source, created, messages)
        return StatusReply(self.created, (*self.late[:at], reply, *self.late[at:]))
