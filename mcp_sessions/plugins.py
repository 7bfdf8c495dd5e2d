"""Every plugin the server knows, and what is built from their declarations.

Drivers come from `sandbox_backends.registry`, agents from `agents.registry`, tools from `tools.py`. From
their declarations the catalog builds the settings sections (flags, variables), the create options
(`create_session`'s parameters, the REST create body) and the words that describe drivers and agents to
a caller, so that adding a plugin changes none of those by hand. It also checks the plugins agree with
each other (no two settings with one name, no option with two types) and says which plugin is at fault.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass
from typing import Annotated, Any

from pydantic import BaseModel, Field, ValidationError

from sandbox_backends.registry import DriverPlugin, PluginError, drivers

from .agents.base import AgentPlugin
from .agents.registry import agents
from .errors import InvalidInput
from .inputs import one_line
from .tools import ToolPlugin, tools


@dataclass(frozen=True)
class OptionField:
    """One create option as a caller sees it: which plugins take it, and its merged description."""

    name: str
    annotation: Any
    """`Annotated[type, constraints, Field(description=...)]`, from the first plugin that declares it; each
    plugin's own model validates the value again."""
    takers: tuple[str, ...]
    """Who takes it, e.g. ("llm agent", "remote driver")."""


def annotated(annotation: Any, *metadata: Any) -> Any:
    """`Annotated[annotation, *metadata]`, built at run time from declared fields (a type checker reads
    `Annotated[...]` as a type, not a value)."""
    return Annotated.__class_getitem__((annotation, *metadata))  # type: ignore[attr-defined]


def _who(kind: str, names: list[str]) -> str:
    return f"{', '.join(names)} {kind}{'s' if len(names) > 1 else ''}"


@dataclass(frozen=True)
class Catalog:
    drivers: dict[str, DriverPlugin]
    agents: dict[str, AgentPlugin]
    tools: dict[str, ToolPlugin]

    # -- settings ----------------------------------------------------------------------------------

    def settings_sections(self) -> list[tuple[str, type[BaseModel]]]:
        """(title, model) of every plugin with settings, e.g. ("docker driver", DockerSettings); a model that
        several plugins share is one section, e.g. ("claude-code, codex agent", CliSettings)."""
        titles: dict[type[BaseModel], list[str]] = {}
        kinds: dict[type[BaseModel], str] = {}
        for kind, plugins in (("driver", self.drivers), ("agent", self.agents)):
            for name, plugin in plugins.items():
                if plugin.settings is not None:
                    titles.setdefault(plugin.settings, []).append(name)
                    kinds.setdefault(plugin.settings, kind)
        return [(f"{', '.join(names)} {kinds[model]}", model) for model, names in titles.items()]

    # -- create options ----------------------------------------------------------------------------

    def _option_models(self) -> list[tuple[str, str, type[BaseModel]]]:
        """(kind, plugin name, options model) of every plugin that takes create options."""
        found: list[tuple[str, str, type[BaseModel]]] = []
        for name, a in self.agents.items():
            if a.options is not None:
                found.append(("agent", name, a.options))
        for name, d in self.drivers.items():
            if d.options is not None:
                found.append(("driver", name, d.options))
        return found

    def option_fields(self) -> dict[str, OptionField]:
        """Every create option, merged across the plugins that declare it, with a description naming them."""
        fields: dict[str, OptionField] = {}
        described: dict[str, dict[str, list[str]]] = {}
        for kind, name, model in self._option_models():
            for field, info in model.model_fields.items():
                description = info.description or ""
                known = fields.get(field)
                if known is None:
                    constrained = annotated(info.annotation, *info.metadata) if info.metadata else info.annotation
                    fields[field] = OptionField(field, constrained, ())
                described.setdefault(field, {}).setdefault(description, []).append(f"{name} {kind}")
        merged = {}
        for field, option in fields.items():
            parts, takers = [], []
            for description, who in described[field].items():
                agents_ = [w.removesuffix(" agent") for w in who if w.endswith(" agent")]
                drivers_ = [w.removesuffix(" driver") for w in who if w.endswith(" driver")]
                label = " and ".join(
                    x for x in (_who("agent", agents_) if agents_ else "", _who("driver", drivers_) if drivers_ else "") if x
                )
                parts.append(f"{label}: {description}" if description else label)
                takers += who
            annotation = annotated(option.annotation, Field(description="; ".join(parts) + "."))
            merged[field] = OptionField(field, annotation, tuple(takers))
        return merged

    def split_options(self, driver: str, agent: str, given: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The options a caller gave (None = not given), as (driver options, agent options), each validated by
        its plugin's model. An option the chosen driver and agent do not take is an error that names them."""
        given = {k: v for k, v in given.items() if v is not None}
        d_model, a_model = self.drivers[driver].options, self.agents[agent].options
        d_fields = set(d_model.model_fields) if d_model else set()
        a_fields = set(a_model.model_fields) if a_model else set()
        stray = sorted(set(given) - d_fields - a_fields)
        if stray:
            takers = self.option_fields()
            named = " and ".join(repr(k) for k in stray)
            theirs = "; ".join(f"'{k}' is for the {' and '.join(takers[k].takers)}" for k in stray if k in takers)
            raise InvalidInput(
                f"{named} {'is not an option' if len(stray) == 1 else 'are not options'} of agent '{agent}' "
                f"({self._listing(a_fields)}) or driver '{driver}' ({self._listing(d_fields)})"
                + (f"; {theirs}" if theirs else "")
                + ". Leave it out, or choose the agent or driver it is for."
            )
        return self._validate(d_model, {k: v for k, v in given.items() if k in d_fields}), self._validate(
            a_model, {k: v for k, v in given.items() if k in a_fields}
        )

    @staticmethod
    def _listing(fields: set[str]) -> str:
        return "it takes none" if not fields else "it takes " + ", ".join(sorted(fields))

    @staticmethod
    def _validate(model: type[BaseModel] | None, values: dict[str, Any]) -> dict[str, Any]:
        if model is None:
            return {}
        try:
            return model.model_validate(values).model_dump(exclude_none=True, mode="json")
        except ValidationError as e:
            raise InvalidInput(one_line(e)) from None

    # -- words for callers -------------------------------------------------------------------------

    def describe_drivers(self) -> str:
        return "; ".join(f"'{name}': {d.summary}" for name, d in self.drivers.items())

    def describe_agents(self) -> str:
        return "; ".join(f"'{name}': {a.summary}" for name, a in self.agents.items())

    def own_agent(self, driver: str) -> str | None:
        """The agent every session of `driver` runs, if its platform runs its own."""
        return self.drivers[driver].agent

    def drivers_of(self, agent: str) -> list[str]:
        """The drivers whose platform's own agent `agent` is (it works with those only); empty: any driver
        whose sandboxes run commands."""
        return [name for name, d in self.drivers.items() if d.agent == agent]

    # -- consistency -------------------------------------------------------------------------------

    def check(self) -> Catalog:
        """Raise `PluginError` if two plugins clash: a settings name used twice (or taken by the core
        settings), an option declared with two types or a default other than None."""
        from .settings import Settings

        owner: dict[str, str] = {name: "the core settings" for name in Settings.model_fields}
        for title, model in self.settings_sections():
            for name in model.model_fields:
                if name in owner:
                    raise PluginError(f"The setting '{name}' of the {title} is also a setting of {owner[name]}: rename one.")
                owner[name] = f"the {title}"
        declared: dict[str, tuple[Any, str]] = {}
        for kind, name, model in self._option_models():
            for field, info in model.model_fields.items():
                if info.default is not None or info.is_required():
                    raise PluginError(f"The option '{field}' of the {name} {kind} must default to None (= not given).")
                first = declared.setdefault(field, (info.annotation, f"{name} {kind}"))
                if first[0] != info.annotation:
                    raise PluginError(f"The option '{field}' has one type for the {first[1]} and another for the {name} {kind}.")
        for tool in self.tools.values():
            try:
                tool.output()
            except TypeError as e:
                raise PluginError(str(e)) from None
        return self


@functools.cache
def _catalog(path: tuple[str, ...]) -> Catalog:
    return Catalog(drivers=drivers(), agents=agents(), tools=tools()).check()


def catalog() -> Catalog:
    """The plugins installed now (read again when `sys.path` changes, e.g. a package added at run time)."""
    return _catalog(tuple(sys.path))
