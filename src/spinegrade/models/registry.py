"""Every network by name, in one registry: grading backbones and heatmap (localiser) networks.

A module of this package registers factories with `@register_model(name)` (a grading backbone) or
`@register_model(name, kind=HEATMAP)`; every module here is imported when a name is first looked up, so
adding a network is adding one file (see CONTRIBUTING.md).

- A **backbone** factory takes `(in_channels, **kwargs)` and returns a module that maps
  `(B, in_channels, H, W)` to pooled features `(B, num_features)` and has a `num_features` attribute.
  `create_model` puts `GradingHead` on top, which is where an optional condition vector (level, side,
  family one-hot) joins the image features, so conditioning works the same for every backbone.
- A **heatmap** factory takes `(in_channels, num_outputs, **kwargs)` and returns a dense network
  `(B, in_channels, H, W) -> (B, num_outputs, H, W)` logits.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable

import torch
from torch import nn

from ..errors import SpinegradeError

BACKBONE = "backbone"
HEATMAP = "heatmap"
KINDS = (BACKBONE, HEATMAP)

_FACTORIES: dict[str, Callable[..., nn.Module]] = {}
_KINDS: dict[str, str] = {}
_discovered = False


def register_model(name: str, kind: str = BACKBONE) -> Callable[[Callable[..., nn.Module]], Callable[..., nn.Module]]:
    """Decorator: register a factory under `name` (see the module doc for what each kind's factory takes)."""
    if kind not in KINDS:
        raise ValueError(f"model kind {kind!r}: expected one of {', '.join(KINDS)}")

    def deco(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"model name {name!r} is already registered")
        _FACTORIES[name] = factory
        _KINDS[name] = kind
        return factory

    return deco


def _discover() -> None:
    """Import every module of this package once, so their decorators run (no hand-kept list to forget)."""
    global _discovered
    if _discovered:
        return
    package = importlib.import_module(__package__)
    for m in pkgutil.iter_modules(package.__path__):
        if m.name != "registry" and not m.name.startswith("_"):
            importlib.import_module(f"{__package__}.{m.name}")
    _discovered = True


def list_models(kind: str | None = BACKBONE) -> list[str]:
    """Registered names of one kind (default: the grading backbones), or of every kind with `kind=None`; sorted."""
    _discover()
    return sorted(n for n in _FACTORIES if kind is None or _KINDS[n] == kind)


def model_kind(name: str) -> str:
    """`backbone` or `heatmap`; SpinegradeError for a name nobody registered."""
    _discover()
    if name not in _FACTORIES:
        raise SpinegradeError(f"unknown model {name!r}; registered: {', '.join(sorted(_FACTORIES))}")
    return _KINDS[name]


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


def create_model(name: str, in_channels: int, num_outputs: int, **kwargs) -> nn.Module:
    """Build any registered model: `in_channels` slices in (2.5D = adjacent slices), `num_outputs` out.

    A backbone becomes a `GradingNet` (`num_outputs` logits); its keyword arguments `cond_dim` (> 0: the
    model takes a condition vector of that size as its second input), `head_hidden` and `head_dropout`
    shape the head, the others go to the backbone factory. A heatmap network gets every keyword argument
    and returns `num_outputs` maps. This is what `train.checkpoint.load_model` calls, for every kind.
    """
    kind = model_kind(name)
    factory = _FACTORIES[name]
    head = {k: kwargs.pop(k) for k in ("cond_dim", "head_hidden", "head_dropout") if k in kwargs} \
        if kind == BACKBONE else {}
    try:
        net = factory(in_channels, **kwargs) if kind == BACKBONE else factory(in_channels, num_outputs, **kwargs)
    except TypeError as e:  # an option the factory does not take
        raise SpinegradeError(f"model {name!r}: {e}") from None
    if kind == HEATMAP:
        return net
    return GradingNet(net, num_outputs, head.get("cond_dim", 0), head.get("head_hidden", 256),
                      head.get("head_dropout", 0.3))
