"""Networks by name: `create_model(name, in_channels, num_outputs)`; `list_models(kind)` gives the names.

Importing this package (and listing models) imports no torch; building a model does.
"""

from .registry import BACKBONE, HEATMAP, create_model, describe_models, list_models, model_kind, register_model

__all__ = ["BACKBONE", "HEATMAP", "GradingNet", "create_model", "describe_models", "list_models", "model_kind",
           "register_model"]


def __getattr__(name: str):
    if name == "GradingNet":  # a torch class: imported when asked for, so listing names stays torch-free
        from ._head import GradingNet

        return GradingNet
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
