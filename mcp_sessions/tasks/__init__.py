"""MCP tasks: `send_message` and `create_session` as tasks, in both protocol eras.

A task is a turn, or a session's creation: it has no state of its own. Its id names the session and the
turn (`ses_<hex>.<turn>`, or `ses_<hex>.new` for a creation); the store keeps only that it was given out,
to whom and by which tool. Its status, and its result once it has one, are read from the session as the
store keeps it, so a task outlives the connection that made it and a server restart, as the turn does,
and any server process sharing the state folder answers for it. Cancelling a task interrupts its turn;
its result is the turn's reply, what the tool would have returned had it waited.

- core.py: ids, what a tool's task follows, a task's state, cancelling, questions to the client.
- handshake.py: the 2025-11-25 era (task-augmented `tools/call`, `tasks/get|result|list|cancel`).
- extension.py: the 2026-07-28 era (the `io.modelcontextprotocol/tasks` extension), and the methods of both.
- status.py: pushing a task's status changes to the client (both eras), so it need not poll.

Clients that use no tasks see nothing of this: `wait_s` and `get_session` work as before.
"""

from .core import Tasks, TaskSupport, as_task_wait
from .extension import EXTENSION, TasksExtension, task_client
from .handshake import middleware

__all__ = ["EXTENSION", "TaskSupport", "Tasks", "TasksExtension", "as_task_wait", "middleware", "task_client"]
