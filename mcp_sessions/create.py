"""What a caller may ask for when creating a session, declared once for every surface, and how a request
becomes a new session's record.

`SessionFields` holds the options every session takes; the drivers' and agents' own options come from
their plugins (`plugins.Catalog.option_fields`). `create_parameters` turns both into the parameters of
the `create_session` tool, `create_body` into the REST API's create body: the two surfaces cannot drift.
`new_record` checks a request against the settings and the plugins, before anything is made.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Annotated, Any

from pydantic import BaseModel, ConfigDict, Field, create_model

from .agents.base import Agent, ConfiguresSessions, NeedsHostFiles
from .egress import Network, check_network, proxy_env
from .errors import InvalidInput, PayloadTooLarge
from .inputs import IN_RANGE, MetadataValue
from .models import Budget, IdleAction, LimitsModel, Session, SessionRecord, new_session_id
from .plugins import Catalog, annotated
from .settings import Settings


class SessionFields(BaseModel):
    """Options of every session, whatever its driver and agent."""

    title: str | None = Field(None, max_length=200, description="A short human title.")
    driver: str | None = Field(None, max_length=100, description="Sandbox driver.")
    agent: str | None = Field(None, max_length=100, description="Agent that answers messages.")
    image: str | None = Field(None, max_length=300, description="Container image (default: the server's).")
    tags: list[Annotated[str, Field(min_length=1, max_length=100)]] = Field(
        [], max_length=20, description="Labels for filtering in list_sessions."
    )
    metadata: dict[str, MetadataValue] = Field({}, max_length=50, description="Free-form key/values kept with the session.")
    files: dict[str, str] = Field(
        {}, max_length=1000, description="Files to write into the workspace first: relative path -> UTF-8 text."
    )
    env: dict[str, str] = Field({}, max_length=200, description="Environment variables for commands in the session.")
    limits: LimitsModel | None = Field(None, description="Sandbox resource limits.")
    command_timeout_s: Annotated[float, Field(gt=0, le=10**7, allow_inf_nan=False), IN_RANGE] | None = Field(
        None, description="Stop a single command after this many seconds (default: the server's, 600)."
    )
    idle_timeout_s: Annotated[float, Field(ge=0, le=10**9, allow_inf_nan=False), IN_RANGE] | None = Field(
        None, description="Close the session after this many idle seconds; 0 = never (default: the server's, 900)."
    )
    idle_action: IdleAction | None = Field(None, description="On idle timeout: pause (next use resumes) or close.")
    paused_timeout_s: Annotated[float, Field(ge=0, le=10**9, allow_inf_nan=False), IN_RANGE] | None = Field(
        None, description="Close it after this many paused seconds; 0 = never."
    )
    model: str | None = Field(
        None,
        max_length=200,
        description="The model, for agents that call one, e.g. 'gpt-4o' or 'claude-sonnet-4-5' (default: the server's).",
    )
    parent_session_id: str | None = Field(None, max_length=100, description="Parent: closed with it, under its budget.")
    network: Network | None = Field(None, description="Egress via HTTP_PROXY: allow host:port pairs the server allows.")


def _described(catalog: Catalog) -> dict[str, Any]:
    """SessionFields' annotations, with the driver and agent descriptions listing what is installed."""
    fields = {
        name: (annotated(info.annotation, *info.metadata, Field(description=info.description)), info.default)
        for model in (SessionFields, Budget)
        for name, info in model.model_fields.items()
    }
    fields["driver"] = (
        Annotated[
            str | None,
            Field(max_length=100, description=f"Sandbox driver (default: the server's). {catalog.describe_drivers()}."),
        ],
        None,
    )
    fields["agent"] = (
        Annotated[
            str | None,
            Field(
                max_length=100, description=f"Agent that answers messages (default: the server's). {catalog.describe_agents()}."
            ),
        ],
        None,
    )
    for name, option in catalog.option_fields().items():
        fields[name] = (option.annotation, None)
    return fields


def create_parameters(catalog: Catalog) -> list[inspect.Parameter]:
    """The `create_session` tool's parameters (keyword-only), built from the session's and the plugins' options."""
    return [
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=annotation, default=default)
        for name, (annotation, default) in _described(catalog).items()
    ]


def create_body(catalog: Catalog) -> type[BaseModel]:
    """The REST API's create body: the same fields as the tool, unknown ones refused."""
    return create_model(
        "CreateBody",
        __config__=ConfigDict(extra="forbid"),
        __doc__="A new session; every field is optional. The same fields as the create_session tool.",
        **_described(catalog),
    )


@dataclass
class CreateRequest:
    """A create call as the manager takes it: the session's fields, and the plugins' options still unsorted."""

    driver: str | None = None
    agent: str | None = None
    image: str | None = None
    title: str | None = None
    tags: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)
    limits: LimitsModel | None = None
    idle_timeout_s: float | None = None
    idle_action: IdleAction | None = None
    paused_timeout_s: float | None = None
    command_timeout_s: float | None = None
    owner: str | None = None
    model: str | None = None
    parent_session_id: str | None = None
    network: Network | None = None
    budget: Budget | None = None
    options: dict[str, Any] = field(default_factory=dict)
    """Driver and agent options by name (None = not given); the manager sorts and validates them."""

    @classmethod
    def of(cls, owner: str | None, **given: Any) -> CreateRequest:
        """From `create_session`'s arguments or the REST body: what is not a session field or a budget is a
        plugin's option."""
        own = {k: v for k, v in given.items() if k in SessionFields.model_fields}
        limits = {k: v for k, v in given.items() if k in Budget.model_fields and v is not None}
        budget = Budget(**limits) if limits else None
        options = {k: v for k, v in given.items() if k not in own and k not in Budget.model_fields}
        return cls(**own, owner=owner, budget=budget, options=options)


def new_record(
    request: CreateRequest, settings: Settings, catalog: Catalog, agents: dict[str, Agent], lease: str
) -> SessionRecord:
    """The record of a new session, every part of the request checked (`lease`: the creating process's).
    Raises InvalidInput (or PayloadTooLarge) with what to change."""
    driver = request.driver or settings.driver
    if driver not in catalog.drivers:
        raise InvalidInput(f"Unknown driver '{driver}'. Use one of: {', '.join(catalog.drivers)}.")
    own_agent = catalog.own_agent(driver)
    agent = request.agent or own_agent or settings.agent
    if agent not in agents:
        raise InvalidInput(f"Unknown agent '{agent}'. Use one of: {', '.join(agents)}.")
    if own_agent is not None and agent != own_agent:
        raise InvalidInput(
            f"A '{driver}' session runs its platform's own agent: use agent='{own_agent}' (the default there) or leave agent out."
        )
    if own_agent is None and (homes := catalog.drivers_of(agent)):
        raise InvalidInput(
            f"Agent '{agent}' is the own agent of driver {' or '.join(repr(h) for h in homes)} and runs only there: "
            f"use driver='{homes[0]}'."
        )
    driver_options, agent_options = catalog.split_options(driver, agent, request.options)
    command_timeout = request.command_timeout_s or settings.command_timeout_s
    if command_timeout > settings.max_command_timeout_s:
        raise InvalidInput(
            f"command_timeout_s {command_timeout:g} is over this server's maximum of "
            f"{settings.max_command_timeout_s:g} s. Ask for less."
        )
    for path, content in request.files.items():
        if not path or "\0" in path or path.startswith("/") or ".." in path.split("/"):
            raise InvalidInput(f"File path {path!r} must be relative to the workspace, without '..'.")
        if len(content.encode()) > settings.max_file_bytes:
            raise PayloadTooLarge(f"File {path!r} is over the {settings.max_file_bytes}-byte limit.")
    for key, value in request.env.items():
        if not key or "=" in key or "\0" in key or "\0" in value:
            raise InvalidInput(f"Environment variable name {key!r} is invalid: use a name without '=' or NUL bytes.")
    try:
        egress = check_network(request.network, settings.egress_allow or "")
    except ValueError as e:  # the server's own list is malformed
        raise InvalidInput(str(e)) from None
    model = request.model
    configures = agents[agent]
    mounts: dict[str, str] = {}
    try:
        if isinstance(configures, ConfiguresSessions):  # the agent checks its options and fills in defaults
            model, agent_options = configures.configure(model, agent_options)
        if isinstance(configures, NeedsHostFiles):
            mounts = configures.host_files(agent_options)
    except ValueError as e:
        raise InvalidInput(str(e)) from None
    session = Session(
        id=new_session_id(),
        title=request.title,
        tags=request.tags,
        metadata=request.metadata,
        driver=driver,
        agent=agent,
        image=request.image,
        idle_timeout_s=settings.idle_timeout_s if request.idle_timeout_s is None else request.idle_timeout_s,
        idle_action=request.idle_action or settings.idle_action,
        paused_timeout_s=settings.paused_timeout_s if request.paused_timeout_s is None else request.paused_timeout_s,
        command_timeout_s=command_timeout,
        owner=request.owner,
        model=model,
        parent_session_id=request.parent_session_id,
        budget=request.budget,
    )
    return SessionRecord(
        session=session,
        env={**request.env, **proxy_env(session.id)} if egress else request.env,
        egress=egress,
        limits=(request.limits or LimitsModel()).model_dump(exclude_none=True),
        lease=lease,
        agent_options=agent_options,
        driver_options=driver_options,
        mounts=mounts,
    )
