"""Token prices: the table shipped in `prices.json`, optionally overridden by a file of the same shape."""

from __future__ import annotations

import json
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from ..models import Usage
from .providers.common import TokenUsage


@dataclass(frozen=True)
class Price:
    """USD per million tokens."""

    input: float
    output: float
    cache_read: float = 0.0
    cache_write: float = 0.0


class PriceTable:
    def __init__(self, prices: dict[str, Price]) -> None:
        self.prices = prices

    @classmethod
    def load(cls, override: Path | None = None) -> PriceTable:
        """The shipped table, with the entries of `override` (if given) added or replacing."""
        shipped = json.loads(resources.files(__package__).joinpath("prices.json").read_text())
        table = cls._parse(shipped, "the shipped price table")
        if override is not None:
            try:
                doc = json.loads(Path(override).read_text())
            except (OSError, ValueError) as e:
                raise ValueError(f"cannot read the price file {override}: {e}") from e
            table.update(cls._parse(doc, f"the price file {override}"))
        return cls(table)

    @staticmethod
    def _parse(doc: object, where: str) -> dict[str, Price]:
        models = doc.get("models") if isinstance(doc, dict) else None
        if not isinstance(models, dict):
            raise ValueError(f"{where} needs an object 'models': name -> {{input, output, cache_read, cache_write}}")
        try:
            return {name: Price(**{k: float(v) for k, v in p.items()}) for name, p in models.items()}
        except (TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"{where} has an invalid price: {e}") from e

    def find(self, model: str) -> Price | None:
        for name in (model, model.rsplit("/", 1)[-1]):
            if name in self.prices:
                return self.prices[name]
            matches = [k for k in self.prices if name.startswith(k)]
            if matches:
                return self.prices[max(matches, key=len)]
        return None

    def cost(self, model: str, usage: TokenUsage) -> float:
        """USD for `usage` on `model`; 0 for models not in the table."""
        price = self.find(model)
        if price is None:
            return 0.0
        return (
            usage.input_tokens * price.input
            + usage.output_tokens * price.output
            + usage.cache_read_tokens * price.cache_read
            + usage.cache_creation_tokens * price.cache_write
        ) / 1_000_000


def add_usage(usage: Usage, prices: PriceTable, model: str, tokens: TokenUsage) -> None:
    """Add one model call's tokens, and their cost on `model`, to `usage`."""
    usage.input_tokens += tokens.input_tokens
    usage.output_tokens += tokens.output_tokens
    usage.cache_read_tokens += tokens.cache_read_tokens
    usage.cache_creation_tokens += tokens.cache_creation_tokens
    usage.total_tokens += tokens.input_tokens + tokens.output_tokens + tokens.cache_read_tokens + tokens.cache_creation_tokens
    cost = prices.cost(model, tokens)
    usage.cost_usd += cost
    usage.cost_by_model[model] = usage.cost_by_model.get(model, 0.0) + cost
