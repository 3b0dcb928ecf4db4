-- 0011: the record of the reply that ended an A2A face task becomes the record of the reply
-- that set its current status (SPEC.md "A2A mapping", "Late replies").
--
-- * a2a_tasks.ended_by → a2a_tasks.status_by — NULL while no reply of the agent's set the
--   task's status (a task just submitted, one the face changed itself: a follow-up, a cancel, a
--   refused or orphaned message); then the JSON the task store keeps (relay/tasks/late.py):
--   the envelope ``created`` of the reply that set the status, and the late replies folded
--   since — replies the agent made before that one, which arrived after it because envelopes
--   keep no order (SPEC.md §9.1). Opaque to the store.
--   Existing rows keep their value: the record of an ended task's ending reply is the record of
--   the reply that set its (final) status, in the same form; a task still running has NULL and
--   takes its replies as they come until one sets its status.
--
-- RENAME COLUMN (SQLite 3.25) rewrites no row.

ALTER TABLE a2a_tasks RENAME COLUMN ended_by TO status_by;
