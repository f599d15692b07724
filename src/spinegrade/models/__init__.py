"""Networks by name: `create_model(name, in_channels, num_outputs)`; `list_models(kind)` gives the names."""

from .registry import BACKBONE, HEATMAP, GradingNet, create_model, list_models, model_kind, register_model

__all__ = ["BACKBONE", "HEATMAP", "GradingNet", "create_model", "list_models", "model_kind", "register_model"]
