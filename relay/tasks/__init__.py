"""The tasks of the relay's A2A face (SPEC.md "The A2A face"), kept in the relay's store.

* store.py — :class:`~relay.tasks.store.TaskStore`: the tasks, their event logs and
  compare-and-set changes, and :class:`~relay.tasks.store.Tail` to read a log as it grows;
* push.py — :class:`~relay.tasks.push.PushSender`: each logged event POSTed to the task's
  webhooks, best effort;
* replies.py — :class:`~relay.tasks.replies.ReplyTracker`: replies in the owners' inboxes folded
  into their tasks;
* late.py — :class:`~relay.tasks.late.StatusReply`: the reply that set a task's status, which
  replies are late (the agent sent them before it: they leave the status as it is) and where
  their messages go.

The runtime (relay/runtime.py) builds the task store, the push sender and the tracker, and runs
the tracker in the background beside the dispatcher and the federation sender;
relay/server/a2a_face.py only speaks HTTP and A2A to clients on top of the task store. Nothing
here is imported by ``relay`` at start-up: the a2a-sdk modules it needs are loaded when a relay is
built.
"""
