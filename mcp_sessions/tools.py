"""Tools added by plugins: one async function over the session manager, served as an MCP tool and as a
REST route (`POST /api/v1/tools/<name>`), so a new operation is written once for both surfaces.

A package adds one through the entry-point group `mcp_sessions.tools`, naming a `ToolPlugin`:

    [project.entry-points."mcp_sessions.tools"]
    word_count = "my_package.tools:word_count"

The function's parameters after the first two (the manager, and the caller's owner: None on stdio, the
token's owner over HTTP, to pass on to every manager call) are the tool's, annotated like any MCP tool's
(`Annotated[int, Field(ge=1, description=...)]`); its docstring is the tool's description, so keep it
short: every word of it is paid for in every model call that sees the tool; its return annotation, a
pydantic model, is the tool's output schema. Errors of the session layer (`SessionError`,
`SandboxError`) become tool errors and REST error bodies, as for the built-in tools.

A tool whose work is a turn can run as an MCP task, as `send_message` does (`task=TaskSupport("turn")`):
its function starts the turn with `sessions.send(..., wait_s=as_task_wait(w), sampler=task_client())`
and returns the TurnReply; a client that takes tasks then follows the turn as a task (its questions to
the client go on the task), and `TaskSupport.finish` makes the task's result from the turn's reply. A
parameter annotated `Annotated[T, Resolve(fn)]` (the SDK's resolvers) is asked of the client before the
function runs instead of being an argument.
"""

from __future__ import annotations

import inspect
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, create_model

from sandbox_backends.registry import discover

from .models import TurnReply

if TYPE_CHECKING:
    from .tasks.core import TaskSupport

ENTRY_POINT_GROUP = "mcp_sessions.tools"
BUILTIN: dict[str, str] = {
    "expose_port": "mcp_sessions.previews:plugin",
    "answer_approval": "mcp_sessions.agents.cli.approval_tool:plugin",
    "pause_session": "mcp_sessions.builtin_tools:pause",
    "fork_session": "mcp_sessions.builtin_tools:fork",
    "checkpoint_session": "mcp_sessions.builtin_tools:checkpoint",
    "restore_session": "mcp_sessions.builtin_tools:restore",
}
"""Tools of this package served this way (previews.py, builtin_tools.py); a plugin cannot replace them."""


@dataclass(frozen=True)
class ToolPlugin:
    """One operation offered to callers."""

    name: str
    run: Callable[..., Awaitable[BaseModel]]
    """`async def run(sessions, owner, **params) -> Model`; see the module docstring."""
    title: str
    read_only: bool = False
    destructive: bool = False
    idempotent: bool = False
    task: TaskSupport | None = None
    """How the tool runs as an MCP task (see the module docstring); None: it does not."""
    text: Callable[[dict[str, Any]], str] | None = None
    """What the result's MCP text block says, made from its structured content; None: its compact JSON."""

    def parameters(self) -> list[inspect.Parameter]:
        """The tool's own parameters (the function's, after the manager and the owner)."""
        return list(inspect.signature(self.run, eval_str=True).parameters.values())[2:]

    def output(self) -> type[BaseModel]:
        returned = inspect.signature(self.run, eval_str=True).return_annotation
        if not (isinstance(returned, type) and issubclass(returned, BaseModel)):
            raise TypeError(f"The tool '{self.name}' must be annotated to return a pydantic model.")
        if self.task is not None and returned is not TurnReply:
            raise TypeError(f"The tool '{self.name}' runs as a task, so it must return the TurnReply of the turn it starts.")
        return returned

    def body(self) -> type[BaseModel]:
        """The REST body: the tool's parameters as one model, unknown fields refused."""
        fields: dict[str, Any] = {
            p.name: (p.annotation, ... if p.default is inspect.Parameter.empty else p.default) for p in self.parameters()
        }
        title = "".join(part.title() for part in self.name.split("_")) + "Body"
        return create_model(title, __config__=ConfigDict(extra="forbid"), **fields)

    @property
    def description(self) -> str:
        return inspect.cleandoc(self.run.__doc__ or self.title)


def tools() -> dict[str, ToolPlugin]:
    """Every tool plugin by name."""
    return discover(ENTRY_POINT_GROUP, BUILTIN, ToolPlugin)
