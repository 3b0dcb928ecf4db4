"""The end of an A2A face task, as the reply tracker keeps it: which replies still count once
the task has ended (SPEC.md "A2A mapping", "Replies").

Envelopes keep no order (SPEC.md §9.1, "No ordering guarantee"): an agent that sends an update
and then its final answer can have the answer arrive first (the update's delivery retried, or
held up while its relay resolves the face's). The task has ended when the update arrives, yet
the update holds content the agent meant to be part of it. So when a reply ends a
task, the tracker keeps its envelope's ``created`` with the task (``A2ATask.ended_by``, migration
0010), and for every later reply:

1. a reply created after the ending one is declined: the agent sent it after it ended the task;
2. a reply created no later than the ending one is *late*: it is folded into the task without
   changing how the task ended (adapters/a2a/tasks.py ``fold_late``) — unless it is one folded
   before, which its source (``<sender domain>/<id>``, the envelope's deduplication key, §3.1)
   in :attr:`Ending.late` tells; a late reply logs no event, so the store's own check of a
   reply's source (on the event log) cannot see it;
3. a late reply's messages go into the history in the order the agent created the replies:
   before the messages of the late replies created after it (:meth:`Ending.before`).

"No later than" rather than "before": Synq writes ``created`` at millisecond precision, so an
update and an answer made in the same millisecond carry the same time; the ending reply itself,
read again after a crash, is recognised by the store's check of its source, which logged the
terminal event.

A task ended by the face itself (a cancel, a message the relay refused) has no :class:`Ending`:
every later reply is declined, as the A2A face promises for a canceled task.

Pure: the record is JSON text the store keeps without reading it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime

__all__ = ["Ending", "LateReply"]


def _instant(value: datetime) -> str:
    # Full precision, not the envelope form's milliseconds: ``created`` of another
    # implementation's envelope may carry microseconds (SPEC.md §3.3), and comparing a
    # truncated end with them would call some replies made before the end later than it.
    return value.astimezone(UTC).isoformat()


@dataclass(frozen=True, slots=True)
class LateReply:
    """A late reply folded into an ended task: its source, when it was created, and how many
    messages it added to the task's history."""

    source: str
    created: datetime
    messages: int


@dataclass(frozen=True, slots=True)
class Ending:
    """The reply that ended a task (its envelope's ``created``) and the late replies folded
    since, oldest first (module docstring)."""

    created: datetime
    late: tuple[LateReply, ...] = ()

    @classmethod
    def parse(cls, text: str | None) -> Ending | None:
        """The record as :meth:`to_json` wrote it; None for none, or one that does not parse
        (then late replies are declined, the rule before the record existed)."""
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
            ending = cls(datetime.fromisoformat(data["created"]), late)
        except (ValueError, TypeError, KeyError, AttributeError):
            return None
        times = [ending.created, *(r.created for r in ending.late)]
        # Instants only: a time without an offset compares with no envelope's ``created``.
        return ending if all(t.tzinfo is not None for t in times) else None

    def to_json(self) -> str:
        data = {
            "created": _instant(self.created),
            "late": [
                {"source": r.source, "created": _instant(r.created), "messages": r.messages}
                for r in self.late
            ],
        }
        return json.dumps(data, separators=(",", ":"))

    def admits(self, created: datetime) -> bool:
        """Whether a reply created at ``created`` was made no later than the ending reply."""
        return created <= self.created

    def folded(self, source: str) -> bool:
        """Whether the late reply from ``source`` was folded before."""
        return any(r.source == source for r in self.late)

    def before(self, created: datetime) -> int:
        """How many late messages at the end of the history a reply created at ``created``
        precedes: those of the late replies created after it."""
        return sum(r.messages for r in self.late if r.created > created)

    def with_late(self, source: str, created: datetime, messages: int) -> Ending:
        """The record once the late reply from ``source`` is folded, kept in ``created`` order
        (after the replies of the same time, as :meth:`before` places its messages)."""
        at = sum(1 for r in self.late if r.created <= created)
        reply = LateReply(source, created, messages)
        return Ending(self.created, (*self.late[:at], reply, *self.late[at:]))
