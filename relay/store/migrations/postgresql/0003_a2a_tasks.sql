-- 0003: tasks of the relay's A2A face (SPEC.md "A2A mapping"); the same tables as
-- relay/store/migrations/sqlite/0003_a2a_tasks.sql, which explains them, with PostgreSQL's
-- types (timestamptz for times).

CREATE TABLE a2a_tasks (
    id        text PRIMARY KEY,                                    -- a2a_get_task
    owner     text NOT NULL,
    address   text NOT NULL,
    context   text NOT NULL,
    state     text NOT NULL,
    remote_id text,
    snapshot  text NOT NULL,
    push      text NOT NULL DEFAULT '[]',
    version   integer NOT NULL DEFAULT 0,
    status_at timestamptz NOT NULL,
    created   timestamptz NOT NULL,
    updated   timestamptz NOT NULL
);

-- a2a_list_tasks: one client's tasks for one address, newest status first.
CREATE INDEX a2a_tasks_owner ON a2a_tasks (owner, address, status_at, id);
-- a2a_feed: "does this agent own a task older than the row?"
CREATE INDEX a2a_tasks_created ON a2a_tasks (owner, created);

CREATE TABLE a2a_task_events (
    task    text NOT NULL REFERENCES a2a_tasks (id) ON DELETE CASCADE,
    version integer NOT NULL,
    source  text,
    event   text NOT NULL,
    PRIMARY KEY (task, version)                                    -- a2a_task_events
);

-- a2a_update_task: a reply applied once.
CREATE UNIQUE INDEX a2a_task_events_source ON a2a_task_events (task, source)
    WHERE source IS NOT NULL;

CREATE TABLE a2a_task_envelopes (
    envelope text PRIMARY KEY,                                     -- a2a_tasks_for_envelopes
    task     text NOT NULL REFERENCES a2a_tasks (id) ON DELETE CASCADE
);

CREATE INDEX a2a_task_envelopes_task ON a2a_task_envelopes (task);

CREATE TABLE a2a_feed (
    id     integer PRIMARY KEY CHECK (id = 1),
    cursor bigint NOT NULL
);

INSERT INTO a2a_feed (id, cursor) VALUES (1, 0);
