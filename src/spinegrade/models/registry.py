"""Models by name: every network is a feature backbone under one shared grading head.

A family module registers backbone factories with `@register_model(name)`; a factory takes
`(in_channels, **kwargs)` and returns a module that maps `(B, in_channels, H, W)` to pooled features
`(B, num_features)` and has a `num_features` attribute. `create_model` puts `GradingHead` on top, which
is where an optional condition vector (level, side, family one-hot) joins the image features, so
conditioning works the same for every backbone and a new backbone is one new factory.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import nn

from ..errors import SpinegradeError

# Modules that register models when imported: adding a family is adding a file and its name here.
_FAMILIES: tuple[str, ...] = ("seed_cnn", "monai_nets", "efficientnet_lite")
_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_model(name: str) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a backbone factory `f(in_channels, **kwargs) -> module with num_features`."""

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered")
        _FACTORIES[name] = factory
        return factory

    return deco


def _load_families() -> None:
    for fam in _FAMILIES:
        importlib.import_module(f"{__package__}.{fam}")


def list_models() -> list[str]:
    """Names accepted by `create_model`, sorted."""
    _load_families()
    return sorted(_FACTORIES)


class GradingHead(nn.Module):
    """Fully connected layers from image features (+ the condition vector) to `num_outputs` logits.

    The condition vector goes through the hidden layer rather than being added to the logits, so the
    level and side can change how image features are read, not only shift the class prior.
    """

    def __init__(self, num_features: int, num_outputs: int, cond_dim: int = 0, hidden: int = 256,
                 dropout: float = 0.3):
        super().__init__()
        self.cond_dim = cond_dim
        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(num_features + cond_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, features: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim:
            if cond is None or cond.shape[-1] != self.cond_dim:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"this model needs a condition vector of size {self.cond_dim}, got {got}")
            features = torch.cat([features, cond.to(features.dtype)], dim=1)
        return self.layers(features)


class GradingNet(nn.Module):
    """A registered backbone and a `GradingHead`: `forward(image, cond=None) -> logits`."""

    def __init__(self, backbone: nn.Module, num_outputs: int, cond_dim: int = 0, head_hidden: int = 256,
                 head_dropout: float = 0.3):
        super().__init__()
        self.backbone = backbone
        self.head = GradingHead(backbone.num_features, num_outputs, cond_dim, head_hidden, head_dropout)

    @property
    def cond_dim(self) -> int:
        return self.head.cond_dim

    def forward(self, image: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.backbone(image), cond)


def create_model(name: str, in_channels: int, num_outputs: int, *, cond_dim: int = 0, head_hidden: int = 256,
                 head_dropout: float = 0.3, **kwargs) -> GradingNet:
    """Build a registered model: `in_channels` slices in (2.5D = adjacent slices), `num_outputs` logits out.

    cond_dim > 0 makes the model take a condition vector of that size as its second input. num_outputs
    may be 3 x n_targets for a multi-output head. Other keyword arguments go to the backbone factory.
    """
    _load_families()
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise SpinegradeError(f"unknown model {name!r}; registered: {', '.join(sorted(_FACTORIES))}") from None
    try:
        backbone = factory(in_channels, **kwargs)
    except TypeError as e:  # an option the backbone does not take
        raise SpinegradeError(f"model {name!r}: {e}") from None
    return GradingNet(backbone, num_outputs, cond_dim, head_hidden, head_dropout)
