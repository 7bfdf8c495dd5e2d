"""Built-in tools served the way plugin tools are (`tools.py`): one function each, an MCP tool and
`POST /api/v1/tools/<name>`. Operations beyond the six core tools live here (pause, fork, checkpoints), so the MCP surface
(server.py) stays a thin table of those."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

from .checkpoints import NAME
from .inputs import Seq, WaitS
from .manager import SessionManager
from .models import Checkpoint, Session
from .tools import ToolPlugin

SessionIdParam = Annotated[str, Field(max_length=100, description="The session id (ses_...).")]


async def pause_session(sessions: SessionManager, owner: str | None, session_id: SessionIdParam) -> Session:
    """Pause a ready session: its sandbox stops, workspace and shell state stay. Its next message, file read or
    fork resumes it."""
    return await sessions.pause(session_id, owner=owner)


async def fork_session(
    sessions: SessionManager,
    owner: str | None,
    session_id: SessionIdParam,
    title: Annotated[str | None, Field(max_length=200, description="The fork's title.")] = None,
    at_turn: Annotated[Seq | None, Field(description="Fork from its checkpoint of this turn.")] = None,
    wait_s: Annotated[WaitS, Field(description="Wait up to this long for it to be ready.")] = 30,
) -> Session:
    """Fork a session to try alternatives: a new child session with a copy of its workspace, shell state and
    conversation. The source goes on untouched."""
    return await sessions.fork(session_id, title=title, at_turn=at_turn, owner=owner, wait_s=wait_s)


CheckpointName = Annotated[str, Field(pattern=NAME.pattern, description="Checkpoint name.")]


async def checkpoint_session(
    sessions: SessionManager, owner: str | None, session_id: SessionIdParam, name: CheckpointName
) -> Checkpoint:
    """Save a ready session's workspace and shell state as a named checkpoint, to restore (or fork) later."""
    return await sessions.checkpoint(session_id, name, owner=owner)


async def restore_session(
    sessions: SessionManager, owner: str | None, session_id: SessionIdParam, name: CheckpointName
) -> Session:
    """Restore a checkpoint: workspace, shell and conversation go back; later turns stay in the transcript, undone."""
    return await sessions.restore(session_id, name, owner=owner)


pause = ToolPlugin(name="pause_session", run=pause_session, title="Pause session", idempotent=True)
fork = ToolPlugin(name="fork_session", run=fork_session, title="Fork session")
checkpoint = ToolPlugin(name="checkpoint_session", run=checkpoint_session, title="Checkpoint session")
restore = ToolPlugin(name="restore_session", run=restore_session, title="Restore checkpoint", destructive=True)
