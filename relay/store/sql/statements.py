"""The SQL texts a dialect hands :class:`~relay.store.sql.store.SqlStore`: one field per
statement, each documented with the parameters the shared code binds.

Parameters come in these forms, the same in both dialects:

* ``(a, b)`` — positional, bound in that order (SQLite ``?``/``?N``, PostgreSQL ``%s``);
  ``executemany`` rows are always positional.
* ``{a, b}`` — named, as a mapping (SQLite ``:a``, PostgreSQL ``%(a)s``): statements that use a
  value twice, or optional filters. A mapping may carry names a dialect's text does not use.
* ``rows[N]`` — a batch of rows N values wide, bound the dialect's way by ``Tx.fetch_rows`` or
  ``Tx.insert_rows`` (SQLite: one JSON text expanded by ``json_each``, or ``executemany``;
  PostgreSQL: one array per column expanded by ``unnest``), so one statement serves a batch.
* ``[list]`` — one list of texts (or of integers), as ``SqlStore._array`` binds it.

Where a text is the same in both dialects but for its positional parameter markers, it is
written once, in :func:`portable`.

Every text is a constant: values are always bound, never formatted in, and the drivers' statement
caches reuse them. Timestamps are the dialect's own (``SqlStore._ts``): text in SQLite,
``timestamptz`` in PostgreSQL; rows come back with them in that form (``SqlStore._dt``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from relay.store.sql import rows


@dataclass(frozen=True, slots=True, kw_only=True)
class Statements:
    # migrations ------------------------------------------------------------------------------
    create_migrations: str
    #: → (version)
    select_migrations: str
    #: (version, name)
    insert_migration: str

    # agents ------------------------------------------------------------------------------------
    #: (name, kind, endpoint, token_hash, created); inserts nothing when the name is taken.
    insert_agent: str
    #: (name) → (name, kind, endpoint, created)
    select_agent: str
    #: (token_hash) → (name, kind, endpoint, created)
    select_agent_by_hash: str
    #: () → (name, kind, endpoint, created), by name
    select_agents: str
    #: (name)
    delete_agent: str
    set_agent_token: str
    #: ([names]) → (name)
    select_existing_agents: str

    # accept (relay/store/sql/accept.py) -------------------------------------------------------
    #: rows[10] of envelopes, ON CONFLICT (origin, id) DO NOTHING → (origin, id) inserted.
    insert_envelopes: str
    #: rows[11] of recipients (relay/store/sql/accept.py, RECIPIENT_WIDTH), the idempotent
    #: union: a missing row is inserted, an existing row changes only when it was refused and
    #: the new one is not → (envelope pk, origin, id, recipient, refused) of each row inserted
    #: or changed, in any order.
    insert_recipients: str
    #: rows[3] (agent, envelope pk, delivered at), ON CONFLICT DO NOTHING. Returns, where
    #: ``insert_deliveries`` is None, the delivery rows it added too, (seq, agent) (agents whose
    #: kind is not ``inbox`` get one, due at once); otherwise the inbox rows it added, (seq,
    #: agent, delivered at), which ``insert_deliveries`` takes.
    insert_inbox: str
    #: rows[3] (seq, agent, due) → (seq, agent) of the delivery rows added.
    insert_deliveries: str | None
    #: rows[3] (seq, agent, delivered at) of the inbox rows ``insert_inbox`` added: adds them to
    #: their agents' mailbox usage. None where ``insert_inbox`` does it itself.
    mailbox_add: str | None
    #: rows[7] (envelope pk, at, recipient, event, code, reason, hop)
    insert_events: str
    #: A partner's receipt (``ReceiptMark``): rows of (at, code, reason, hop, origin, id, sender,
    #: recipient) log ``delivered`` for a row still ``sent`` or ``queued`` of that envelope of
    #: that sender; then rows of (code, reason, at, origin, id, sender, recipient) make it
    #: ``delivered``. ``queued`` too: the receipt can overtake the answer to the transaction
    #: that delivered the envelope, and the settle that follows then finds nothing to change.
    receipt_event: str
    receipt_update: str

    # idempotency keys (0004) -----------------------------------------------------------------
    #: rows[6] (agent, key, fingerprint, origin, envelope, created), ON CONFLICT (agent, key) DO
    #: NOTHING → (agent, key) of the rows inserted.
    insert_idempotency_keys: str
    #: (agent, [keys]) → idempotency rows (relay/store/sql/rows.py, ``idempotency_record``).
    select_idempotency_keys: str
    #: (before, limit) → rowcount: the oldest keys recorded before ``before``.
    purge_idempotency_keys: str
    #: (agent, key, envelope) → rowcount
    delete_idempotency_key: str

    # reads -------------------------------------------------------------------------------------
    #: {origin, id, own} → the envelope (kind 0), its recipients (1) and its events (2), the
    #: event rows and the events its recipient rows imply (0009), eleven columns, in that
    #: order: relay/store/sql/rows.py, ``message_status``.
    message_status: str
    #: {agent, after, limit[, thread]} → (seq, origin, id, token, delivered_at, acked_at).
    #: Four texts rather than optional filters, so the partial index of unacked rows and the
    #: thread index serve the forms that can use them.
    inbox_unacked: str
    inbox_all: str
    inbox_unacked_thread: str
    inbox_all_thread: str
    #: (at, agent, id); keeps the first ack time.
    ack: str
    #: (agent, id, agent): takes the rows ``ack`` is about to ack for the first time off the
    #: agent's mailbox usage; run before it. Rowcount 0 when there were none.
    ack_usage: str
    #: (limit) / (match, match, match, match, limit) → envelope summaries, one row per
    #: recipient (relay/store/sql/rows.py, ``envelope_summaries``), newest envelope first.
    recent_envelopes: str
    recent_envelopes_matching: str
    #: () → (the number of rows ``list_queue`` would return), without reading them.
    queue_depth: str
    #: The console's queue (``Store.queue_summary``), none of which reads every row's columns:
    #: () → (domain, rows, earliest next attempt, lowest pk) of the queued rows by domain, from
    #: the partial index ``recipients_due_domain`` alone; () → (agent, rows, earliest next
    #: attempt, lowest seq) of the deliveries by agent.
    queue_domains: str
    delivery_agents: str
    #: (pk) / (seq) → (accepted) of the envelope of one recipient row / one delivery.
    queue_row_accepted: str
    delivery_row_accepted: str
    #: (domain, n) / (agent, n) → (code, reason) of those of the n latest-due rows of one
    #: destination that have failed, latest first.
    queue_failures: str
    delivery_failures: str
    #: The queue (``Store.iter_queue``) as queue entries (relay/store/sql/rows.py,
    #: ``queue_entry``), in pages, oldest due first, each after a row's (next attempt, pk /
    #: seq): the federation queue, one destination's (fixed parameters: domain); the inbox rows
    #: still to be handed to adapter-backed agents (``deliveries``: recipient
    #: ``<agent>@<own>``, destination ``local:<agent>``, SPEC.md §9.5, §9.6) (own, own), one
    #: agent's (own, own, agent). Parameters: (fixed, at, key, fixed, at, n), see ``_after``.
    #: Keyset pages: each starts in the index where the last ended, so a page at the end of a
    #: million rows costs what the first did, and a listing holds one page at a time.
    list_queue_after: str
    list_queue_domain_after: str
    list_deliveries_after: str
    list_deliveries_agent_after: str
    #: (own domain) → (earliest next attempt of a queued row not held for a local agent)
    next_due: str
    #: () → (earliest next attempt of a delivery row)
    next_delivery_due: str

    # leases ------------------------------------------------------------------------------------
    #: {now, until, limit, owner, own[, domain]} → queue entries of the due rows (without
    #: ``domain``: never a held row, whose domain is ``own``). A dialect whose
    #: text only selects (oldest first) marks them with ``lease_mark``; one whose text leases
    #: them itself (UPDATE … RETURNING) returns them in any order and has no ``lease_mark``.
    lease_due: str
    lease_due_domain: str
    #: rows of (until, recipient pk)
    lease_mark: str | None
    #: {now, until, limit, owner, domain} → (agent, seq, origin, id, sender, token, expires,
    #: attempts, code, reason, next_attempt, notify, delay_reported, accepted), the last three
    #: from the recipient row ``<agent>@<domain>`` and the envelope; with
    #: ``delivery_lease_mark`` as for ``lease_due``.
    delivery_lease: str
    #: rows of (until, seq)
    delivery_lease_mark: str | None
    #: () → rowcount: release every lease, for a store one process owns (``release_leases``);
    #: None where leases belong to live processes.
    release_queue_leases: str | None = None
    release_delivery_leases: str | None = None

    # settle ------------------------------------------------------------------------------------
    #: rows of (at, event, code, reason, hop, origin, id, recipient); only for a row still queued.
    settle_event: str
    #: rows of (state, code, reason, next_attempt, tried, delay reported, at, origin, id,
    #: recipient); ``delay_reported`` is set, never cleared.
    settle_update: str
    #: rows of (at, address, event, code, reason, hop, seq)
    delivery_event: str
    #: rows of (next_attempt, code, reason, seq)
    delivery_defer: str
    #: rows of (seq)
    delivery_done: str
    #: rows of (at, seq)
    delivery_ack: str
    #: rows of (seq): takes a row ``delivery_ack`` is about to ack off its agent's usage.
    delivery_ack_usage: str
    #: rows of (code, reason, at, address, seq)
    delivery_bounce: str
    #: rows of (address, seq): the recipient row's ``delayed`` report went.
    delivery_delay: str

    # operator commands -------------------------------------------------------------------------
    #: {domain, id, after, limit} → (pk) of the next queued rows a queue command names, in pk
    #: order after ``after``: one chunk of a flush or a delete (SqlStore._queue_chunks).
    queue_chunk: str
    #: {at, domain, id, after, upto}: log ``flushed``, then make the rows due now (the rows of
    #: one chunk: pk in (after, upto]).
    flush_events: str
    flush_update: str
    #: {at, own, agent, id}: the same for the inbox rows still to be handed to adapter-backed
    #: agents (all, one agent's, or one envelope's).
    flush_delivery_events: str
    flush_delivery_update: str
    #: {agent, id} → (seq, agent) of the inbox rows still to be handed over that a queue
    #: command names (as for ``flush_delivery_events``).
    select_delivery_rows: str
    #: {at, domain, id, code, reason, after, upto}: log ``deleted``, then bounce the rows of one
    #: chunk without a DSN.
    delete_events: str
    delete_update: str

    # mailboxes and held mail (0004) ------------------------------------------------------------
    #: ([names]) → (agent, unacked, bytes, max_unacked, max_bytes)
    mailbox_usage: str
    #: (agent, max_unacked, max_bytes); the agent must exist.
    set_mailbox_quota: str
    #: (own domain) → (recipient address, count) of the held rows.
    held_agents: str
    #: (own domain, address, limit) → (pk, envelope pk, envelope size, via) of the address's
    #: held rows, oldest first.
    held_candidates: str
    #: {at, pks} → (envelope pk) of the rows it turned ``delivered`` (those still queued).
    held_deliver: str
    #: (own domain, now, limit) → queue entries of held rows whose envelope has expired.
    expired_held: str

    # retention (0004) ----------------------------------------------------------------------------
    # ``window_*``: (after, limit) → (last key, newest time, count) of the next ``limit`` rows
    # after ``after`` in key order (NULLs and 0 when there are none); ``purge_*``: the rows of
    # that window (after, last, …) old enough to go.
    window_inbox: str
    #: (after, last, acked before)
    purge_inbox: str
    window_events: str
    #: (after, last, before)
    purge_events: str
    #: (before, before): implied events at or before ``before`` are forgotten (0009).
    raise_event_horizon: str
    window_envelopes: str
    #: (after, last, expired before, settled before, settled before, acked before)
    purge_envelopes: str
    #: (state, status before, limit)
    purge_a2a_tasks: str

    # the A2A face's tasks (0003) ---------------------------------------------------------------
    #: (id, owner, address, context, state, remote_id, snapshot, push, version, status_at,
    #: created, updated)
    a2a_insert_task: str
    #: (envelope, task)
    a2a_link: str
    #: (id) → task columns (relay/store/sql/rows.py, ``a2a_task``)
    a2a_get_task: str
    #: {owner, address, context, state, after, before_at, before_id, limit} → task columns
    a2a_list_tasks: str
    #: the same mapping → (count)
    a2a_count_tasks: str
    #: (state, remote_id, snapshot, push, status_at, updated, version, id, expected version)
    a2a_update_task: str
    #: (task, source) → a row if that source was applied
    a2a_source_seen: str
    #: rows of (task, version, source, event)
    a2a_insert_event: str
    #: (task, after, limit) → (version, event)
    a2a_events: str
    #: ([envelope ids]) → (envelope, task)
    a2a_tasks_for_envelopes: str
    #: ([envelope ids]) → (envelope, task columns): the rows of the tasks they belong to
    a2a_reply_tasks: str
    #: (after seq, limit) → (seq, agent, token)
    a2a_feed: str
    #: () → (owner)
    a2a_owners: str
    #: () → (cursor)
    a2a_feed_cursor: str
    #: (seq); never moves back
    a2a_set_feed_cursor: str

    # signals (0007; SPEC.md §13) ---------------------------------------------------------------
    #: (the 24 columns of rows.SIGNAL_SELECT, tell); inserts nothing when the id is taken.
    signal_insert: str
    #: (id) → signal columns (relay/store/sql/rows.py, ``signal``)
    signal_get: str
    #: (state, generation, holder, token_hash, lease_until, version, updated, result_id,
    #: result_type, result_body, result_sent, 1 if partners are owed an update else 0, id,
    #: expected version): the compare-and-set.
    signal_update: str
    #: (limit) → signal columns and ``tell`` of the signals whose partners are owed an envelope
    signals_untold: str
    #: (id) → the same, for one signal
    signal_untold: str
    #: (version told, id): what was owed is in custody; an update stays owed when the signal
    #: has moved past that version
    signal_told: str
    #: (signal, generation, holder, claimed, until, ended, outcome): a claim opened, or its
    #: lease end and outcome changed.
    signal_claim_upsert: str
    #: (signal, source, amount, at); inserts nothing when the source reinforced it before.
    signal_reinforce: str
    #: (signal) → (source, amount, at)
    signal_reinforcements: str
    #: (signal) → (generation, holder, claimed, until, ended, outcome), oldest first
    signal_claims: str
    #: (limit) → signal columns of open and claimed signals, newest first
    signals_active: str
    #: () → (signal, source, amount, at) of the open and claimed signals
    signals_active_reinforcements: str
    #: (now, now, limit) → (id) of claimed signals whose lease ran out and of open or claimed
    #: ones past their expiry
    signals_due: str
    #: (emitter) → (count) of its open and claimed signals
    signal_open_count: str
    #: (limit) → signal columns of completed signals whose result is not yet in custody
    signal_results_unsent: str
    #: (id)
    signal_mark_sent: str
    #: (agent, topics, threshold, capabilities, updated): insert or replace
    subscription_set: str
    #: (agent) → (agent, topics, threshold, capabilities)
    subscription_get: str
    # the discovery catalog (0008) --------------------------------------------------------------
    #: (agent, updated); nothing when the agent has a row already.
    insert_catalog: str
    #: (agent) → catalog columns (relay/store/sql/rows.py, ``catalog_record``)
    select_catalog: str
    #: {vis, hidden} → catalog columns of every agent listed with one of ``[vis]`` and not in
    #: ``[hidden]``, by agent name.
    select_catalog_scope: str
    #: (visibility, description, tags, queries, profile, document, updated, agent)
    update_catalog: str
    #: {terms, vis, hidden, scan} → (term index, keys joined by commas or null), one row per
    #: term of ``[terms]`` — each one word: SQLite an FTS5 query for the word and the
    #: visibilities, PostgreSQL a tsquery of the word —: the ``scan`` smallest keys of the rows
    #: in scope whose index matches it (relay/store/sql/store.py, ``catalog_matches``, groups
    #: them by the bit set of the terms each matched).
    catalog_term: str
    #: {vis, hidden} → (count) of the rows in scope
    count_catalog: str
    #: ([keys]) → catalog columns, then the key
    select_catalog_keys: str


def portable(marker: str) -> dict[str, str]:
    """The statements whose text both dialects share but for the positional parameter marker
    (SQLite ``?``, PostgreSQL ``%s``): fields of :class:`Statements`, each written once."""
    return {name: text.replace("?", marker) for name, text in _PORTABLE.items()}


#: A local delivery as a queue entry, the columns of ``rows.QUEUE_SELECT``: the inbox row's
#: ``seq`` stands for the recipient row's key; ``notify`` and ``delay_reported`` come from the
#: recipient row ``<agent>@<own>`` (absent: the defaults; ``0 = 1`` is false in the type of
#: either dialect).
_DELIVERY_SELECT: Final = """
SELECT d.seq, e.origin, e.id, e.sender, d.agent || '@' || ?, 'local:' || d.agent, e.token,
       e.expires, d.attempts, d.next_attempt, d.code, d.reason, r.notify,
       coalesce(r.delay_reported, 0 = 1), e.accepted
FROM deliveries AS d
JOIN inbox AS i ON i.seq = d.seq
JOIN envelopes AS e ON e.pk = i.envelope
LEFT JOIN recipients AS r ON r.envelope = e.pk AND r.recipient = d.agent || '@' || ?
"""


def _after(select: str, where: str, table: str) -> str:
    """A page of queue rows after a (next attempt, key), as two index range scans merged: the
    rest of the rows due at that very instant (``next_attempt = ? AND key > ?``), then those
    due later. The row value ``(next_attempt, key) > (?, ?)`` reads the same, but SQLite seeks
    on its first column only and steps over every row due at that instant with a lower key:
    after ``synq queue flush`` a million rows share one, and each page walked them again. The
    parameters: (the ``select``'s and ``where``'s, at, key, the same again, at, n). Columns
    10 and 1 are next_attempt and the key in both selects."""
    key = "r.pk" if table == "r" else "d.seq"
    return (
        f"{select}WHERE {where}{table}.next_attempt = ? AND {key} > ?\n"
        f"UNION ALL\n{select}WHERE {where}{table}.next_attempt > ?\nORDER BY 10, 1 LIMIT ?"
    )


#: The texts of :func:`portable`, with ``?`` for each parameter (and no other ``?``).
_PORTABLE: Final = {
    "select_migrations": "SELECT version FROM schema_migrations",
    "insert_agent": """
INSERT INTO agents (name, kind, endpoint, token_hash, created) VALUES (?, ?, ?, ?, ?)
ON CONFLICT (name) DO NOTHING
""",
    "select_agent": rows.AGENT_SELECT + "WHERE name = ?",
    "select_agent_by_hash": rows.AGENT_SELECT + "WHERE token_hash = ?",
    "select_agents": rows.AGENT_SELECT + "ORDER BY name",
    "delete_agent": "DELETE FROM agents WHERE name = ?",
    "set_agent_token": "UPDATE agents SET token_hash = ? WHERE name = ?",
    "ack": """
UPDATE inbox SET acked_at = coalesce(acked_at, ?)
WHERE agent = ? AND envelope IN (SELECT pk FROM envelopes WHERE id = ?)
""",
    "recent_envelopes": rows.SUMMARY_SELECT.format(
        pick="SELECT pk FROM envelopes ORDER BY pk DESC LIMIT ?"
    ),
    "recent_envelopes_matching": rows.SUMMARY_SELECT.format(
        pick="""SELECT pk FROM envelopes
    WHERE id = ? OR thread = ? OR sender = ?
       OR pk IN (SELECT envelope FROM recipients WHERE recipient = ?)
    ORDER BY pk DESC LIMIT ?"""
    ),
    "next_due": "SELECT min(next_attempt) FROM recipients WHERE state = 'queued' AND domain <> ?",
    "next_delivery_due": "SELECT min(next_attempt) FROM deliveries",
    "queue_depth": (
        "SELECT (SELECT count(*) FROM recipients WHERE state = 'queued')"
        " + (SELECT count(*) FROM deliveries)"
    ),
    "queue_domains": """
SELECT domain, count(*), min(next_attempt), min(pk) FROM recipients
WHERE state = 'queued' GROUP BY domain
""",
    "delivery_agents": (
        "SELECT agent, count(*), min(next_attempt), min(seq) FROM deliveries GROUP BY agent"
    ),
    "queue_row_accepted": """
SELECT e.accepted FROM recipients AS r JOIN envelopes AS e ON e.pk = r.envelope WHERE r.pk = ?
""",
    "delivery_row_accepted": """
SELECT e.accepted FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope WHERE i.seq = ?
""",
    "queue_failures": """
SELECT code, reason FROM (
    SELECT code, reason, next_attempt, pk FROM recipients
    WHERE state = 'queued' AND domain = ? ORDER BY next_attempt DESC, pk DESC LIMIT ?
) AS latest
WHERE code IS NOT NULL ORDER BY next_attempt DESC, pk DESC
""",
    "delivery_failures": """
SELECT code, reason FROM (
    SELECT code, reason, next_attempt, seq FROM deliveries
    WHERE agent = ? ORDER BY next_attempt DESC, seq DESC LIMIT ?
) AS latest
WHERE code IS NOT NULL ORDER BY next_attempt DESC, seq DESC
""",
    "list_queue_after": _after(rows.QUEUE_SELECT, "r.state = 'queued' AND ", "r"),
    "list_queue_domain_after": _after(
        rows.QUEUE_SELECT, "r.state = 'queued' AND r.domain = ? AND ", "r"
    ),
    "list_deliveries_after": _after(_DELIVERY_SELECT, "", "d"),
    "list_deliveries_agent_after": _after(_DELIVERY_SELECT, "d.agent = ? AND ", "d"),
    "delivery_done": "DELETE FROM deliveries WHERE seq = ?",
    "delivery_ack": "UPDATE inbox SET acked_at = coalesce(acked_at, ?) WHERE seq = ?",
    # Usage counters (0004): UPDATE … FROM, in both SQLite (3.33+) and PostgreSQL.
    "ack_usage": """
UPDATE mailboxes SET unacked = unacked - x.n, bytes = bytes - x.b
FROM (SELECT count(*) AS n, coalesce(sum(length(e.token)), 0) AS b
      FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
      WHERE i.agent = ? AND e.id = ? AND i.acked_at IS NULL) AS x
WHERE mailboxes.agent = ? AND x.n > 0
""",
    "delivery_ack_usage": """
UPDATE mailboxes SET unacked = unacked - 1, bytes = bytes - x.b
FROM (SELECT i.agent AS agent, length(e.token) AS b
      FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
      WHERE i.seq = ? AND i.acked_at IS NULL) AS x
WHERE mailboxes.agent = x.agent
""",
    "set_mailbox_quota": """
INSERT INTO mailboxes (agent, max_unacked, max_bytes) VALUES (?, ?, ?)
ON CONFLICT (agent) DO UPDATE SET max_unacked = excluded.max_unacked, max_bytes = excluded.max_bytes
""",
    "held_agents": """
SELECT recipient, count(*) FROM recipients WHERE state = 'queued' AND domain = ?
GROUP BY recipient ORDER BY recipient
""",
    "held_candidates": """
SELECT r.pk, r.envelope, length(e.token), e.via
FROM recipients AS r JOIN envelopes AS e ON e.pk = r.envelope
WHERE r.state = 'queued' AND r.domain = ? AND r.recipient = ?
ORDER BY r.pk LIMIT ?
""",
    "expired_held": rows.QUEUE_SELECT
    + "WHERE r.state = 'queued' AND r.domain = ? AND e.expires <= ? ORDER BY r.pk LIMIT ?",
    # Retention: a window of the next rows in key order, then the deletion of the rows of
    # that window old enough to go. Both read at most ``limit`` index entries of the primary
    # key, however many rows the table holds or the window keeps (module docstring of
    # relay/delivery/retention.py).
    "window_inbox": """
SELECT max(seq), max(delivered_at), count(*)
FROM (SELECT seq, delivered_at FROM inbox WHERE seq > ? ORDER BY seq LIMIT ?) AS w
""",
    # Never a row the A2A face's reply tracker has yet to read (relay/tasks/replies.py).
    "purge_inbox": """
DELETE FROM inbox
WHERE seq > ? AND seq <= ? AND acked_at IS NOT NULL AND acked_at <= ?
  AND (seq <= (SELECT cursor FROM a2a_feed WHERE id = 1)
       OR NOT EXISTS (SELECT 1 FROM a2a_tasks AS t WHERE t.owner = inbox.agent))
""",
    "window_events": """
SELECT max(pk), max(at), count(*)
FROM (SELECT pk, at FROM events WHERE pk > ? ORDER BY pk LIMIT ?) AS w
""",
    "purge_events": "DELETE FROM events WHERE pk > ? AND pk <= ? AND at <= ?",
    # One row for every implied event (migrations 0009): message_status shows none accepted at
    # or before the horizon. Never moved back, so concurrent sweeps need no order.
    "raise_event_horizon": """
UPDATE event_horizon SET purged_before = ?
WHERE id = 1 AND (purged_before IS NULL OR purged_before < ?)
""",
    "window_envelopes": """
SELECT max(pk), max(accepted), count(*)
FROM (SELECT pk, accepted FROM envelopes WHERE pk > ? ORDER BY pk LIMIT ?) AS w
""",
    # The recipient rows, inbox rows, deliveries and events go with the envelope (ON DELETE
    # CASCADE). Nothing queued or held, nothing unacknowledged, nothing the reply tracker has
    # yet to read; SPEC.md §8.5 for ``expires``.
    "purge_envelopes": """
DELETE FROM envelopes
WHERE pk > ? AND pk <= ? AND expires <= ? AND accepted <= ?
  AND NOT EXISTS (SELECT 1 FROM recipients AS r WHERE r.envelope = envelopes.pk
                  AND (r.state = 'queued' OR r.updated > ?))
  AND NOT EXISTS (SELECT 1 FROM inbox AS i WHERE i.envelope = envelopes.pk
                  AND (i.acked_at IS NULL OR i.acked_at > ?
                       OR (i.seq > (SELECT cursor FROM a2a_feed WHERE id = 1)
                           AND EXISTS (SELECT 1 FROM a2a_tasks AS t WHERE t.owner = i.agent))))
""",
    "purge_a2a_tasks": """
DELETE FROM a2a_tasks WHERE id IN (
    SELECT id FROM a2a_tasks WHERE state = ? AND status_at <= ? ORDER BY status_at LIMIT ?)
""",
    "delivery_bounce": """
UPDATE recipients SET state = 'bounced', code = ?, reason = ?, updated = ?
WHERE recipient = ? AND envelope = (SELECT i.envelope FROM inbox AS i WHERE i.seq = ?)
""",
    "a2a_insert_task": """
INSERT INTO a2a_tasks (id, owner, address, context, state, remote_id, snapshot, push, version,
                       status_at, created, updated, status_by)
VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)
""",
    "a2a_link": "INSERT INTO a2a_task_envelopes (envelope, task) VALUES (?, ?)",
    "a2a_get_task": rows.A2A_TASK_SELECT + "WHERE id = ?",
    "a2a_update_task": """
UPDATE a2a_tasks
SET state = ?, remote_id = ?, snapshot = ?, push = ?, status_at = ?, updated = ?, status_by = ?,
    version = ?
WHERE id = ? AND version = ?
""",
    "a2a_source_seen": "SELECT 1 FROM a2a_task_events WHERE task = ? AND source = ?",
    "a2a_insert_event": "INSERT INTO a2a_task_events (task, version, source, event) VALUES (?, ?, ?, ?)",
    "a2a_events": """
SELECT version, event FROM a2a_task_events WHERE task = ? AND version > ?
ORDER BY version LIMIT ?
""",
    # Rows of agents that owned a task by the time the row arrived: a reply always arrives after
    # the task that asked for it, and older mail of the same agent is none of the tracker's
    # business.
    "a2a_feed": """
SELECT i.seq, i.agent, e.token
FROM inbox AS i JOIN envelopes AS e ON e.pk = i.envelope
WHERE i.seq > ?
  AND EXISTS (SELECT 1 FROM a2a_tasks AS t WHERE t.owner = i.agent AND t.created <= i.delivered_at)
ORDER BY i.seq LIMIT ?
""",
    "a2a_owners": "SELECT DISTINCT owner FROM a2a_tasks ORDER BY owner",
    "delete_idempotency_key": """
DELETE FROM idempotency_keys WHERE agent = ? AND key = ? AND envelope = ?
""",
    # A row value IN a subquery: SQLite (3.15+) and PostgreSQL both take it, and neither has a
    # portable DELETE … LIMIT.
    "purge_idempotency_keys": """
DELETE FROM idempotency_keys
WHERE (agent, key) IN (
    SELECT agent, key FROM idempotency_keys WHERE created < ? ORDER BY created LIMIT ?
)
""",
    "a2a_feed_cursor": "SELECT cursor FROM a2a_feed WHERE id = 1",
    # Column names are constants (rows.SIGNAL_COLUMNS); every value is bound.
    "signal_insert": "INSERT INTO signals ("  # noqa: S608
    + rows.SIGNAL_COLUMNS
    + ", tell) VALUES ("
    + ", ".join(["?"] * 25)
    + ") ON CONFLICT (id) DO NOTHING",
    "signal_get": rows.SIGNAL_SELECT + "WHERE id = ?",
    "signal_update": """
UPDATE signals
SET state = ?, generation = ?, holder = ?, token_hash = ?, lease_until = ?, version = ?,
    updated = ?, result_id = ?, result_type = ?, result_body = ?, result_sent = ?,
    tell = CASE WHEN ? = 1 AND tell = 0 THEN 2 ELSE tell END
WHERE id = ? AND version = ?
""",
    # ``tell <> 0`` exactly as the partial index signals_tell says it (0012), so that both
    # planners use the index.
    "signals_untold": "SELECT "  # noqa: S608 — constants only
    + rows.SIGNAL_COLUMNS
    + ", tell FROM signals WHERE tell <> 0 ORDER BY id LIMIT ?",
    "signal_untold": "SELECT "  # noqa: S608 — constants only
    + rows.SIGNAL_COLUMNS
    + ", tell FROM signals WHERE id = ? AND tell <> 0",
    "signal_told": """
UPDATE signals SET tell = CASE WHEN version = ? THEN 0 ELSE 2 END WHERE id = ? AND tell <> 0
""",
    "signal_claim_upsert": """
INSERT INTO signal_claims (signal, generation, holder, claimed, until, ended, outcome)
VALUES (?, ?, ?, ?, ?, ?, ?)
ON CONFLICT (signal, generation)
DO UPDATE SET until = excluded.until, ended = excluded.ended, outcome = excluded.outcome
""",
    "signal_reinforce": """
INSERT INTO signal_reinforcements (signal, source, amount, at) VALUES (?, ?, ?, ?)
ON CONFLICT (signal, source) DO NOTHING
""",
    "signal_reinforcements": """
SELECT source, amount, at FROM signal_reinforcements WHERE signal = ? ORDER BY at, source
""",
    "signal_claims": """
SELECT generation, holder, claimed, until, ended, outcome
FROM signal_claims WHERE signal = ? ORDER BY generation
""",
    "signals_active": rows.SIGNAL_SELECT
    + "WHERE state IN ('open', 'claimed') ORDER BY created DESC, id LIMIT ?",
    "signals_active_reinforcements": """
SELECT r.signal, r.source, r.amount, r.at
FROM signal_reinforcements AS r JOIN signals AS s ON s.id = r.signal
WHERE s.state IN ('open', 'claimed')
""",
    "signals_due": """
SELECT id FROM signals
WHERE (state = 'claimed' AND lease_until <= ?) OR (state IN ('open', 'claimed') AND expires <= ?)
ORDER BY id LIMIT ?
""",
    "signal_open_count": """
SELECT count(*) FROM signals WHERE emitter = ? AND state IN ('open', 'claimed')
""",
    "signal_results_unsent": rows.SIGNAL_SELECT
    + "WHERE state = 'done' AND result_sent = 0 AND result_id IS NOT NULL ORDER BY id LIMIT ?",
    "signal_mark_sent": "UPDATE signals SET result_sent = 1 WHERE id = ?",
    "subscription_set": """
INSERT INTO signal_subscriptions (agent, topics, threshold, capabilities, updated)
VALUES (?, ?, ?, ?, ?)
ON CONFLICT (agent) DO UPDATE SET topics = excluded.topics, threshold = excluded.threshold,
    capabilities = excluded.capabilities, updated = excluded.updated
""",
    "subscription_get": """
SELECT agent, topics, threshold, capabilities FROM signal_subscriptions WHERE agent = ?
""",
    "insert_catalog": "INSERT INTO catalog (agent, updated) VALUES (?, ?) ON CONFLICT (agent) DO NOTHING",
    "select_catalog": rows.CATALOG_SELECT + "WHERE c.agent = ?",
    "update_catalog": """
UPDATE catalog SET visibility = ?, description = ?, tags = ?, queries = ?, profile = ?, document = ?,
                   updated = ?
WHERE agent = ?
""",
}
