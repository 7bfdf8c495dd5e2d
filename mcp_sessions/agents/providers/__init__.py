"""Model providers for the `llm` agent: one small interface (`Provider`), three ways to reach a model."""

from .common import ModelReply, ModelRequest, Provider, ProviderError, TokenUsage, ToolSpec

__all__ = ["ModelReply", "ModelRequest", "Provider", "ProviderError", "TokenUsage", "ToolSpec"]
