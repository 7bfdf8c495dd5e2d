"""The tools the official MCP conformance suite calls in its tasks scenarios (greet, slow_compute,
failing_job, protocol_error_job, confirm_delete, multi_input, test_tool_with_task), as tool plugins that
run as tasks the way send_message does: each call starts a turn of the `scripted` agent in a `memory`
session, and the task follows that turn. Installed only in the tests; the server does not ship them.

The `scripted` agent reads its message as a JSON script: wait `sleep` seconds, ask the client each of
`ask` (elicitations, all at once, through the turn's task), then answer `say` and the answers, or raise
`crash`.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import anyio
from mcp.server.mcpserver.exceptions import ToolError
from mcp.server.mcpserver.resolve import Elicit, Resolve
from mcp.shared.exceptions import MCPError
from mcp_types import INTERNAL_ERROR
from pydantic import BaseModel, Field

from mcp_sessions.agents.base import AgentContext, AgentPlugin, TurnContext, TurnOutcome
from mcp_sessions.create import CreateRequest
from mcp_sessions.inputs import IN_RANGE
from mcp_sessions.manager import SessionManager
from mcp_sessions.models import TextBlock, TurnReply
from mcp_sessions.tasks import TaskSupport, as_task_wait, task_client
from mcp_sessions.tools import ToolPlugin

WAIT_S = 0.5
"""How long a call waits for its turn: a turn that outlasts it becomes a task for a client that takes one."""


class ScriptedAgent:
    name = "scripted"

    async def run_turn(self, ctx: TurnContext, text: str) -> TurnOutcome:
        script = json.loads(text)
        await anyio.sleep(script.get("sleep", 0))
        answers: list[Any] = [None] * len(script.get("ask", []))
        if answers:
            ask = getattr(ctx.sampler, "ask", None)
            if ask is None:
                answer = "this turn asks the client, which it can only do as a task"
                return TurnOutcome(status="failed", content=[TextBlock(text=answer)], output=answer, reason=answer)

            async def one(i: int, question: dict[str, Any]) -> None:
                answers[i] = await ask("elicitation/create", {"mode": "form", **question})

            async with anyio.create_task_group() as tg:
                for i, question in enumerate(script["ask"]):
                    tg.start_soon(one, i, question)
        if script.get("crash"):
            raise RuntimeError(script["crash"])
        answer = script.get("say", "done") + (f" {json.dumps(answers)}" if answers else "")
        return TurnOutcome(status="completed", content=[TextBlock(text=answer)], output=answer, output_bytes=len(answer))


def make(settings: Any, context: AgentContext) -> ScriptedAgent:
    return ScriptedAgent()


scripted = AgentPlugin(name="scripted", make=make, summary="runs a JSON script of waits and questions (a test plugin)")


async def run_script(sessions: SessionManager, owner: str | None, **script: Any) -> TurnReply:
    """One turn of the script in a new memory session, followed by the caller's task if it takes one."""
    session = await sessions.create(CreateRequest.of(owner, driver="memory", agent="scripted"), wait_s=30)
    text = json.dumps(script)
    return await sessions.send(session.id, text, wait_s=as_task_wait(WAIT_S), owner=owner, sampler=task_client())


class Greeting(BaseModel):
    greeting: str


async def greet_run(sessions: SessionManager, owner: str | None, name: Annotated[str, Field(max_length=100)]) -> Greeting:
    """Greet someone."""
    return Greeting(greeting=f"Hello, {name}!")


greet = ToolPlugin(name="greet", run=greet_run, title="Greet", read_only=True, text=lambda answer: answer["greeting"])


async def slow_compute_run(
    sessions: SessionManager,
    owner: str | None,
    seconds: Annotated[float, Field(ge=0, le=600, allow_inf_nan=False), IN_RANGE] = 1,
    label: Annotated[str, Field(max_length=100)] = "",
) -> TurnReply:
    """Wait `seconds`, then answer with the label."""
    return await run_script(sessions, owner, sleep=seconds, say=f"computed {label}")


slow_compute = ToolPlugin(name="slow_compute", run=slow_compute_run, title="Slow compute", task=TaskSupport("turn"))


async def failed_job(reply: TurnReply) -> TurnReply:
    raise ToolError("The job failed, as failing_job always does.")


async def failing_job_run(sessions: SessionManager, owner: str | None) -> TurnReply:
    """A job that fails as a tool error after a second."""
    return await run_script(sessions, owner, sleep=1)


failing_job = ToolPlugin(
    name="failing_job", run=failing_job_run, title="Failing job", task=TaskSupport("turn", required=True, finish=failed_job)
)


async def protocol_error(reply: TurnReply) -> TurnReply:
    if reply.turn_status == "failed":
        raise MCPError(INTERNAL_ERROR, f"The job crashed: {reply.reason}")
    return reply


async def protocol_error_job_run(sessions: SessionManager, owner: str | None) -> TurnReply:
    """A job whose turn crashes: its task fails with a protocol error."""
    return await run_script(sessions, owner, sleep=1, crash="protocol_error_job crashes on purpose")


protocol_error_job = ToolPlugin(
    name="protocol_error_job",
    run=protocol_error_job_run,
    title="Protocol error job",
    task=TaskSupport("turn", finish=protocol_error),
)

CONFIRM = {"type": "object", "properties": {"confirm": {"type": "boolean"}}, "required": ["confirm"]}


async def confirm_delete_run(
    sessions: SessionManager, owner: str | None, filename: Annotated[str, Field(max_length=200)]
) -> TurnReply:
    """Ask the client to confirm deleting a file, then say so."""
    question = {"message": f"Delete {filename}?", "requestedSchema": CONFIRM}
    return await run_script(sessions, owner, ask=[question], say=f"asked about {filename}")


confirm_delete = ToolPlugin(name="confirm_delete", run=confirm_delete_run, title="Confirm delete", task=TaskSupport("turn"))


async def multi_input_run(sessions: SessionManager, owner: str | None) -> TurnReply:
    """Ask the client two questions at once."""
    questions = [{"message": f"Question {i}?", "requestedSchema": CONFIRM} for i in (1, 2)]
    return await run_script(sessions, owner, ask=questions, say="answered")


multi_input = ToolPlugin(name="multi_input", run=multi_input_run, title="Multi input", task=TaskSupport("turn"))


class UserName(BaseModel):
    name: str = Field(max_length=100)


async def ask_user_name() -> Elicit[UserName]:
    return Elicit("What is your name?", UserName)


async def with_task_run(
    sessions: SessionManager, owner: str | None, user_name: Annotated[UserName, Resolve(ask_user_name)]
) -> TurnReply:
    """Ask the client for a name, then greet it in a task."""
    return await run_script(sessions, owner, sleep=1, say=f"Hello, {user_name.name}!")


test_tool_with_task = ToolPlugin(
    name="test_tool_with_task", run=with_task_run, title="Tool with task", task=TaskSupport("turn", required=True)
)
