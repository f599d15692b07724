"""Dense networks that map a (2.5D) slice to one heatmap per landmark: the stage-1 localisers.

They sit in the one model registry as kind `heatmap` (they end in a full-resolution map, not pooled
features, so `create_model` returns them without a grading head).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpinegradeError
from .registry import HEATMAP, create_model, list_models, register_model


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


def _conv_norm_act(cin: int, cout: int, dropout: float) -> nn.Sequential:
    """3x3 convolution, instance norm, dropout, leaky ReLU; named as MONAI's `Convolution` (conv, adn.N/D/A)."""
    adn = nn.Sequential(OrderedDict(N=nn.InstanceNorm2d(cout, affine=True), D=nn.Dropout(dropout),
                                    A=nn.LeakyReLU(0.1, inplace=True)))
    return nn.Sequential(OrderedDict(conv=nn.Conv2d(cin, cout, 3, padding=1), adn=adn))


def _two_convs(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(OrderedDict(conv_0=_conv_norm_act(cin, cout, dropout),
                                     conv_1=_conv_norm_act(cout, cout, dropout)))


def _down(cin: int, cout: int, dropout: float) -> nn.Sequential:
    return nn.Sequential(OrderedDict(max_pooling=nn.MaxPool2d(2), convs=_two_convs(cin, cout, dropout)))


class _UpCat(nn.Module):
    """Transposed-convolution upsampling, the encoder's map beside it, two convolutions."""

    def __init__(self, cin: int, cat: int, cout: int, dropout: float, halves: bool = True):
        super().__init__()
        up = cin // 2 if halves else cin
        self.upsample = nn.Sequential(OrderedDict(deconv=nn.ConvTranspose2d(cin, up, 2, stride=2)))
        self.convs = _two_convs(cat + up, cout, dropout)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.upsample(x)
        # an odd encoder size: one replicated row/column at the end, as MONAI does
        pad = [0, int(skip.shape[-1] != x.shape[-1]), 0, int(skip.shape[-2] != x.shape[-2])]
        if any(pad):
            x = F.pad(x, pad, "replicate")
        return self.convs(torch.cat([skip, x], dim=1))


class BasicUNet(nn.Module):
    """MONAI's 2D `BasicUNet` with its default options, written here with MONAI's parameter names.

    Runs trained before this class existed hold MONAI `BasicUNet` weights: the names, the initialisation
    (the same random draws in the same order) and the arithmetic are the same, so they load and answer
    identically, without MONAI's import (seconds: it loads its data, transform and plotting modules).
    `features`: five encoder widths and the width after the last upsampling.
    """

    def __init__(self, in_channels: int, out_channels: int, features: Sequence[int] = (32, 32, 64, 128, 256, 32),
                 dropout: float = 0.0):
        super().__init__()
        f = list(features)
        self.conv_0 = _two_convs(in_channels, f[0], dropout)
        for i in range(1, 5):
            setattr(self, f"down_{i}", _down(f[i - 1], f[i], dropout))
        for i in range(4, 1, -1):
            setattr(self, f"upcat_{i}", _UpCat(f[i], f[i - 1], f[i - 1], dropout))
        self.upcat_1 = _UpCat(f[1], f[0], f[5], dropout, halves=False)
        self.final_conv = nn.Conv2d(f[5], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x0 = self.conv_0(x)
        x1 = self.down_1(x0)
        x2 = self.down_2(x1)
        x3 = self.down_3(x2)
        u = self.upcat_4(self.down_4(x3), x3)
        u = self.upcat_1(self.upcat_2(self.upcat_3(u, x2), x1), x0)
        return self.final_conv(u)


def _basic_unet(in_channels: int, num_outputs: int, features, coordinates: bool, **kwargs) -> nn.Module:
    cin = in_channels + (2 if coordinates else 0)
    if len(features) == 6 and set(kwargs) <= {"dropout"} and isinstance(kwargs.get("dropout", 0.0), (int, float)):
        net = BasicUNet(cin, num_outputs, features, float(kwargs.get("dropout", 0.0)))
    else:  # MONAI's other options (act, norm, upsample, ...): its own class, same parameter names
        from monai.networks.nets import BasicUNet as MonaiBasicUNet

        net = MonaiBasicUNet(spatial_dims=2, in_channels=cin, out_channels=num_outputs, features=tuple(features),
                             **kwargs)
    return WithCoordinates(net) if coordinates else net


@register_model("unet-small", kind=HEATMAP)
def unet_small(in_channels: int, num_outputs: int, features=(8, 16, 32, 32, 64, 8), coordinates: bool = True,
               **kwargs) -> nn.Module:
    """BasicUNet (MONAI's layout), narrow (+ coordinate channels): five landmarks on a 64 px slice, quick on a CPU."""
    return _basic_unet(in_channels, num_outputs, features, coordinates, **kwargs)


@register_model("unet", kind=HEATMAP)
def unet(in_channels: int, num_outputs: int, features=(32, 32, 64, 128, 256, 32), coordinates: bool = True,
         **kwargs) -> nn.Module:
    """BasicUNet (MONAI's layout) at its usual width (+ coordinate channels), for GPU runs."""
    return _basic_unet(in_channels, num_outputs, features, coordinates, **kwargs)
