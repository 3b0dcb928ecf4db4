-- 0010: the reply that ended an A2A face task (SPEC.md "A2A mapping", "Replies").
--
-- * a2a_tasks.ended_by — NULL until a reply ends the task (and for a task ended by the face
--   itself: a cancel, a refused or orphaned message); then the JSON the task store keeps about
--   the end (relay/tasks/late.py): the ending reply's envelope ``created``, and the late
--   replies folded into the task since — replies the agent made before that one, which
--   arrived after it because envelopes keep no order (SPEC.md §9.1). Opaque to the store.
--   Existing tasks keep NULL: a late reply to one of them is declined, as before.

ALTER TABLE a2a_tasks ADD COLUMN ended_by TEXT;
