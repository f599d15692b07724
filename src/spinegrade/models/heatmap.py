"""Dense networks that map a (2.5D) slice to one heatmap per landmark: the stage-1 localisers.

They sit in the one model registry as kind `heatmap` (they end in a full-resolution map, not pooled
features, so `create_model` returns them without a grading head).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import SpinegradeError
from .registry import HEATMAP, create_model, list_models, register_model


def register_heatmap_model(name: str):
    """`register_model(name, kind=HEATMAP)`."""
    return register_model(name, kind=HEATMAP)


def list_heatmap_models() -> list[str]:
    """Registered heatmap network names, sorted."""
    return list_models(HEATMAP)


def create_heatmap_model(name: str, in_channels: int, num_outputs: int, **kwargs) -> nn.Module:
    """Build a registered heatmap network: (B, in_channels, H, W) -> (B, num_outputs, H, W) logits."""
    if name not in list_heatmap_models():
        raise SpinegradeError(f"unknown heatmap model {name!r}; registered: {', '.join(list_heatmap_models())}")
    return create_model(name, in_channels, num_outputs, **kwargs)


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


@register_model("unet-small", kind=HEATMAP)
def unet_small(in_channels: int, num_outputs: int, features=(8, 16, 32, 32, 64, 8), coordinates: bool = True,
               **kwargs) -> nn.Module:
    """MONAI BasicUNet with narrow layers (+ coordinate channels): five landmarks on a 64 px slice, quick on a CPU."""
    return _basic_unet(in_channels, num_outputs, features, coordinates, **kwargs)


@register_model("unet", kind=HEATMAP)
def unet(in_channels: int, num_outputs: int, features=(32, 32, 64, 128, 256, 32), coordinates: bool = True,
         **kwargs) -> nn.Module:
    """MONAI BasicUNet at its usual width (+ coordinate channels), for GPU runs."""
    return _basic_unet(in_channels, num_outputs, features, coordinates, **kwargs)
