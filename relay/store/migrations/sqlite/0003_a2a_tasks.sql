-- 0003: tasks of the relay's A2A face (SPEC.md "A2A mapping").
--
-- An unmodified A2A client calls the relay's face for some address; the face turns the call
-- into an envelope from the client's local agent and answers with a Task that advances as
-- reply envelopes come back. The task lives here, not in memory, so it survives a restart.
--
-- * a2a_tasks — one row per task: who asked (owner, a local agent name), whom (address), the
--   A2A ids, the Task JSON the face serves (snapshot) and its push-notification configs.
--   ``version`` counts the changes applied (an event, or more, moves it one per event); every
--   change is a compare-and-set on it, so two writers (the reply tracker, a CancelTask) never
--   lose each other's update.
-- * a2a_task_events — the task's event log (A2A StreamResponse JSON, in order), what
--   SendStreamingMessage and SubscribeToTask stream, numbered by the version it brought.
--   ``source`` names the reply envelope a change came from, on the change's first event (NULL
--   on the others and on the face's own changes): applying one reply twice (a crash between
--   applying it and moving the cursor) is recognised by the unique (task, source) pair.
-- * a2a_task_envelopes — the envelopes the face sent for a task's messages (the first one and
--   every follow-up), so a reply's ``in_reply_to`` finds its task.
-- * a2a_feed — the reply tracker's position in the inbox (an inbox sequence number).
--
-- Portable SQL: text and integer columns, no JSON functions; timestamps as in 0001.

CREATE TABLE a2a_tasks (
    id        TEXT PRIMARY KEY,                                    -- a2a_get_task
    owner     TEXT NOT NULL,
    address   TEXT NOT NULL,
    context   TEXT NOT NULL,
    state     TEXT NOT NULL,
    remote_id TEXT,
    snapshot  TEXT NOT NULL,
    push      TEXT NOT NULL DEFAULT '[]',
    version   INTEGER NOT NULL DEFAULT 0,
    status_at TEXT NOT NULL,
    created   TEXT NOT NULL,
    updated   TEXT NOT NULL
) STRICT;

-- a2a_list_tasks: one client's tasks for one address, newest status first.
CREATE INDEX a2a_tasks_owner ON a2a_tasks (owner, address, status_at, id);

CREATE TABLE a2a_task_events (
    task    TEXT NOT NULL REFERENCES a2a_tasks (id) ON DELETE CASCADE,
    version INTEGER NOT NULL,
    source  TEXT,
    event   TEXT NOT NULL,
    PRIMARY KEY (task, version)                                    -- a2a_task_events
) STRICT;

-- a2a_update_task: a reply applied once.
CREATE UNIQUE INDEX a2a_task_events_source ON a2a_task_events (task, source)
    WHERE source IS NOT NULL;

CREATE TABLE a2a_task_envelopes (
    envelope TEXT PRIMARY KEY,                                     -- a2a_tasks_for_envelopes
    task     TEXT NOT NULL REFERENCES a2a_tasks (id) ON DELETE CASCADE
) STRICT;

CREATE INDEX a2a_task_envelopes_task ON a2a_task_envelopes (task);

CREATE TABLE a2a_feed (
    id     INTEGER PRIMARY KEY CHECK (id = 1),
    cursor INTEGER NOT NULL
) STRICT;

INSERT INTO a2a_feed (id, cursor) VALUES (1, 0);
