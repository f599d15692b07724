"""Dense networks that map a (2.5D) slice to one heatmap per landmark: the stage-1 localisers.

Registered apart from the grading backbones because they end in a full-resolution map, not pooled
features; `create_heatmap_model(name, in_channels, num_outputs)` builds one by name.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from ..errors import SpinegradeError

_HEATMAP_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def register_heatmap_model(name: str):
    def deco(factory):
        _HEATMAP_FACTORIES[name] = factory
        return factory

    return deco


def list_heatmap_models() -> list[str]:
    return sorted(_HEATMAP_FACTORIES)


def create_heatmap_model(name: str, in_channels: int, num_outputs: int, **kwargs) -> nn.Module:
    """Build a registered heatmap network: (B, in_channels, H, W) -> (B, num_outputs, H, W) logits."""
    try:
        factory = _HEATMAP_FACTORIES[name]
    except KeyError:
        raise SpinegradeError(f"unknown heatmap model {name!r}; registered: {', '.join(list_heatmap_models())}") from None
    return factory(in_channels, num_outputs, **kwargs)


class WithCoordinates(nn.Module):
    """Append two channels holding the pixel's row and column position (-1..1) before the network.

    Telling L1/L2 from L2/L3 is a matter of where a disc lies in the spine; a plain U-Net sees position
    only through its padding and on small data often settles on peaks in the right place for the wrong
    level. The coordinate channels make position an input it can use from the first step.
    """

    def __init__(self, net: nn.Module):
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype).view(1, 1, h, 1).expand(b, 1, h, w)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype).view(1, 1, 1, w).expand(b, 1, h, w)
        return self.net(torch.cat([x, ys, xs], dim=1))


def _basic_unet(in_channels: int, num_outputs: int, features, coordinates: bool, **kwargs) -> nn.Module:
    from monai.networks.nets import BasicUNet

    net = BasicUNet(spatial_dims=2, in_channels=in_channels + (2 if coordinates else 0), out_channels=num_outputs,
                    features=tuple(features), **kwargs)
    return WithCoordinates(net) if coordinates else net


@register_heatmap_model("unet-small")
def unet_small(in_channels: int, num_outputs: int, features=(8, 16, 32, 32, 64, 8), coordinates: bool = True,
               **kwargs) -> nn.Module:
    """MONAI BasicUNet with narrow layers (+ coordinate channels): five landmarks on a 64 px slice, quick on a CPU."""
    return _basic_unet(in_channels, num_outputs, features, coordinates, **kwargs)


@register_heatmap_model("unet")
def unet(in_channels: int, num_outputs: int, features=(32, 32, 64, 128, 256, 32), coordinates: bool = True,
         **kwargs) -> nn.Module:
    """MONAI BasicUNet at its usual width (+ coordinate channels), for GPU runs."""
    return _basic_unet(in_channels, num_outputs, features, coordinates, **kwargs)


# Other heatmap families register themselves on import (after the names above exist).
from . import keypoint_net  # noqa: E402,F401
