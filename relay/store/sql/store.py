"""The :class:`~relay.store.base.Store` methods written once for every SQL dialect.

``SqlStore`` runs the statements of its dialect (``sql``, relay/store/sql/statements.py) through
two kinds of primitive: ``_read`` — one statement outside any transaction, so each read sees one
snapshot and holds nothing afterwards — and write operations, closures over a
:class:`~relay.store.sql.writer.Tx` that the group-commit writer (relay/store/sql/writer.py) runs
inside its transaction. A dialect module adds its SQL text, its connections, the translation of
its driver's errors, and its notifications; nothing here names a driver.
"""

from __future__ import annotations

import abc
import contextlib
import json
import logging
import re
from collections.abc import AsyncGenerator, AsyncIterator, Collection, Iterable, Sequence
from datetime import UTC, datetime
from itertools import chain
from operator import itemgetter
from typing import Any, ClassVar, Final

import orjson

from relay.core import catalog, jsonutil
from relay.core.address import normalize_domain
from relay.core.catalog import CatalogRecord, Profile
from relay.core.errors import (
    ConfigError,
    Conflict,
    InternalError,
    StoreUnavailable,
    SynqError,
    UnknownRecipient,
)
from relay.core.signals import (
    KIND_SIGNAL,
    KIND_SIGNAL_UPDATE,
    ClaimRecord,
    Reinforcement,
    Signal,
    Subscription,
    Transition,
)
from relay.store.base import (
    DELIVERY_CHANNEL,
    FAILURE_SAMPLE,
    FAILURES_SHOWN,
    HELD_CHANNEL,
    LOCAL_DESTINATION,
    QUEUE_CHANNEL,
    QUEUE_PAGE,
    SIGNALS_CHANNEL,
    A2AFeedItem,
    A2ATask,
    A2AUpdate,
    AcceptResult,
    AgentKind,
    AgentRecord,
    DeliveryOutcome,
    DestinationSummary,
    EnvelopeSummary,
    IdempotencyKey,
    IdempotencyRecord,
    InboxItem,
    LocalDelivery,
    MailboxUsage,
    MessageStatus,
    NewEnvelope,
    Outcome,
    PurgeBatch,
    QueueEntry,
    QueueSummary,
    ReceiptMark,
    Store,
    a2a_task_channel,
    inbox_channel,
    local_agent,
)
from relay.store.sql import accept, rows
from relay.store.sql.migrations import Migration, load
from relay.store.sql.statements import Statements
from relay.store.sql.writer import GroupWriter, Op, Tx

__all__ = ["DELETED_CODE", "DELETED_REASON", "SqlStore"]

_log = logging.getLogger(__name__)

#: What ``delete_queued`` records (postsuper -d): permanent, no DSN.
DELETED_CODE: Final = "5.0.0"
DELETED_REASON: Final = "deleted from the queue by the operator"

#: A search term as relay.core.catalog.terms makes it: nothing of either full-text syntax.
_TERM: Final = re.compile(r"[a-z0-9]+")
#: The text of the catalog rows whose records ``catalog_records`` keeps
#: (``SqlStore._catalog_mapped``), in characters: a few pages of results for each of hundreds
#: of searches, or a handful of the largest entries (an MCP server's 128 tools); past it, the
#: memory starts again empty. The records take a few times as many bytes.
MAX_MAPPED_CATALOG_CHARS: Final = 4_000_000

#: ``settle``'s event for an outcome that names none.
_DEFAULT_EVENT: Final = {"sent": "sent", "queued": "deferred", "bounced": "bounced"}
#: Settle events that record no delivery attempt: a row that expired in the queue without being
#: tried, or one held back because its destination is known to be down.
_NOT_ATTEMPTS: Final = frozenset({"expired", "held"})
#: ``signals.tell`` (migration 0012): nothing owed to partners, the offer owed, an update owed.
TELL_NOTHING: Final = 0
TELL_OFFER: Final = 1
TELL_UPDATE: Final = 2
#: ``settle_deliveries``' event per outcome state.
_DELIVERY_EVENT: Final = {"delivered": "delivered", "queued": "deferred", "bounced": "bounced"}

#: Lease order (oldest due first, then row number) of rows a dialect leased in one
#: ``UPDATE … RETURNING``, whose order is unspecified: queue entries, then delivery rows.
_QUEUE_ORDER: Final = itemgetter(9, 0)
_DELIVERY_ORDER: Final = itemgetter(10, 1)


#: Queued rows a queue command (``flush``, ``delete_queued``) changes in one write. Releasing a
#: partner's backlog of a million rows in one UPDATE held the write lock for longer than
#: another process waits for it (``synq queue flush`` failed with "database is locked") and,
#: on SQLite, the event loop with it; a chunk is some 50 ms of statements here.
QUEUE_CHUNK: Final = 5_000


class SqlStore(GroupWriter, Store):
    """A store over one SQL database; a dialect subclass supplies the rest (module docstring)."""

    #: The dialect's statements.
    sql: ClassVar[Statements]
    #: The dialect's name in logs and messages ("SQLite").
    dialect: ClassVar[str]
    #: The dialect's folder under relay/store/migrations.
    migrations_folder: ClassVar[str]
    #: The driver's exception root.
    driver_errors: ClassVar[tuple[type[Exception], ...]]
    #: The driver's exceptions for a unique key taken and a foreign key missing.
    unique_violation: ClassVar[type[Exception]]
    foreign_key_violation: ClassVar[type[Exception]]

    def __init__(self, domain: str | None) -> None:
        super().__init__()
        if domain is None:
            self.domain: str | None = None
        else:
            try:
                self.domain = normalize_domain(domain)
            except SynqError:
                raise ConfigError(f"the store's domain {domain[:80]!r} is not a domain") from None
        #: This store's instance number, the owner of the leases it takes (PostgreSQL); 0 where
        #: one process owns the store.
        self.instance = 0
        #: Queued rows a queue command changes per write (:data:`QUEUE_CHUNK`).
        self.queue_chunk = QUEUE_CHUNK
        #: Migrations this ``open`` applied.
        self.applied_migrations: list[int] = []
        self._schema_version = 0
        self._opened = False
        #: The domain of held rows (``NewEnvelope.held``), which the federation queue never
        #: leases; "" without a domain, which no queued row has.
        self._own = self.domain or ""
        #: Catalog rows already mapped (``catalog_records``), by the row itself, and the
        #: characters of their text columns.
        self._catalog_mapped: dict[tuple[Any, ...], CatalogRecord] = {}
        self._catalog_mapped_chars = 0

    # dialect hooks -----------------------------------------------------------------------------

    @staticmethod
    @abc.abstractmethod
    def _ts(value: datetime) -> Any:
        """An aware datetime as the dialect's timestamp parameter."""

    @staticmethod
    @abc.abstractmethod
    def _dt(value: Any) -> datetime:
        """A timestamp column's value as an aware UTC datetime."""

    @staticmethod
    @abc.abstractmethod
    def _array(values: Sequence[str] | Sequence[int]) -> Any:
        """A list of texts as the one parameter of an ``IN``/``ANY`` test (statements.py)."""

    @staticmethod
    @abc.abstractmethod
    def _split_migration(text: str) -> tuple[str, ...]:
        """A migration file as what ``Tx.script`` runs, in order."""

    @abc.abstractmethod
    def _describe(self) -> str:
        """The store, in words for an operator (never a URL: it may carry a password)."""

    @abc.abstractmethod
    async def _read(self, sql: str, params: Any) -> list[Any]:
        """One statement outside any transaction; every row it returns."""

    async def _read_one(self, sql: str, params: Any) -> Any:
        found = await self._read(sql, params)
        return found[0] if found else None

    async def _read_small(self, sql: str, params: Any) -> list[Any]:
        """A read whose cost is small and bounded — a key or index look-up, a short page of
        small rows — on the hot path of a call: a dialect may run it without a round trip to
        a thread (SQLite). Everything else (pages an operator asks for, searches, scans) goes
        through ``_read``, which never holds up the event loop."""
        return await self._read(sql, params)

    async def _read_small_one(self, sql: str, params: Any) -> Any:
        found = await self._read_small(sql, params)
        return found[0] if found else None

    # schema ------------------------------------------------------------------------------------

    @classmethod
    def migrations(cls) -> tuple[Migration, ...]:
        """The dialect's packaged migrations, in order."""
        return load(cls.migrations_folder, cls._split_migration)

    @classmethod
    def newest_schema_version(cls) -> int:
        """The schema version this code migrates a database to."""
        return len(cls.migrations())

    @property
    def schema_version(self) -> int:
        return self._schema_version

    async def _migrate(self, tx: Tx) -> None:
        """Apply pending migrations inside ``tx``, the dialect's migration transaction (which
        also serialises processes opening one database at once): a failing migration leaves no
        trace, and a schema newer than this code is refused."""
        known = self.migrations()
        await tx.execute(self.sql.create_migrations)
        applied = {row[0] for row in await tx.fetch(self.sql.select_migrations)}
        if applied and max(applied) > len(known):
            raise ConfigError(
                f"{self._describe()} has schema version {max(applied)}, newer than this relay "
                f"knows ({len(known)}); run a newer synq"
            )
        for migration in known:
            if migration.version in applied:
                continue
            for statement in migration.statements:
                await tx.script(statement)
            await tx.execute(self.sql.insert_migration, (migration.version, migration.name))
            self.applied_migrations.append(migration.version)
            _log.info(
                "applied %s migration %04d_%s", self.dialect, migration.version, migration.name
            )
        self._schema_version = len(known)

    # lifecycle ---------------------------------------------------------------------------------

    @abc.abstractmethod
    async def _open_connections(self) -> None:
        """Open the connections, migrating the database on the writer connection first
        (``_migrate``)."""

    def _started(self) -> None:
        """Start what runs beside the writer, once ``open`` succeeded (nothing here)."""

    async def open(self) -> None:
        if self._opened or self._closed:
            raise InternalError("a store is opened once")
        self._opened = True
        try:
            await self._open_connections()
        except BaseException as exc:
            await self._close_connections()
            if isinstance(exc, self.driver_errors):
                error = self._driver_error(exc)
                raise type(error)(f"cannot open {self._describe()}: {error.message}") from exc
            raise
        self._start_writer(f"synq-{self.migrations_folder}-writer")
        self._started()

    @abc.abstractmethod
    async def _close_connections(self) -> None:
        """Close every connection (after a failed ``open`` too); never raise a driver error."""

    def _last_ops(self) -> list[Op]:
        """Operations ``close`` runs after every one queued before it."""
        return []

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        # Operations queued before close still run; the writer stops after them.
        await self._stop_writer(self._last_ops())
        await self._close_connections()

    async def ping(self) -> None:
        if self._closed or not self._writer_running():
            raise StoreUnavailable("the store is not running")
        await self._read("SELECT 1", ())

    # agents ------------------------------------------------------------------------------------

    async def create_agent(
        self, name: str, kind: AgentKind, token_hash: str, endpoint: str | None, now: datetime
    ) -> AgentRecord:
        created = self._ts(now)

        async def run(tx: Tx) -> tuple[AgentRecord, Collection[str]]:
            try:
                count = await tx.execute(
                    self.sql.insert_agent, (name, kind, endpoint, token_hash, created)
                )
            except self.unique_violation as exc:
                # The name is free (ON CONFLICT (name) did not fire), so the token hash is not.
                raise Conflict("that token is already registered to another agent") from exc
            if count == 0:
                raise Conflict(f"an agent named {name!r} already exists")
            # Every agent has a catalog row (0008), listed ``local`` until told otherwise.
            await tx.execute(self.sql.insert_catalog, (name, created))
            record = AgentRecord(name=name, kind=kind, endpoint=endpoint, created=self._dt(created))
            return record, ()

        record: AgentRecord = await self._write(run)
        return record

    async def get_agent(self, name: str) -> AgentRecord | None:
        row = await self._read_small_one(self.sql.select_agent, (name,))
        return None if row is None else rows.agent(row, self._dt)

    async def agent_for_token(self, token_hash: str) -> AgentRecord | None:
        row = await self._read_small_one(self.sql.select_agent_by_hash, (token_hash,))
        return None if row is None else rows.agent(row, self._dt)

    async def list_agents(self) -> list[AgentRecord]:
        return [rows.agent(row, self._dt) for row in await self._read(self.sql.select_agents, ())]

    async def remove_agent(self, name: str) -> bool:
        async def run(tx: Tx) -> tuple[bool, Collection[str]]:
            # The inbox rows go with it: ON DELETE CASCADE. The dispatcher is woken so that a
            # running relay (this process or another on the same store) stops what it ran for
            # the agent, an MCP server's supervisor among them, at once.
            removed = await tx.execute(self.sql.delete_agent, (name,)) > 0
            return removed, (DELIVERY_CHANNEL,) if removed else ()

        removed: bool = await self._write(run)
        return removed

    async def set_agent_token(self, name: str, token_hash: str) -> bool:
        async def run(tx: Tx) -> tuple[bool, Collection[str]]:
            try:
                changed = await tx.execute(self.sql.set_agent_token, (token_hash, name)) > 0
            except self.unique_violation as exc:
                raise Conflict("that token is already registered to another agent") from exc
            return changed, ()

        changed: bool = await self._write(run)
        return changed

    async def existing_agents(self, names: Iterable[str]) -> set[str]:
        wanted = sorted(set(names))
        if not wanted:
            return set()
        found = await self._read_small(self.sql.select_existing_agents, (self._array(wanted),))
        return {row[0] for row in found}

    # custody -----------------------------------------------------------------------------------

    async def accept_many(self, items: Sequence[NewEnvelope], now: datetime) -> list[AcceptResult]:
        if not items:
            return []
        at = self._ts(now)
        batch = tuple((item, at) for item in items)

        async def run(tx: Tx) -> tuple[list[AcceptResult], Collection[str]]:
            return await self._accept_rows(tx, batch)

        # The receipts the items may owe are accepted in the same transaction: their local
        # agents (the senders) are locked with the rest where the dialect locks agents.
        receipts = [r for item in items for r in item.receipts.values()]
        new = [*items, *receipts] if receipts else items
        results: list[AcceptResult] = await self._write(run, accepts=batch, new=new)
        return results

    async def _accept_rows(
        self, tx: Tx, batch: Sequence[tuple[NewEnvelope, Any]]
    ) -> tuple[list[AcceptResult], Collection[str]]:
        """Take custody of ``(item, accepted-at)`` pairs inside ``tx``: record their idempotency
        keys, then the envelopes of the items whose key was free (or that carry none)."""
        if all(item.idempotency is None for item, _ in batch):
            return await self._accept_envelopes(tx, batch)
        priors = await self._claim_keys(tx, batch)
        if not priors:
            return await self._accept_envelopes(tx, batch)
        kept = [pair for i, pair in enumerate(batch) if i not in priors]
        results, channels = await self._accept_envelopes(tx, kept) if kept else ([], ())
        fresh = iter(results)
        merged = [
            AcceptResult(item.origin, item.id, duplicate=True, prior=priors[i])
            if i in priors
            else next(fresh)
            for i, (item, _) in enumerate(batch)
        ]
        return merged, channels

    async def _claim_keys(
        self, tx: Tx, batch: Sequence[tuple[NewEnvelope, Any]]
    ) -> dict[int, IdempotencyRecord]:
        """Record the batch's idempotency keys; return, by item index, the first use of each key
        that was taken: by a committed transaction (or, on PostgreSQL, one that committed while
        this one waited on the key's row), or by an earlier item of the batch."""
        sql = self.sql
        claims = accept.key_claims(batch)
        inserted = await tx.fetch_rows(
            sql.insert_idempotency_keys, list(claims.rows.values()), accept.KEY_WIDTH
        )
        won = {(row[0], row[1]) for row in inserted}
        taken: dict[str, list[str]] = {}
        for owner in claims.first:
            if owner not in won:
                taken.setdefault(owner[0], []).append(owner[1])
        priors: dict[int, IdempotencyRecord] = {}
        for agent, keys in taken.items():
            found = await tx.fetch(sql.select_idempotency_keys, (agent, self._array(keys)))
            records = {row[1]: rows.idempotency_record(row, self._dt) for row in found}
            for key in keys:
                record = records.get(key)
                if record is None:
                    # Taken when this transaction inserted, gone when it looked: purged between
                    # the two statements by another process. A retry will find it one way.
                    raise Conflict("the idempotency key changed while it was being recorded")
                priors[claims.first[(agent, key)]] = record
        for later, first in claims.repeats.items():
            if first in priors:
                priors[later] = priors[first]
            else:
                agent, key, fingerprint, origin, id, at = claims.rows[first]
                priors[later] = IdempotencyRecord(agent, key, fingerprint, origin, id, self._dt(at))
        return priors

    async def _accept_envelopes(
        self, tx: Tx, batch: Sequence[tuple[NewEnvelope, Any]]
    ) -> tuple[list[AcceptResult], Collection[str]]:
        """Take custody of ``(item, accepted-at)`` pairs inside ``tx``: plan, run the dialect's
        statements, interpret (relay/store/sql/accept.py). Four to six statements however many
        envelopes and recipients the batch holds, and a few more for receipts when the batch
        carries any (SPEC.md §9.4):

        * the receipts its new inbox rows owe (``NewEnvelope.receipts``) are taken into custody
          in the same transaction — no delivery reported without it, none lost — except those
          of adapter-backed agents, whose hand-over the dispatcher reports;
        * a partner's receipt accepted here (not a replay) marks the recipient row it reports
          on ``delivered`` (``NewEnvelope.receipt_of``).
        """
        sql = self.sql
        plan = accept.plan(batch, self.domain, self._ts)
        inserted = await tx.fetch_rows(sql.insert_envelopes, plan.envelopes, accept.ENVELOPE_WIDTH)
        changed: list[Any] = []
        for statement in accept.recipient_statements(plan, inserted):
            changed += await tx.fetch_rows(sql.insert_recipients, statement, accept.RECIPIENT_WIDTH)
        out = accept.interpret(plan, inserted, changed)
        handed_over: set[str] = set()
        if out.inbox:
            handed_over = await self._insert_inbox(tx, out.inbox)
            if handed_over:
                out.channels.add(DELIVERY_CHANNEL)
        if out.events:
            await tx.insert_rows(sql.insert_events, out.events, accept.EVENT_WIDTH)
        marks = [
            (item.receipt_of, at)
            for (item, at, _rows), result in zip(plan.items, out.results, strict=True)
            if item.receipt_of is not None and not result.duplicate
        ]
        if marks:
            await self._mark_delivered(tx, marks)
        receipts = [(r, at) for agent, r, at in out.receipts if agent not in handed_over]
        if receipts:
            # Receipts are DSNs, which owe no receipts themselves: one level deep.
            _results, more = await self._accept_rows(tx, receipts)
            out.channels.update(more)
        return out.results, out.channels

    async def _mark_delivered(self, tx: Tx, marks: Sequence[tuple[ReceiptMark, Any]]) -> None:
        """Rows a partner reports delivered become ``delivered``, the event first (while the row
        is still ``sent`` or ``queued``, the event statement's condition)."""
        await tx.executemany(
            self.sql.receipt_event,
            [
                (at, m.code, m.reason, m.hop, m.origin, m.id, m.sender, m.recipient)
                for m, at in marks
            ],
        )
        await tx.executemany(
            self.sql.receipt_update,
            [(m.code, m.reason, at, m.origin, m.id, m.sender, m.recipient) for m, at in marks],
        )

    async def _insert_inbox(self, tx: Tx, inbox: list[tuple[str, Any, Any]]) -> set[str]:
        """Insert the inbox rows (and the delivery rows of adapter-backed agents, which the
        dispatcher hands over); return the agents that got a delivery row.

        Only agents that get a new row here must exist: a replay naming an agent removed since
        changes nothing for it, and may still deliver to a recipient an earlier copy refused
        (SPEC.md §8.5). An agent removed after the caller's existence check fails the accept
        with UnknownRecipient."""
        names = {row[0] for row in inbox}
        if tx.agents is not None and not names <= tx.agents:
            # The group locked the agents that exist: the others are gone.
            raise UnknownRecipient(f"no local agent named {', '.join(sorted(names - tx.agents))}")
        try:
            added = await tx.fetch_rows(self.sql.insert_inbox, inbox, accept.INBOX_WIDTH)
        except self.foreign_key_violation as exc:
            # The only foreign key an inbox row can miss is its agent's.
            missing = await self._vanished(tx, names)
            raise UnknownRecipient(f"no local agent named {', '.join(sorted(missing))}") from exc
        if self.sql.mailbox_add is not None and added:
            # The agents' mailbox usage, in the same transaction as the rows (0004).
            await tx.fetch_rows(self.sql.mailbox_add, added, accept.INBOX_WIDTH)
        if self.sql.insert_deliveries is not None and added:
            added = await tx.fetch_rows(self.sql.insert_deliveries, added, accept.INBOX_WIDTH)
        return {row[1] for row in added}

    async def _vanished(self, tx: Tx, names: set[str]) -> set[str]:
        """Which of ``names`` are no agent, after an inbox insert failed on its foreign key.

        Where the dialect does not lock agents, the failed statement aborted itself alone and
        the transaction can say. Where it does (``tx.agents``), an agent vanished in a way the
        lock did not see, and the failed statement may have aborted the whole transaction:
        every name is suspect."""
        if tx.agents is not None:
            return names
        found = await tx.fetch(self.sql.select_existing_agents, (self._array(sorted(names)),))
        return (names - {row[0] for row in found}) or names

    async def message_status(self, origin: str, id: str) -> MessageStatus | None:
        # ``own`` names the local recipient rows whose inbox row the dispatcher has yet to hand
        # to an adapter-backed agent: those show ``queued`` with the deferral (SPEC.md §9.5).
        params = {"origin": origin, "id": id, "own": self.domain or ""}
        found = await self._read_small(self.sql.message_status, params)
        return rows.message_status(found, self._dt)

    # idempotency keys --------------------------------------------------------------------------

    async def idempotency_records(
        self, agent: str, keys: Iterable[str]
    ) -> dict[str, IdempotencyRecord]:
        wanted = sorted(set(keys))
        if not wanted:
            return {}
        found = await self._read_small(
            self.sql.select_idempotency_keys, (agent, self._array(wanted))
        )
        return {row[1]: rows.idempotency_record(row, self._dt) for row in found}

    async def release_idempotency_key(
        self, agent: str, key: str, id: str, *, durable: bool = True
    ) -> bool:
        async def run(tx: Tx) -> tuple[bool, Collection[str]]:
            return await tx.execute(self.sql.delete_idempotency_key, (agent, key, id)) > 0, ()

        released: bool = await self._write(run, durable=durable)
        return released

    async def purge_idempotency_keys(self, before: datetime, limit: int) -> int:
        if limit <= 0:
            return 0
        params = (self._ts(before), limit)

        async def run(tx: Tx) -> tuple[int, Collection[str]]:
            return await tx.execute(self.sql.purge_idempotency_keys, params), ()

        purged: int = await self._write(run)
        return purged

    async def _record_key(self, tx: Tx, key: IdempotencyKey, envelope: str, at: Any) -> None:
        """Record ``key`` as naming the local envelope ``envelope`` (the A2A face's writes);
        Conflict if it is taken."""
        if self.domain is None:
            raise InternalError("a store without a domain cannot name a local envelope")
        row = (key.agent, key.key, key.fingerprint, self.domain, envelope, at)
        if not await tx.fetch_rows(self.sql.insert_idempotency_keys, [row], accept.KEY_WIDTH):
            raise Conflict(f"idempotency key {key.key[:80]!r} is already in use")

    # inbox -------------------------------------------------------------------------------------

    async def inbox(
        self,
        agent: str,
        *,
        limit: int,
        include_acked: bool = False,
        thread: str | None = None,
        after_seq: int | None = None,
    ) -> list[InboxItem]:
        if limit <= 0:  # SQLite reads a negative LIMIT as "no limit"; PostgreSQL refuses it
            return []
        sql = self.sql
        if thread is None:
            text = sql.inbox_all if include_acked else sql.inbox_unacked
        else:
            text = sql.inbox_all_thread if include_acked else sql.inbox_unacked_thread
        params = {"agent": agent, "after": after_seq or 0, "limit": limit, "thread": thread}
        return [rows.inbox_item(row, self._dt) for row in await self._read(text, params)]

    async def ack(self, agent: str, id: str, now: datetime) -> bool:
        at = self._ts(now)

        async def run(tx: Tx) -> tuple[bool, Collection[str]]:
            # Usage first, while the rows are still unacked; then the ack. coalesce keeps the
            # first ack time, and the row still counts: acking twice is True.
            made_room = await tx.execute(self.sql.ack_usage, (agent, id, agent)) > 0
            acked = await tx.execute(self.sql.ack, (at, agent, id)) > 0
            return acked, (HELD_CHANNEL,) if made_room else ()

        acked: bool = await self._write(run)
        return acked

    # federation queue --------------------------------------------------------------------------

    async def lease_due(
        self, now: datetime, *, lease_until: datetime, limit: int, domain: str | None = None
    ) -> list[QueueEntry]:
        if limit <= 0:
            return []
        sql = self.sql
        until = self._ts(lease_until)
        params = {
            "now": self._ts(now),
            "until": until,
            "limit": limit,
            "owner": self.instance,
            "domain": domain,
            "own": self._own,
        }
        text = sql.lease_due if domain is None else sql.lease_due_domain

        async def run(tx: Tx) -> tuple[list[QueueEntry], Collection[str]]:
            # Select and mark in the writer's transaction: two lease_due calls in one group run
            # one after the other, so the second never sees the first's rows as free.
            due = await tx.fetch(text, params)
            if sql.lease_mark is None:
                due.sort(key=_QUEUE_ORDER)
            elif due:
                await tx.executemany(sql.lease_mark, [(until, row[0]) for row in due])
            return [rows.queue_entry(row, self._dt) for row in due], ()

        entries: list[QueueEntry] = await self._write(run, durable=False, way_out=True)
        return entries

    async def next_due(self) -> datetime | None:
        row = await self._read_small_one(self.sql.next_due, (self._own,))
        return None if row is None or row[0] is None else self._dt(row[0])

    async def settle(
        self, outcomes: Sequence[Outcome], new: Sequence[NewEnvelope], now: datetime
    ) -> None:
        at = self._ts(now)
        event_rows: list[tuple[Any, ...]] = []
        update_rows: list[tuple[Any, ...]] = []
        for o in outcomes:
            if o.state == "queued" and o.next_attempt is None:
                raise InternalError("a deferred outcome needs next_attempt")
            event = o.event or _DEFAULT_EVENT[o.state]
            next_attempt = (
                self._ts(o.next_attempt) if o.state == "queued" and o.next_attempt else None
            )
            # Every outcome is one delivery attempt, except a row that expired in the queue
            # without being tried, or one held back because its destination is known down.
            tried = 0 if event in _NOT_ATTEMPTS else 1
            event_rows.append((at, event, o.code, o.reason, o.hop, o.origin, o.id, o.recipient))
            update_rows.append(
                (
                    o.state,
                    o.code,
                    o.reason,
                    next_attempt,
                    tried,
                    o.delay_reported,
                    at,
                    o.origin,
                    o.id,
                    o.recipient,
                )
            )
        new = list(new)
        if not outcomes and not new:
            return

        async def run(tx: Tx) -> tuple[None, Collection[str]]:
            if event_rows:
                # The event first, while the row is still queued (settle_event's condition).
                await tx.executemany(self.sql.settle_event, event_rows)
                await tx.executemany(self.sql.settle_update, update_rows)
            channels: Collection[str] = ()
            if new:
                _results, channels = await self._accept_rows(tx, [(item, at) for item in new])
            return None, channels

        # Holds only (SPEC.md §9.3: the destination is down, the rows wait for its next probe):
        # no attempt, nothing acknowledged, so no sync, as a lease. A hold lost to a power cut
        # leaves its row due at its old time, leased and held again. Without this, each new
        # envelope to a partner that is down cost a second synced commit beside every write of
        # the relay's own work (signals' offers and updates, SPEC.md §13.6).
        durable = bool(new) or any(o.event != "held" for o in outcomes)
        await self._write(run, new=new, durable=durable, way_out=True)

    async def list_queue(self, domain: str | None = None) -> list[QueueEntry]:
        return [entry async for entry in self.iter_queue(domain)]

    async def iter_queue(
        self, domain: str | None = None, page: int = QUEUE_PAGE
    ) -> AsyncIterator[QueueEntry]:
        own = self.domain or ""
        agent = local_agent(domain)
        sql = self.sql
        if agent is not None:
            pages = self._queue_pages(sql.list_deliveries_agent_after, (own, own, agent), page)
        elif domain is not None:
            pages = self._queue_pages(sql.list_queue_domain_after, (domain,), page)
        else:
            pages = _due_first(
                self._queue_pages(sql.list_queue_after, (), page),
                self._queue_pages(sql.list_deliveries_after, (own, own), page),
            )
        async with contextlib.aclosing(pages):
            async for entry in pages:
                yield entry

    async def _queue_pages(
        self, sql: str, fixed: tuple[Any, ...], page: int
    ) -> AsyncGenerator[QueueEntry, None]:
        """The rows of one of the ``list_*_after`` statements, ``page`` at a time: each page
        starts after the (next attempt, pk / seq) the last one ended on (columns 9 and 0)."""
        at, key = self._ts(QUEUE_START), 0
        while True:
            found = await self._read(sql, (*fixed, at, key, *fixed, at, page))
            for row in found:
                yield rows.queue_entry(row, self._dt)
            if len(found) < page:
                return
            at, key = found[-1][9], found[-1][0]

    async def queue_depth(self) -> int:
        row = await self._read_one(self.sql.queue_depth, ())
        return int(row[0])

    async def queue_summary(self, limit: int, destinations: int) -> QueueSummary:
        sql = self.sql
        groups = [
            (domain, False, n, due, lowest)
            for domain, n, due, lowest in await self._read(sql.queue_domains, ())
        ] + [
            (LOCAL_DESTINATION + agent, True, n, due, lowest)
            for agent, n, due, lowest in await self._read(sql.delivery_agents, ())
        ]
        groups.sort(key=lambda g: (-g[2], g[0]))
        shown: list[DestinationSummary] = []
        for domain, local, n, due, lowest in groups[:destinations]:
            accepted = await self._read_one(
                sql.delivery_row_accepted if local else sql.queue_row_accepted, (lowest,)
            )
            sample = await self._read(
                sql.delivery_failures if local else sql.queue_failures,
                (local_agent(domain) if local else domain, FAILURE_SAMPLE),
            )
            failures: list[tuple[str, str | None]] = []
            for code, reason in sample:
                if (code, reason) not in failures:
                    failures.append((code, reason))
                    if len(failures) == FAILURES_SHOWN:
                        break
            next_attempt = self._dt(due)
            shown.append(
                DestinationSummary(
                    domain=domain,
                    depth=int(n),
                    # The row may have gone between the two reads (sent, deleted): its next
                    # attempt then stands for its age, as for a row without ``accepted``.
                    oldest=self._dt(accepted[0]) if accepted and accepted[0] else next_attempt,
                    next_attempt=next_attempt,
                    failures=tuple(failures),
                )
            )
        # The first rows: one page of each listing (a generator left behind holds no cursor;
        # each page is read whole).
        first: list[QueueEntry] = []
        if limit > 0:
            async for entry in self.iter_queue(page=limit):
                first.append(entry)
                if len(first) == limit:
                    break
        return QueueSummary(depth=sum(int(g[2]) for g in groups), destinations=shown, first=first)

    async def recent_envelopes(self, limit: int, match: str | None = None) -> list[EnvelopeSummary]:
        if match is None:
            found = await self._read(self.sql.recent_envelopes, (limit,))
        else:
            found = await self._read(
                self.sql.recent_envelopes_matching, (match, match, match, match, limit)
            )
        return rows.envelope_summaries(found, self._dt)

    async def flush(self, now: datetime, domain: str | None = None, id: str | None = None) -> int:
        params = {"at": self._ts(now), "domain": domain, "id": id}
        agent = local_agent(domain)
        # A local agent's destination names only its deliveries; a domain only queued rows;
        # neither, both (SPEC.md §9.6).
        local: dict[str, Any] | None = None
        if domain is None or agent is not None:
            local = {"at": params["at"], "own": self.domain or "", "agent": agent, "id": id}

        count = 0
        if agent is None:
            sql = self.sql
            count = await self._queue_chunks(
                sql.flush_events, sql.flush_update, params, (QUEUE_CHANNEL,)
            )
        if local is not None:
            deliveries = local

            async def run(tx: Tx) -> tuple[int, Collection[str]]:
                await tx.execute(self.sql.flush_delivery_events, deliveries)
                flushed = await tx.execute(self.sql.flush_delivery_update, deliveries)
                return flushed, (DELIVERY_CHANNEL,) if flushed else ()

            count += await self._write(run)
        return count

    async def _queue_chunks(
        self, events: str, update: str, params: dict[str, Any], channels: Collection[str]
    ) -> int:
        """A queue command (flush, delete) on the queued rows ``params`` names, one write per
        ``queue_chunk`` rows in pk order: its ``events`` statement, then its ``update``
        statement, on each chunk. Returns the rows changed; each write wakes ``channels``."""
        total = 0
        after = 0
        while True:

            async def run(tx: Tx, after: int = after) -> tuple[tuple[int, int], Collection[str]]:
                found = await tx.fetch(
                    self.sql.queue_chunk, {**params, "after": after, "limit": self.queue_chunk}
                )
                if not found:
                    return (0, 0), ()
                upto = int(found[-1][0])
                chunk = {**params, "after": after, "upto": upto}
                await tx.execute(events, chunk)
                changed = await tx.execute(update, chunk)
                return (changed, upto if len(found) == self.queue_chunk else 0), (
                    channels if changed else ()
                )

            result: tuple[int, int] = await self._write(run)
            changed, last = result
            total += changed
            if not last:
                return total
            after = last

    async def delete_queued(
        self, now: datetime, id: str | None = None, domain: str | None = None
    ) -> int:
        params = {
            "at": self._ts(now),
            "domain": domain,
            "id": id,
            "code": DELETED_CODE,
            "reason": DELETED_REASON,
        }
        agent = local_agent(domain)
        at = params["at"]
        own = self.domain or ""
        sql = self.sql

        count = 0
        if agent is None:
            # Bounced without a DSN: nothing to wake.
            count = await self._queue_chunks(sql.delete_events, sql.delete_update, params, ())
            if domain is not None:
                return count

        async def run(tx: Tx) -> tuple[int, Collection[str]]:
            # Local deliveries (SPEC.md §9.6): the hand-over is dropped as the dispatcher drops
            # a bounce — the row off the agent's inbox and usage, the recipient ``bounced`` —
            # but with no DSN, and the event says ``deleted``.
            found = await tx.fetch(sql.select_delivery_rows, {"agent": agent, "id": id})
            if not found:
                return 0, ()
            seqs = [(row[0],) for row in found]
            addresses = [(f"{row[1]}@{own}", row[0]) for row in found]
            await tx.executemany(
                sql.delivery_event,
                [(at, a, "deleted", DELETED_CODE, DELETED_REASON, None, q) for a, q in addresses],
            )
            await tx.executemany(
                sql.delivery_bounce,
                [(DELETED_CODE, DELETED_REASON, at, a, q) for a, q in addresses],
            )
            await tx.executemany(sql.delivery_done, seqs)
            await tx.executemany(sql.delivery_ack_usage, seqs)
            await tx.executemany(sql.delivery_ack, [(at, q) for (q,) in seqs])
            return len(found), (HELD_CHANNEL,)

        delivered: int = await self._write(run)
        return count + delivered

    async def release_leases(self) -> int:
        """Release every lease of a store one process owns, at relay start. A store shared by
        processes releases nothing: the leases of a dead process are free already (the dialect
        sees to that), and those of live ones must stay theirs."""
        queue_sql, delivery_sql = self.sql.release_queue_leases, self.sql.release_delivery_leases
        if self.shared_by_processes or queue_sql is None or delivery_sql is None:
            return 0

        async def run(tx: Tx) -> tuple[int, Collection[str]]:
            released = await tx.execute(queue_sql) + await tx.execute(delivery_sql)
            return released, (QUEUE_CHANNEL, DELIVERY_CHANNEL)

        released: int = await self._write(run)
        return released

    # local delivery to adapter-backed agents ----------------------------------------------------

    async def lease_deliveries(
        self, now: datetime, *, lease_until: datetime, limit: int
    ) -> list[LocalDelivery]:
        if limit <= 0:
            return []
        sql = self.sql
        until = self._ts(lease_until)
        params = {
            "now": self._ts(now),
            "until": until,
            "limit": limit,
            "owner": self.instance,
            "domain": self.domain,
        }

        async def run(tx: Tx) -> tuple[list[LocalDelivery], Collection[str]]:
            due = await tx.fetch(sql.delivery_lease, params)
            if sql.delivery_lease_mark is None:
                due.sort(key=_DELIVERY_ORDER)
            elif due:
                await tx.executemany(sql.delivery_lease_mark, [(until, row[1]) for row in due])
            return [rows.local_delivery(row, self._dt) for row in due], ()

        leased: list[LocalDelivery] = await self._write(run, durable=False, way_out=True)
        return leased

    async def settle_deliveries(
        self, outcomes: Sequence[DeliveryOutcome], new: Sequence[NewEnvelope], now: datetime
    ) -> None:
        at = self._ts(now)
        new = list(new)
        if not outcomes and not new:
            return
        events: list[tuple[Any, ...]] = []
        defers: list[tuple[Any, ...]] = []
        finished: list[tuple[Any, ...]] = []
        acks: list[tuple[Any, ...]] = []
        bounces: list[tuple[Any, ...]] = []
        delays: list[tuple[Any, ...]] = []
        for o in outcomes:
            address = f"{o.agent}@{self.domain}"
            events.append((at, address, _DELIVERY_EVENT[o.state], o.code, o.reason, o.hop, o.seq))
            if o.delay_reported:
                delays.append((address, o.seq))
            if o.state == "queued":
                if o.next_attempt is None:
                    raise InternalError("a deferred delivery needs next_attempt")
                defers.append((self._ts(o.next_attempt), o.code, o.reason, o.seq))
                continue
            finished.append((o.seq,))
            acks.append((at, o.seq))
            if o.state == "bounced":
                bounces.append((o.code, o.reason, at, address, o.seq))
        sql = self.sql

        async def run(tx: Tx) -> tuple[None, Collection[str]]:
            # Each outcome names its own inbox row, so running the statements kind by kind (one
            # executemany each) equals running them outcome by outcome.
            for text, batch in (
                (sql.delivery_event, events),
                (sql.delivery_defer, defers),
                (sql.delivery_done, finished),
                # Usage before the ack, while the rows are still unacked.
                (sql.delivery_ack_usage, finished),
                (sql.delivery_ack, acks),
                (sql.delivery_bounce, bounces),
                (sql.delivery_delay, delays),
            ):
                if batch:
                    await tx.executemany(text, batch)
            channels: set[str] = {HELD_CHANNEL} if finished else set()
            if new:
                _results, accepted = await self._accept_rows(tx, [(item, at) for item in new])
                channels.update(accepted)
            return None, channels

        await self._write(run, new=new, way_out=True)

    async def next_delivery_due(self) -> datetime | None:
        row = await self._read_small_one(self.sql.next_delivery_due, ())
        return None if row is None or row[0] is None else self._dt(row[0])

    # mailboxes and held mail (0004) ------------------------------------------------------------

    async def mailbox_usage(self, names: Iterable[str]) -> dict[str, MailboxUsage]:
        wanted = sorted(set(names))
        if not wanted:
            return {}
        found = await self._read_small(self.sql.mailbox_usage, (self._array(wanted),))
        return {
            row[0]: MailboxUsage(
                unacked=int(row[1]), bytes=int(row[2]), max_unacked=row[3], max_bytes=row[4]
            )
            for row in found
        }

    async def set_mailbox_quota(
        self, name: str, *, max_unacked: int | None, max_bytes: int | None
    ) -> bool:
        for value in (max_unacked, max_bytes):
            if value is not None and value < 0:
                raise InternalError("a quota is a count or a size, never negative")

        async def run(tx: Tx) -> tuple[bool, Collection[str]]:
            if not await tx.fetch(self.sql.select_agent, (name,)):
                return False, ()
            await tx.execute(self.sql.set_mailbox_quota, (name, max_unacked, max_bytes))
            # A larger quota may make room for held mail.
            return True, (HELD_CHANNEL,)

        changed: bool = await self._write(run)
        return changed

    async def held_agents(self) -> dict[str, int]:
        if not self.domain:
            return {}
        found = await self._read(self.sql.held_agents, (self.domain,))
        suffix = "@" + self.domain
        return {row[0].removesuffix(suffix): int(row[1]) for row in found}

    async def deliver_held(
        self, agent: str, now: datetime, *, limit: int, max_bytes: int | None
    ) -> int:
        if limit <= 0 or not self.domain or (max_bytes is not None and max_bytes <= 0):
            return 0
        at = self._ts(now)
        address = f"{agent}@{self.domain}"
        sql = self.sql

        async def run(tx: Tx) -> tuple[int, Collection[str]]:
            candidates = await tx.fetch(sql.held_candidates, (self.domain, address, limit))
            chosen: list[Any] = []
            moved = 0
            for pk, _envelope, size, _via in candidates:
                # The envelope goes in while the bytes moved before it stay under the bound
                # (relay/core/quota.py: a mailbox under its quota takes one more message).
                if max_bytes is not None and moved >= max_bytes:
                    break
                chosen.append(pk)
                moved += int(size)
            if not chosen:
                return 0, ()
            changed = await tx.fetch(sql.held_deliver, {"at": at, "pks": self._array(chosen)})
            done = {row[0] for row in changed}
            if not done:
                return 0, ()
            vias = {row[1]: row[3] for row in candidates}
            inbox_rows = [(agent, pk, at) for pk in sorted(done)]
            channels: set[str] = {inbox_channel(agent)}
            if await self._insert_inbox(tx, inbox_rows):
                channels.add(DELIVERY_CHANNEL)
            events = [(pk, at, address, "delivered", None, None, vias[pk]) for pk in sorted(done)]
            await tx.insert_rows(sql.insert_events, events, accept.EVENT_WIDTH)
            return len(done), channels

        delivered: int = await self._write(run, new=[_held_for(agent)])
        return delivered

    async def expired_held(self, now: datetime, limit: int) -> list[QueueEntry]:
        if limit <= 0 or not self.domain:
            return []
        found = await self._read(self.sql.expired_held, (self.domain, self._ts(now), limit))
        return [rows.queue_entry(row, self._dt) for row in found]

    # retention (0004) ----------------------------------------------------------------------------

    async def _purge_window(
        self,
        window: str,
        purge: str,
        params: tuple[Any, ...],
        after: int,
        limit: int,
        newest: Any,
        *,
        also: tuple[str, tuple[Any, ...]] | None = None,
    ) -> PurgeBatch:
        """One batch of a sweep: the next ``limit`` keys after ``after``, and the deletion of
        the rows among them that ``purge`` (bound to ``(after, last, *params)``) finds old
        enough, in one write. The sweep is over when the window reaches the end of the table
        or rows newer than ``newest``: keys are handed out in arrival order, so the rows after
        it are newer still (up to the clock differences of several writers; those wait for the
        next sweep). ``also``: one more statement, run first in the same write."""
        if limit <= 0:
            return PurgeBatch(0, None)

        async def run(tx: Tx) -> tuple[PurgeBatch, Collection[str]]:
            if also is not None:
                await tx.execute(*also)
            found = await tx.fetch(window, (after, limit))
            last, latest, count = found[0] if found else (None, None, 0)
            if last is None:
                return PurgeBatch(0, None), ()
            deleted = await tx.execute(purge, (after, last, *params))
            # A short window reached the end of the table.
            done = latest > newest or count < limit
            return PurgeBatch(deleted, None if done else int(last)), ()

        # Not durable: a purge a power cut undoes is simply done again by the next sweep.
        batch: PurgeBatch = await self._write(run, durable=False)
        return batch

    async def purge_acked(self, before: datetime, *, after: int, limit: int) -> PurgeBatch:
        cutoff = self._ts(before)
        sql = self.sql
        return await self._purge_window(
            sql.window_inbox, sql.purge_inbox, (cutoff,), after, limit, cutoff
        )

    async def purge_events(self, before: datetime, *, after: int, limit: int) -> PurgeBatch:
        cutoff = self._ts(before)
        sql = self.sql
        # The events recipient rows imply (0009) are forgotten by the horizon, not row by row.
        return await self._purge_window(
            sql.window_events,
            sql.purge_events,
            (cutoff,),
            after,
            limit,
            cutoff,
            also=(sql.raise_event_horizon, (cutoff, cutoff)),
        )

    async def purge_envelopes(
        self,
        *,
        expired_before: datetime,
        settled_before: datetime,
        acked_before: datetime,
        after: int,
        limit: int,
    ) -> PurgeBatch:
        expired, settled = self._ts(expired_before), self._ts(settled_before)
        params = (expired, settled, settled, self._ts(acked_before))
        # An envelope is accepted before it expires (both sides check) and before any of its
        # rows settles, so one accepted after both cutoffs has nothing to purge.
        newest = min(expired_before, settled_before)
        sql = self.sql
        return await self._purge_window(
            sql.window_envelopes, sql.purge_envelopes, params, after, limit, self._ts(newest)
        )

    async def purge_a2a_tasks(
        self, states: Sequence[str], before: datetime, *, limit: int
    ) -> PurgeBatch:
        if limit <= 0 or not states:
            return PurgeBatch(0, None)
        cutoff = self._ts(before)

        async def run(tx: Tx) -> tuple[PurgeBatch, Collection[str]]:
            deleted = 0
            for state in sorted(set(states)):
                deleted += await tx.execute(
                    self.sql.purge_a2a_tasks, (state, cutoff, limit - deleted)
                )
                if deleted >= limit:
                    return PurgeBatch(deleted, 0), ()
            return PurgeBatch(deleted, None), ()

        batch: PurgeBatch = await self._write(run, durable=False)
        return batch

    # the A2A face's tasks ----------------------------------------------------------------------

    async def a2a_create_task(
        self, task: A2ATask, envelope: str, *, key: IdempotencyKey | None = None
    ) -> None:
        ts = self._ts
        row = (
            task.id,
            task.owner,
            task.address,
            task.context,
            task.state,
            task.remote_id,
            task.snapshot,
            task.push,
            task.version,
            ts(task.status_at),
            ts(task.created),
            ts(task.updated),
            task.status_by,
        )

        async def run(tx: Tx) -> tuple[None, Collection[str]]:
            try:
                await tx.execute(self.sql.a2a_insert_task, row)
                await tx.execute(self.sql.a2a_link, (envelope, task.id))
            except self.unique_violation as exc:
                raise Conflict(f"task {task.id!r} already exists") from exc
            if key is not None:
                await self._record_key(tx, key, envelope, row[10])
            return None, (a2a_task_channel(task.id),)

        # Not synced on its own (SQLite: synchronous NORMAL for this group, as for leases): the
        # A2A face commits the task's first envelope right after it (relay/tasks/store.py,
        # TaskStore.start) and answers the client only once that envelope is durable, and that
        # later FULL commit fsyncs the WAL with this group's frames before it, in order
        # (https://www.sqlite.org/pragma.html#pragma_synchronous). A power cut in between
        # loses a task and a key no client was told of: its retry starts afresh. One fsync
        # fewer on every A2A call's way in. PostgreSQL commits every group durably.
        await self._write(run, durable=False)

    async def a2a_get_task(self, id: str) -> A2ATask | None:
        row = await self._read_small_one(self.sql.a2a_get_task, (id,))
        return None if row is None else rows.a2a_task(row, self._dt)

    async def a2a_list_tasks(
        self,
        owner: str,
        address: str,
        *,
        context: str | None,
        state: str | None,
        status_after: datetime | None,
        before: tuple[datetime, str] | None,
        limit: int,
    ) -> tuple[list[A2ATask], int]:
        params = {
            "owner": owner,
            "address": address,
            "context": context,
            "state": state,
            "after": self._ts(status_after) if status_after is not None else None,
            "before_at": self._ts(before[0]) if before is not None else None,
            "before_id": before[1] if before is not None else None,
            "limit": max(limit, 0),
        }
        page = await self._read(self.sql.a2a_list_tasks, params)
        total = await self._read_one(self.sql.a2a_count_tasks, params)
        return [rows.a2a_task(row, self._dt) for row in page], int(total[0]) if total else 0

    async def a2a_update_task(
        self,
        task: A2ATask,
        expected_version: int,
        events: Sequence[str] = (),
        *,
        source: str | None = None,
        link: str | None = None,
        key: IdempotencyKey | None = None,
        ack: tuple[str, str, datetime] | None = None,
        cursor: int | None = None,
    ) -> A2AUpdate:
        if key is not None and link is None:
            raise InternalError("an idempotency key names the envelope a change links")
        params = (
            task.state,
            task.remote_id,
            task.snapshot,
            task.push,
            self._ts(task.status_at),
            self._ts(task.updated),
            task.status_by,
            expected_version + max(1, len(events)),
            task.id,
            expected_version,
        )
        # The source is recorded with the first event of the change only: one reply, one entry
        # in the (task, source) index.
        event_rows = [
            (task.id, expected_version + n, source if n == 1 else None, event)
            for n, event in enumerate(events, 1)
        ]

        async def run(tx: Tx) -> tuple[A2AUpdate, Collection[str]]:
            # The reply tracker's ack, cursor and fold in one transaction: one commit per
            # reply instead of three (relay/tasks/replies.py). The ack stands whatever the
            # outcome, as a separate ack would have; the cursor moves only past a reply that
            # is part of the task now.
            channels: list[str] = []
            if ack is not None:
                agent, envelope, at = ack
                if await tx.execute(self.sql.ack_usage, (agent, envelope, agent)) > 0:
                    channels.append(HELD_CHANNEL)
                await tx.execute(self.sql.ack, (self._ts(at), agent, envelope))
            if source is not None and await tx.fetch(self.sql.a2a_source_seen, (task.id, source)):
                if cursor is not None:
                    await tx.execute(self.sql.a2a_set_feed_cursor, (cursor,))
                return "duplicate", channels
            # The compare-and-set. (PostgreSQL, READ COMMITTED: an UPDATE that waited for
            # another writer's row lock re-checks ``version`` on the row as committed, so
            # exactly one of two concurrent updates from the same version wins.)
            if await tx.execute(self.sql.a2a_update_task, params) == 0:
                return "conflict", channels
            if cursor is not None:
                await tx.execute(self.sql.a2a_set_feed_cursor, (cursor,))
            if event_rows:
                await tx.executemany(self.sql.a2a_insert_event, event_rows)
            if link is not None:
                try:
                    await tx.execute(self.sql.a2a_link, (link, task.id))
                except self.unique_violation as exc:
                    raise Conflict(f"envelope {link!r} already belongs to a task") from exc
                if key is not None:
                    await self._record_key(tx, key, link, params[5])
            return "updated", (*channels, a2a_task_channel(task.id))

        # A change that folds a reply (``source``) is not synced on its own (SQLite: synchronous
        # NORMAL for this group, as for a new task in a2a_create_task): everything it writes is
        # derived from the reply, already durable in the owner's inbox, and a power cut that
        # loses it loses the tracker's cursor and the ack with it, so the tracker folds the
        # same reply again after the restart. A crash of the process alone loses nothing
        # (WAL, https://www.sqlite.org/pragma.html#pragma_synchronous). Any other change (a
        # cancel, a follow-up's turn and its key, a push config) is the client's own and
        # synced before it is answered. PostgreSQL commits every group durably.
        outcome: A2AUpdate = await self._write(run, durable=source is None)
        return outcome

    async def a2a_reply_tasks(self, ids: Sequence[str]) -> dict[str, A2ATask]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        found = await self._read_small(self.sql.a2a_reply_tasks, (self._array(wanted),))
        return {row[0]: rows.a2a_task(row[1:], self._dt) for row in found}

    async def a2a_task_events(self, id: str, after: int, limit: int) -> list[tuple[int, str]]:
        if limit <= 0:
            return []
        found = await self._read_small(self.sql.a2a_events, (id, after, limit))
        return [(row[0], row[1]) for row in found]

    async def a2a_tasks_for_envelopes(self, ids: Sequence[str]) -> dict[str, str]:
        wanted = sorted(set(ids))
        if not wanted:
            return {}
        found = await self._read_small(self.sql.a2a_tasks_for_envelopes, (self._array(wanted),))
        return {row[0]: row[1] for row in found}

    async def a2a_feed(self, after_seq: int, limit: int) -> list[A2AFeedItem]:
        if limit <= 0:
            return []
        found = await self._read_small(self.sql.a2a_feed, (after_seq, limit))
        return [A2AFeedItem(seq=row[0], agent=row[1], token=row[2]) for row in found]

    async def a2a_owners(self) -> list[str]:
        return [row[0] for row in await self._read(self.sql.a2a_owners, ())]

    async def a2a_feed_cursor(self) -> int:
        row = await self._read_small_one(self.sql.a2a_feed_cursor, ())
        return int(row[0]) if row else 0

    async def a2a_set_feed_cursor(self, seq: int) -> None:
        async def run(tx: Tx) -> tuple[None, Collection[str]]:
            await tx.execute(self.sql.a2a_set_feed_cursor, (seq,))
            return None, ()

        await self._write(run)

    # signals (0007) -----------------------------------------------------------------------------

    @staticmethod
    def _text(value: Any) -> str | None:
        return None if value is None else jsonutil.dumps(value).decode("utf-8")

    async def signal_insert(self, signal: Signal, tell: bool = False) -> bool:
        ts, text = self._ts, self._text
        row = (
            signal.id,
            signal.owner,
            signal.emitter,
            signal.topic,
            signal.text,
            signal.urgency,
            signal.half_life,
            signal.lease,
            text(list(signal.scope) if isinstance(signal.scope, tuple) else signal.scope),
            ts(signal.created),
            ts(signal.expires),
            signal.content_type,
            text(signal.body),
            signal.state,
            signal.generation,
            signal.holder,
            signal.token_hash,
            None if signal.lease_until is None else ts(signal.lease_until),
            signal.version,
            ts(signal.updated or signal.created),
            signal.result_id,
            signal.result_type,
            text(signal.result_body),
            int(signal.result_sent),
            TELL_OFFER if tell else TELL_NOTHING,
        )
        boosts = [(signal.id, r.source, r.amount, ts(r.at)) for r in signal.reinforcements]

        async def run(tx: Tx) -> tuple[bool, Collection[str]]:
            if await tx.execute(self.sql.signal_insert, row) == 0:
                return False, ()
            if boosts:
                await tx.executemany(self.sql.signal_reinforce, boosts)
            return True, (SIGNALS_CHANNEL,)

        inserted: bool = await self._write(run)
        return inserted

    async def signal_get(self, id: str) -> Signal | None:
        row = await self._read_small_one(self.sql.signal_get, (id,))
        if row is None:
            return None
        found = await self._read_small(self.sql.signal_reinforcements, (id,))
        return rows.signal(row, self._dt, [rows.reinforcement(r, self._dt) for r in found])

    async def signal_claims(self, id: str) -> list[ClaimRecord]:
        found = await self._read_small(self.sql.signal_claims, (id,))
        return [rows.claim_record(r, self._dt) for r in found]

    async def signal_write(
        self, change: Transition, expected_version: int, tell: bool = False
    ) -> bool:
        ts = self._ts
        new = change.signal
        params = (
            new.state,
            new.generation,
            new.holder,
            new.token_hash,
            None if new.lease_until is None else ts(new.lease_until),
            new.version,
            ts(new.updated or new.created),
            new.result_id,
            new.result_type,
            self._text(new.result_body),
            int(new.result_sent),
            int(tell),
            new.id,
            expected_version,
        )
        claims = [
            (
                new.id,
                c.generation,
                c.holder,
                ts(c.claimed),
                ts(c.until),
                None if c.ended is None else ts(c.ended),
                c.outcome,
            )
            for c in change.claims
        ]
        boosts = [(new.id, r.source, r.amount, ts(r.at)) for r in change.reinforcements]

        async def run(tx: Tx) -> tuple[bool, Collection[str]]:
            # The compare-and-set (as a2a_update_task's: under PostgreSQL's READ COMMITTED an
            # UPDATE that waited for another writer's row lock re-checks ``version`` on the row
            # as committed), so of two changes read from one version exactly one is written.
            if await tx.execute(self.sql.signal_update, params) == 0:
                return False, ()
            if claims:
                await tx.executemany(self.sql.signal_claim_upsert, claims)
            if boosts:
                await tx.executemany(self.sql.signal_reinforce, boosts)
            return True, (SIGNALS_CHANNEL,)

        written: bool = await self._write(run)
        return written

    async def signals_untold(self, limit: int, id: str | None = None) -> list[tuple[Signal, str]]:
        if id is None:
            found = await self._read(self.sql.signals_untold, (max(limit, 0),))
        else:
            found = await self._read_small(self.sql.signal_untold, (id,))
        out: list[tuple[Signal, str]] = []
        for row in found:
            boosts = await self._read_small(self.sql.signal_reinforcements, (row[0],))
            signal = rows.signal(row, self._dt, [rows.reinforcement(r, self._dt) for r in boosts])
            out.append((signal, KIND_SIGNAL if row[-1] == TELL_OFFER else KIND_SIGNAL_UPDATE))
        return out

    async def signal_told(self, id: str, version: int, offer: NewEnvelope | None) -> bool:
        at = None if offer is None else self._ts(offer.created)

        async def run(tx: Tx) -> tuple[bool, Collection[str]]:
            # The mark first: of two processes telling the same signal, the second finds it
            # cleared (PostgreSQL re-checks ``tell <> 0`` once the first's row lock is gone)
            # and queues nothing.
            if await tx.execute(self.sql.signal_told, (version, id)) == 0:
                return False, ()
            channels: Collection[str] = ()
            if offer is not None:
                _results, channels = await self._accept_rows(tx, ((offer, at),))
            return True, channels

        # Unsynced (SPEC.md §13.6): the mark this clears was synced with the change, and a
        # crash that loses this commit loses the offer with it, so the mark owes it again.
        told: bool = await self._write(run, new=() if offer is None else (offer,), durable=False)
        return told

    async def signal_reinforce(self, id: str, reinforcement: Reinforcement) -> bool:
        row = (id, reinforcement.source, reinforcement.amount, self._ts(reinforcement.at))

        async def run(tx: Tx) -> tuple[bool, Collection[str]]:
            if await tx.execute(self.sql.signal_reinforce, row) == 0:
                return False, ()
            return True, (SIGNALS_CHANNEL,)

        added: bool = await self._write(run)
        return added

    async def signals_active(self, limit: int) -> list[Signal]:
        found = await self._read(self.sql.signals_active, (max(limit, 0),))
        if not found:
            return []
        boosts: dict[str, list[Reinforcement]] = {}
        for r in await self._read(self.sql.signals_active_reinforcements, ()):
            boosts.setdefault(r[0], []).append(rows.reinforcement(r[1:], self._dt))
        return [rows.signal(row, self._dt, boosts.get(row[0], ())) for row in found]

    async def signals_due(self, now: datetime, limit: int) -> list[str]:
        at = self._ts(now)
        return [r[0] for r in await self._read(self.sql.signals_due, (at, at, max(limit, 0)))]

    async def signal_open_count(self, emitter: str) -> int:
        row = await self._read_small_one(self.sql.signal_open_count, (emitter,))
        return int(row[0]) if row else 0

    async def signal_results_unsent(self, limit: int) -> list[Signal]:
        found = await self._read(self.sql.signal_results_unsent, (max(limit, 0),))
        return [rows.signal(row, self._dt) for row in found]

    async def signal_mark_sent(self, id: str) -> None:
        async def run(tx: Tx) -> tuple[None, Collection[str]]:
            await tx.execute(self.sql.signal_mark_sent, (id,))
            return None, ()

        await self._write(run)

    async def subscription_set(self, subscription: Subscription, now: datetime) -> None:
        row = (
            subscription.agent,
            self._text(list(subscription.topics)),
            subscription.threshold,
            int(subscription.capabilities),
            self._ts(now),
        )

        async def run(tx: Tx) -> tuple[None, Collection[str]]:
            try:
                await tx.execute(self.sql.subscription_set, row)
            except self.foreign_key_violation as exc:
                raise UnknownRecipient(f"no agent {subscription.agent!r}") from exc
            return None, (SIGNALS_CHANNEL,)

        await self._write(run)

    async def subscription_get(self, agent: str) -> Subscription | None:
        row = await self._read_small_one(self.sql.subscription_get, (agent,))
        return None if row is None else rows.subscription(row)

    # the discovery catalog (0008) ----------------------------------------------------------------

    async def catalog_get(self, agent: str) -> CatalogRecord | None:
        row = await self._read_small_one(self.sql.select_catalog, (agent,))
        return None if row is None else rows.catalog_record(row, self._dt)

    async def catalog_update(
        self,
        agent: str,
        now: datetime,
        *,
        visibility: str | None = None,
        description: str | None = None,
        tags: Sequence[str] | None = None,
        queries: Sequence[str] | None = None,
        profile: Profile | None = None,
    ) -> bool:
        if visibility is not None and visibility not in catalog.VISIBILITIES:
            raise InternalError(f"no visibility {visibility!r}")
        at = self._ts(now)

        async def run(tx: Tx) -> tuple[bool, Collection[str]]:
            found = await tx.fetch(self.sql.select_catalog, (agent,))
            if not found:
                if not await tx.fetch(self.sql.select_agent, (agent,)):
                    return False, ()
                # An agent created before its row could be (another process's create racing
                # the migration is the only way): give it one now.
                await tx.execute(self.sql.insert_catalog, (agent, at))
                found = await tx.fetch(self.sql.select_catalog, (agent,))
            old = rows.catalog_record(found[0], self._dt)
            new = CatalogRecord(
                agent=old.agent,
                kind=old.kind,
                visibility=old.visibility if visibility is None else visibility,
                description=old.description if description is None else description,
                tags=old.tags if tags is None else tuple(tags),
                queries=old.queries if queries is None else tuple(queries),
                profile=old.profile if profile is None else profile,
                updated=old.updated,
            )
            if new == old:
                return False, ()
            await tx.execute(
                self.sql.update_catalog,
                (
                    new.visibility,
                    new.description,
                    json.dumps(list(new.tags)),
                    json.dumps(list(new.queries)),
                    None if new.profile is None else json.dumps(new.profile.to_json()),
                    catalog.document(new),
                    at,
                    agent,
                ),
            )
            return True, ()

        changed: bool = await self._write(run)
        return changed

    async def catalog_scope(
        self, visibilities: Sequence[str], hidden: Sequence[str]
    ) -> list[CatalogRecord]:
        if not visibilities:
            return []
        params = {"vis": self._array(list(visibilities)), "hidden": self._array(list(hidden))}
        found = await self._read(self.sql.select_catalog_scope, params)
        return [rows.catalog_record(row, self._dt) for row in found]

    async def catalog_matches(
        self,
        terms: Sequence[str],
        visibilities: Sequence[str],
        hidden: Sequence[str],
        limit: int,
        scan: int,
    ) -> list[tuple[int, int, int]]:
        if len(terms) > 32 or not all(_TERM.fullmatch(t) for t in terms):
            raise InternalError("search terms are at most 32 words of [a-z0-9]")
        if not set(visibilities) <= set(catalog.VISIBILITIES):
            raise InternalError("no such visibility")
        if not terms or not visibilities or limit < 1 or scan < 1:
            return []
        params = {
            "terms": self._array([self._match(t, visibilities) for t in terms]),
            "vis": self._array(list(visibilities)),
            "hidden": self._array(list(hidden)),
            "scan": scan,
        }
        found = await self._read(self.sql.catalog_term, params)
        return _term_groups(found, limit, scan)

    async def catalog_count(self, visibilities: Sequence[str], hidden: Sequence[str]) -> int:
        if not visibilities:
            return 0
        params = {"vis": self._array(list(visibilities)), "hidden": self._array(list(hidden))}
        row = await self._read_one(self.sql.count_catalog, params)
        return int(row[0])

    async def catalog_records(self, keys: Sequence[int]) -> dict[int, CatalogRecord]:
        if not keys:
            return {}
        found = await self._read_small(self.sql.select_catalog_keys, (self._array(list(keys)),))
        # Searches show the same entries again and again, and an entry changes rarely: mapping a
        # row (its JSON columns, its timestamp) costs more than reading it, so a row seen before
        # gives the record made then. Keyed by the whole row, a changed entry is mapped afresh;
        # the records are immutable, so sharing them is safe.
        mapped = self._catalog_mapped
        records: dict[int, CatalogRecord] = {}
        for row in found:
            seen = tuple(row)
            record = mapped.get(seen)
            if record is None:
                record = rows.catalog_record(row, self._dt)
                # description, tags, queries, profile: the columns that can be long.
                chars = sum(len(text) for text in row[3:7] if text is not None)
                if self._catalog_mapped_chars + chars > MAX_MAPPED_CATALOG_CHARS:
                    mapped.clear()
                    self._catalog_mapped_chars = 0
                if chars <= MAX_MAPPED_CATALOG_CHARS:
                    mapped[seen] = record
                    self._catalog_mapped_chars += chars
            records[int(row[8])] = record
        return records

    @staticmethod
    @abc.abstractmethod
    def _match(term: str, visibilities: Sequence[str]) -> str:
        """The dialect's full-text query for one word, where its index can also keep to the
        ``visibilities`` (``catalog_term``)."""


def _term_groups(
    found: Iterable[tuple[int, str | None]], limit: int, scan: int
) -> list[tuple[int, int, int]]:
    """``catalog_matches``'s rows from ``catalog_term``'s: per term (its index), the keys in
    scope that match it, the ``scan`` smallest, joined by commas (None for no match).

    The entries are split by the bit set of the terms they match with set operations, one term
    at a time: a group that some of the term's keys fall in splits in two, keys seen for the
    first time start the term's own group. Python's sets do that work in C, so it costs far
    less than grouping row by row, in SQL (a sort of every match, then of every row) or here.
    Of all the keys, the ``scan`` smallest are kept: as each term brought its ``scan``
    smallest, their bit sets are whole. The rows are those of the ``limit`` smallest keys of
    each group, with its size."""
    groups: dict[int, set[int]] = {}
    for index, joined in found:
        if not joined:
            continue
        bit = 1 << int(index)
        # Decimal integers joined by commas: a JSON array once bracketed, which orjson reads
        # faster than int() one at a time (and three times as fast as the json module).
        keys = set(orjson.loads(f"[{joined}]"))
        split: dict[int, set[int]] = {}
        shared: list[set[int]] = []
        for mask, group in groups.items():
            both = group & keys
            if both:
                split[mask | bit] = both
                shared.append(both)
                group -= both
            if group:
                split[mask] = group
        fresh = keys.difference(*shared) if shared else keys
        if fresh:
            split[bit] = fresh
        groups = split
    # The groups are disjoint: their sizes add up to the number of keys.
    if sum(map(len, groups.values())) > scan:
        last = sorted(chain.from_iterable(groups.values()))[scan - 1]
        groups = {mask: {k for k in group if k <= last} for mask, group in groups.items()}
    return [
        (mask, key, len(group))
        for mask, group in groups.items()
        for key in (sorted(group)[:limit] if len(group) > limit else group)
    ]


def _held_for(agent: str) -> NewEnvelope:
    """A stand-in envelope naming ``agent`` as a local recipient, so that a dialect that locks
    the agents a group delivers to (PostgreSQL, ``Op.new``) locks this one for
    ``deliver_held`` too: its inbox rows then take sequence numbers in commit order, and an
    agent removed meanwhile fails the delivery instead of half of it."""
    epoch = datetime.fromtimestamp(0, UTC)
    return NewEnvelope(
        origin="",
        id="",
        sender="",
        token="",
        created=epoch,
        expires=epoch,
        thread=None,
        kind="",
        local=[agent],
        remote=[],
        via="",
    )


#: Before the first queued row of any listing: no row is due before 1970.
QUEUE_START: Final = datetime(1970, 1, 1, tzinfo=UTC)


async def _due_first(
    first: AsyncGenerator[QueueEntry, None], second: AsyncGenerator[QueueEntry, None]
) -> AsyncGenerator[QueueEntry, None]:
    """Two listings, each in next-attempt order, as one in that order (``first``'s row first
    of two due at once)."""
    async with contextlib.aclosing(first), contextlib.aclosing(second):
        a = await anext(first, None)
        b = await anext(second, None)
        while a is not None and b is not None:
            if b.next_attempt < a.next_attempt:
                yield b
                b = await anext(second, None)
            else:
                yield a
                a = await anext(first, None)
        rest, head = (first, a) if a is not None else (second, b)
        while head is not None:
            yield head
            head = await anext(rest, None)
