"""Session trees and their budgets.

A session created with `parent_session_id` is its parent's child; a tree is a session and all its
descendants. Closing or deleting a session closes or deletes its tree too, unless the caller keeps the
children (the manager does that walk). An idle timeout or a failure ends only the session it hits: an
orchestrator waiting on its children is idle, and must not take them down with it.

A budget (`Budget`: max_cost_usd, max_tokens, max_turns, max_duration_s) is set at create and covers the
session and every descendant together. Every budget over a session binds its turns: its own and each
ancestor's (`SessionRecord.budget_from`, fixed at create since neither parents nor budgets change later).
A child may be given a larger budget than its ancestors have left: it is allowed, and changes nothing,
since theirs still binds; it lets a caller cap one branch tighter without knowing the whole tree.

What each budget counts, over the tree: tokens and cost as `Usage` adds them up; turns started (a turn
refused by a budget is a turn in the transcript, so it counts too); and `max_duration_s` the seconds turns
ran, added up. Turn time rather than time since create: a tree that waits for its caller spends nothing,
an idle session is what `idle_timeout_s` is for, and turns running side by side in several children each
spend their own time, as they each spend tokens.

When it is checked: at a turn's start (a budget already reached fails the turn before its agent runs); by
agents that call a model, after each model step that would go on (`TurnContext.over_budget`); and for
`max_duration_s`, by a timer that stops the turn when the time left at its start has run out. Usage is
recorded when a turn ends, so turns running at once in one tree see each other's spending only then:
together they may pass a budget by what they spend meanwhile, and each stops at its next check.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import anyio

from sandbox_backends.base import SandboxError

from .errors import InvalidInput, SessionError, SessionNotFound
from .models import Budget, Session, SessionRecord, TreeUsage, Usage
from .store import Store

log = logging.getLogger(__name__)

BUDGET_SPENT = "budget "
"""How the reason of a turn stopped by a budget begins (replies.py tells the caller's next step by it)."""

ENDED = ("dead", "failed")


async def link_to_parent(store: Store, record: SessionRecord, owner: str | None) -> None:
    """Check a new session's parent (it must be the caller's and live) and note whose budgets bind the
    session. Raises InvalidInput naming what to change."""
    s = record.session
    own = [s.id] if s.budget is not None else []
    if s.parent_session_id is None:
        record.budget_from = own
        return
    parent = await store.get(s.parent_session_id)
    if parent is None or (owner is not None and parent.session.owner != owner):
        raise InvalidInput(
            f"parent_session_id '{s.parent_session_id}' is not a session of yours. Pass an id from list_sessions, "
            "or leave parent_session_id out."
        )
    if parent.session.status in ENDED:
        raise InvalidInput(
            f"The parent session '{s.parent_session_id}' is {'closed' if parent.session.status == 'dead' else 'failed'}: "
            "a child needs a live parent. Create it under a live session, or without parent_session_id."
        )
    record.budget_from = own + parent.budget_from


async def tree_view(store: Store, s: Session) -> dict[str, Any]:
    """The tree fields of `SessionDetail`: how many children the session has, and the usage of its whole
    tree (one index lookup for a session without children)."""
    children = await store.children(s.id)
    if not children:
        usage = TreeUsage(**s.usage.model_dump(), turns=s.turns - s.forked_turns, turn_time_s=s.turn_time_s)
    else:
        usage = await store.tree_usage(s.id)
    return {"children": children, "usage_with_children": usage}


async def to_close(store: Store, session_id: str, delete: bool) -> list[str]:
    """The descendants that closing (or deleting) a session closes (or deletes) too: the closed ones only when
    deleting."""
    return [sid for sid, status in await store.descendants(session_id) if delete or status != "dead"]


async def close_all(
    store: Store, ids: list[str], close: Callable[[SessionRecord], Awaitable[object]], delete: bool, message: str
) -> tuple[int, str]:
    """Close (or delete) a closed session's descendants side by side, so busy ones stop together; how many
    were, and `message` (the session's own close message) with what happened to them."""
    failed: list[str] = []

    async def one(session_id: str) -> None:
        try:
            if (record := await store.get(session_id)) is not None:  # else deleted meanwhile: nothing to close
                await close(record)
        except SessionNotFound:  # deleted while it was being closed
            pass
        except (SessionError, SandboxError) as e:
            log.warning("closing %s with its tree failed: %s", session_id, e)
            failed.append(session_id)

    async with anyio.create_task_group() as tg:
        for session_id in ids:
            tg.start_soon(one, session_id)
    done = len(ids) - len(failed)
    message += f" Its {done} descendant session(s) are {'closed and deleted' if delete else 'closed'} too."
    if failed:
        message += f" These could not be, call close_session on them again: {', '.join(failed)}."
    return done, message


# -- budgets ----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Bound:
    """One budget binding a turn: which, its value, the session that set it."""

    name: str
    limit: float
    setter: str

    def used(self, usage: TreeUsage) -> float:
        return {
            "max_cost_usd": usage.cost_usd,
            "max_tokens": usage.total_tokens,
            "max_turns": usage.turns,
            "max_duration_s": usage.turn_time_s,
        }[self.name]

    def reason(self, used: float) -> str:
        amount = {
            "max_cost_usd": f"${used:.4f}",
            "max_tokens": f"{used:g} tokens",
            "max_turns": f"{used:g} turns",
            "max_duration_s": f"{used:.1f} s of turns",
        }[self.name]
        return (
            f"{BUDGET_SPENT}{self.name}={self.limit:g} of session {self.setter} reached: its tree has used {amount}. "
            "Budgets are set at create; go on in a session outside that tree."
        )


class Budgets:
    """The budgets binding one turn of a session, read afresh from the store at each check."""

    def __init__(self, store: Store, bounds: list[Bound]) -> None:
        self._store = store
        self._bounds = bounds
        self._clock: tuple[Bound, float] | None = None
        """After `at_start`: the `max_duration_s` nearest its end, and what its tree had used before the turn."""

    @classmethod
    async def of(cls, store: Store, record: SessionRecord) -> Budgets | None:
        """The budgets over the session's turns; None if none binds it (no store read then)."""
        bounds = []
        for setter in record.budget_from:
            found = record if setter == record.session.id else await store.get(setter)
            budget: Budget | None = found.session.budget if found is not None else None  # a deleted setter binds no more
            bounds += [Bound(name, limit, setter) for name, limit in (budget.set() if budget else {}).items()]
        return cls(store, bounds) if bounds else None

    async def _usage(self) -> dict[str, TreeUsage]:
        return {setter: await self._store.tree_usage(setter) for setter in {b.setter for b in self._bounds}}

    async def at_start(self) -> str | None:
        """Why the turn just started may not run (a budget over it is reached), or None."""
        usage = await self._usage()
        for bound in self._bounds:
            used = bound.used(usage[bound.setter])
            if bound.name == "max_turns":
                used -= 1  # the tree's count already holds this turn
            if used >= bound.limit:
                return bound.reason(used)
            if bound.name == "max_duration_s" and (self._clock is None or bound.limit - used < self.seconds_left()):
                self._clock = (bound, used)
        return None

    def seconds_left(self) -> float:
        """After `at_start`: how long the turn may run before a `max_duration_s` is reached (inf if none binds)."""
        return float("inf") if self._clock is None else self._clock[0].limit - self._clock[1]

    def out_of_time(self, elapsed: float) -> str:
        """The reason of a turn stopped by the `max_duration_s` timer after `elapsed` seconds."""
        assert self._clock is not None
        bound, before = self._clock
        return bound.reason(before + elapsed)

    async def over(self, turn: Usage) -> str | None:
        """Why the turn must stop now that it has used `turn` (not yet recorded), or None."""
        usage = await self._usage()
        for bound in self._bounds:
            if bound.name in ("max_tokens", "max_cost_usd"):
                so_far = TreeUsage()
                so_far.add(usage[bound.setter])
                so_far.add(turn)
                if (used := bound.used(so_far)) >= bound.limit:
                    return bound.reason(used)
        return None
