"""Task status notifications through the real SDK client: `notifications/tasks/status` to the connection
that started a task (2025-11-25), and `notifications/tasks` on a `subscriptions/listen` stream that named
the task (2026-07-28 tasks extension): in memory, over HTTP with owners, and for a turn that asks the
client's model (input_required)."""
# ruff: noqa: F811  (the `llm` fixture imported from test_llm_agent is used by name)

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import Client
from mcp.client.extension import NotificationBinding
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError
from mcp.types import SubscriptionsAcknowledgedNotification
from pydantic import BaseModel, ConfigDict

from mcp_sessions.http import build_app
from mcp_sessions.server import create_server
from mcp_sessions.settings import Settings

from .asgi import serve
from .conftest import new_session, stdio_params
from .fake_llm import FakeLLM
from .test_llm_agent import llm  # noqa: F401
from .test_llm_providers import sampling_in_tasks
from .test_tasks import ALICE, BOB, TasksAware, rpc, settle, start

pytestmark = pytest.mark.anyio

SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"


class Wire(BaseModel):
    model_config = ConfigDict(extra="allow")


class Heard:
    """The task notifications a client received, in order, with a way to wait for the next one."""

    def __init__(self) -> None:
        self.notes: list[dict[str, Any]] = []
        self.acks: list[dict[str, Any]] = []
        self._arrived = anyio.Event()

    async def got(self, params: Wire) -> None:
        self.notes.append(params.model_dump(by_alias=True))
        self._arrived.set()

    async def message(self, message: Any) -> None:
        """The client's message handler: keeps the acknowledgements of listen streams."""
        if isinstance(message, SubscriptionsAcknowledgedNotification):
            self.acks.append(message.params.notifications.model_dump(by_alias=True, exclude_none=True))
            self._arrived.set()

    async def until(self, task_id: str, status: str, nth: int = 1) -> dict[str, Any]:
        """The `nth` notification of `task_id` in `status`, waiting for it."""
        with anyio.fail_after(30):
            while True:
                found = [n for n in self.notes if n["taskId"] == task_id and n["status"] == status]
                if len(found) >= nth:
                    return found[nth - 1]
                self._arrived = anyio.Event()
                await self._arrived.wait()

    async def ack(self) -> dict[str, Any]:
        with anyio.fail_after(30):
            while not self.acks:
                self._arrived = anyio.Event()
                await self._arrived.wait()
        return self.acks[-1]

    def of(self, task_id: str) -> list[str]:
        return [n["status"] for n in self.notes if n["taskId"] == task_id]


class Listening(TasksAware):
    """The tasks extension, with the task notifications of both eras observed into `heard`."""

    def __init__(self, heard: Heard) -> None:
        self.heard = heard

    def notifications(self) -> list[NotificationBinding[Any]]:
        return [
            NotificationBinding(method="notifications/tasks/status", params_type=Wire, handler=self.heard.got),
            NotificationBinding(method="notifications/tasks", params_type=Wire, handler=self.heard.got),
        ]


@asynccontextmanager
async def listening(client: Client, *task_ids: Any) -> AsyncIterator[None]:
    """A `subscriptions/listen` stream naming `task_ids`, open for the block (2026-07-28)."""
    async with anyio.create_task_group() as tg:
        tg.start_soon(lambda: rpc(client, "subscriptions/listen", notifications={"taskIds": list(task_ids)}))
        try:
            yield
        finally:
            tg.cancel_scope.cancel()


def gated(gate: Path, text: str) -> str:
    """A command that says it started, waits for the test to make `gate`, then prints `text`."""
    return f"echo started; until [ -e {gate} ]; do sleep 0.05; done; echo {text}"


async def test_a_handshake_client_hears_when_its_task_ends(settings: Settings, tmp_path: Path) -> None:
    heard = Heard()
    async with Client(create_server(settings), mode="legacy", extensions=[Listening(heard)]) as client:
        sid = await new_session(client)
        task = await start(client, "send_message", session_id=sid, text=gated(tmp_path / "go", "finished"))
        assert task["status"] == "working"
        (tmp_path / "go").touch()
        note = await heard.until(task["taskId"], "completed")
        assert note["createdAt"] == task["createdAt"] and note["ttl"] is None and note["pollInterval"] == task["pollInterval"]
        assert note["lastUpdatedAt"] >= task["lastUpdatedAt"] and "ended: completed" in note["statusMessage"]
        assert heard.of(task["taskId"]) == ["completed"]  # "working" was the call's answer, not repeated
        assert (await rpc(client, "tasks/get", taskId=task["taskId"]))["status"] == "completed"


async def test_a_handshake_client_hears_its_task_cancelled_and_its_creation_done(settings: Settings) -> None:
    heard = Heard()
    async with Client(create_server(settings), mode="legacy", extensions=[Listening(heard)]) as client:
        made = await start(client, "create_session", title="made as a task")
        sid = made["taskId"].removesuffix(".new")
        if made["status"] == "working":  # a local sandbox may be ready before the call answers
            assert (await heard.until(made["taskId"], "completed"))["taskId"] == f"{sid}.new"
        await settle(client, made["taskId"])
        task = await start(client, "send_message", session_id=sid, text="sleep 60")
        await rpc(client, "tasks/cancel", taskId=task["taskId"])
        assert (await heard.until(task["taskId"], "cancelled"))["statusMessage"].endswith("the task was cancelled.")
        assert heard.of(task["taskId"]) == ["cancelled"]


async def test_a_listen_stream_follows_the_tasks_it_names(settings: Settings, tmp_path: Path) -> None:
    heard = Heard()
    async with Client(
        create_server(settings), mode="auto", extensions=[Listening(heard)], message_handler=heard.message
    ) as client:
        sid = await new_session(client)
        task = await start(client, "send_message", session_id=sid, text=gated(tmp_path / "go", "finished"))
        stranger = "ses_" + "0" * 32 + ".1"
        async with listening(client, task["taskId"], stranger, "not-a-task", task["taskId"]):
            assert (await heard.ack())["taskIds"] == [task["taskId"]]  # the caller's own tasks, once each
            working = await heard.until(task["taskId"], "working")  # how it stands, at once
            assert working["_meta"][SUBSCRIPTION_ID] is not None and working["ttlMs"] is None
            (tmp_path / "go").touch()
            done = await heard.until(task["taskId"], "completed")
        assert done["result"]["structuredContent"]["output"] == "started\nfinished\n"  # inlined, as tasks/get has it
        assert heard.of(task["taskId"]) == ["working", "completed"]


async def test_a_listen_stream_tells_at_once_of_a_task_that_has_ended(settings: Settings) -> None:
    heard = Heard()
    async with Client(
        create_server(settings), mode="auto", extensions=[Listening(heard)], message_handler=heard.message
    ) as client:
        sid = await new_session(client)
        task = await start(client, "send_message", session_id=sid, text="sleep 0.3; echo over")
        await settle(client, task["taskId"])
        async with listening(client, task["taskId"]):
            done = await heard.until(task["taskId"], "completed")
    assert done["result"]["structuredContent"]["output"] == "over\n"


async def test_task_notifications_need_the_extension_declared(settings: Settings) -> None:
    async with Client(create_server(settings), mode="auto") as plain:
        with pytest.raises(MCPError) as raised:
            await rpc(plain, "subscriptions/listen", notifications={"taskIds": ["ses_" + "0" * 32 + ".1"]})
    assert raised.value.error.code == -32021


async def test_a_listen_stream_shows_a_turn_asking_the_clients_model(home: Path, llm: FakeLLM, tmp_path: Path) -> None:
    """Each question to the client's model shows as input_required with the question, each answer as
    working again, then the result: the model first runs a command that waits for the test, then answers."""
    heard = Heard()
    gate = tmp_path / "go"
    async with sampling_in_tasks(home, llm, extensions=[Listening(heard)]) as client:
        sid = await new_session(client)
        task = await start(client, "send_message", session_id=sid, text="run it")
        async with listening(client, task["taskId"]):
            asked = await heard.until(task["taskId"], "input_required")
            [(key, request)] = asked["inputRequests"].items()
            assert request["method"] == "sampling/createMessage"
            command = {"type": "tool_use", "id": "t1", "name": "bash", "input": {"command": gated(gate, "ran")}}
            await rpc(client, "tasks/update", taskId=task["taskId"], inputResponses={key: reply(command, stop="toolUse")})
            await heard.until(task["taskId"], "working")  # answered: the command runs
            gate.touch()
            second = await heard.until(task["taskId"], "input_required", nth=2)
            [(key2, _)] = second["inputRequests"].items()
            assert key2 != key
            await rpc(
                client, "tasks/update", taskId=task["taskId"], inputResponses={key2: reply({"type": "text", "text": "done"})}
            )
            done = await heard.until(task["taskId"], "completed")
    assert done["result"]["structuredContent"]["output"] == "done"
    # The last answer ends the turn at once: whether the watch reads the moment it was `working` between
    # the answer and the end is timing, so that one `working` may or may not be heard.
    assert heard.of(task["taskId"]) in (
        ["input_required", "working", "input_required", "completed"],
        ["input_required", "working", "input_required", "working", "completed"],
    )


def reply(*content: dict[str, Any], stop: str = "endTurn") -> dict[str, Any]:
    return {"role": "assistant", "content": list(content), "model": "client-model", "stopReason": stop}


async def test_over_http_a_listen_stream_follows_only_the_callers_tasks(settings: Settings, tmp_path: Path) -> None:
    app = build_app(settings, {ALICE: "alice", BOB: "bob"})
    heard_a, heard_b = Heard(), Heard()
    async with serve(app, lifespan="on", grace_s=5) as base:
        async with (
            over_http(base, ALICE, heard_a) as alice,
            over_http(base, BOB, heard_b) as bob,
        ):
            sid = await new_session(alice)
            task = await start(alice, "send_message", session_id=sid, text=gated(tmp_path / "go", "alice"))
            async with listening(bob, task["taskId"]), listening(alice, task["taskId"]):
                assert (await heard_b.ack())["taskIds"] == []
                assert (await heard_a.ack())["taskIds"] == [task["taskId"]]
                (tmp_path / "go").touch()
                await heard_a.until(task["taskId"], "completed")
            assert heard_b.notes == []


@asynccontextmanager
async def over_http(base: str, token: str, heard: Heard) -> AsyncIterator[Client]:
    async with httpx2.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60) as hc:
        async with Client(
            streamable_http_client(f"{base}/mcp", http_client=hc),
            mode="auto",
            extensions=[Listening(heard)],
            message_handler=heard.message,
        ) as c:
            yield c


async def test_a_stdio_server_tells_its_client_when_a_task_ends(home: Path, tmp_path: Path) -> None:
    heard = Heard()
    async with Client(stdio_params(home), mode="legacy", extensions=[Listening(heard)]) as client:
        sid = await new_session(client)
        task = await start(client, "send_message", session_id=sid, text=gated(tmp_path / "go", "finished"))
        (tmp_path / "go").touch()
        assert (await heard.until(task["taskId"], "completed"))["statusMessage"] == "Turn 1 ended: completed."
