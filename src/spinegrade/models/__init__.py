"""Networks by name: `create_model(name, in_channels, num_outputs)`; `list_models()` gives the names."""

from .registry import GradingNet, create_model, list_models, register_model

__all__ = ["GradingNet", "create_model", "list_models", "register_model"]
