"""A tool as a third-party package would add one: one function, one entry point (`mcp_sessions.tools`).
Served as an MCP tool and as `POST /api/v1/tools/word_count`."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field

from mcp_sessions.manager import SessionManager
from mcp_sessions.tools import ToolPlugin


class WordCount(BaseModel):
    session_id: str
    messages: int = Field(description="Messages counted.")
    words: int = Field(description="Words in them.")


async def count_words(
    sessions: SessionManager,
    owner: str | None,
    session_id: Annotated[str, Field(max_length=100, description="The session id (ses_...).")],
    role: Annotated[Literal["user", "assistant", "any"], Field(description="Whose messages to count.")] = "any",
) -> WordCount:
    """Count the words of a session's messages."""
    messages = [m for m in await sessions.messages(session_id, owner=owner) if role in ("any", m.role)]
    return WordCount(session_id=session_id, messages=len(messages), words=sum(len(m.text().split()) for m in messages))


word_count = ToolPlugin(name="word_count", run=count_words, title="Word count", read_only=True, idempotent=True)
