"""ResNet-10 and ResNet-18 backbones (2D, random init), written here in MONAI's module layout.

Runs and the bundled foramen model were trained on MONAI's `resnet10`; this module builds the same network
with the same parameter names (`net.conv1`, `net.layer1.0.bn2`, `net.layer2.0.downsample.0`, ...), the same
initialisation (the same random draws in the same order, so a seed gives the same weights) and the same
arithmetic, so those checkpoints load and answer identically. What it saves is MONAI's import, which
loads its data, transform and plotting modules and was the largest part of a cold `predict`.
Options outside MONAI's defaults that this module does not implement (`act`, `norm`, shortcut type `A`,
...) are handed to MONAI's own class, which gives the same parameter names.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ._head import Features
from .registry import register_model

_WIDTHS = (64, 128, 256, 512)
# the options this module implements; any other goes to MONAI's class
_OWN = {"widen_factor", "conv1_t_size", "conv1_t_stride", "no_max_pool", "bias_downsample", "shortcut_type"}


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with batch norm and a skip (1x1 convolution + norm where the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        out += x if self.downsample is None else self.downsample(x)
        return self.act(out)


class ResNet(nn.Module):
    """(B, C, H, W) -> pooled features (B, `in_planes`); `blocks` basic blocks in each of the four stages."""

    def __init__(self, in_channels: int, blocks: Sequence[int], widen_factor: float = 1.0, conv1_t_size: int = 7,
                 conv1_t_stride: int = 1, no_max_pool: bool = False, bias_downsample: bool = True):
        super().__init__()
        widths = [int(w * widen_factor) for w in _WIDTHS]
        self.in_planes = widths[0]
        self.no_max_pool = no_max_pool
        self.conv1 = nn.Conv2d(in_channels, widths[0], conv1_t_size, stride=conv1_t_stride,
                               padding=conv1_t_size // 2, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.act = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, (w, n) in enumerate(zip(widths, blocks)):
            setattr(self, f"layer{i + 1}", self._stage(w, n, 1 if i == 0 else 2, bias_downsample))
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        # MONAI's initialisation, in its order (module order), so a seed gives MONAI's weights
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def _stage(self, width: int, n: int, stride: int, bias_downsample: bool) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_planes != width:  # built before the blocks: the order of the random draws
            downsample = nn.Sequential(nn.Conv2d(self.in_planes, width, 1, stride=stride, bias=bias_downsample),
                                       nn.BatchNorm2d(width))
        layers = [BasicBlock(self.in_planes, width, stride, downsample)]
        self.in_planes = width
        layers += [BasicBlock(width, width, 1, None) for _ in range(1, n)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.bn1(self.conv1(x)))
        if not self.no_max_pool:
            x = self.maxpool(x)
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.avgpool(x).flatten(1)


def _resnet(depth: int, blocks: Sequence[int], in_channels: int, **kwargs) -> Features:
    # MONAI's default stem stride is 1 (a 3D habit); 2 is the usual 2D ResNet and 4x cheaper.
    kwargs.setdefault("conv1_t_stride", 2)
    if set(kwargs) <= _OWN and kwargs.get("shortcut_type", "B") == "B" \
            and all(isinstance(kwargs.get(k, 1), int) for k in ("conv1_t_size", "conv1_t_stride")):
        kwargs.pop("shortcut_type", None)
        net = ResNet(in_channels, blocks, **kwargs)
    else:
        from monai.networks import nets

        net = getattr(nets, f"resnet{depth}")(spatial_dims=2, n_input_channels=in_channels, feed_forward=False,
                                              **kwargs)
    return Features(net, net.in_planes)  # in_planes ends as the width of the last stage


@register_model("resnet10")
def resnet10(in_channels: int, **kwargs) -> Features:
    """ResNet-10 (512 x widen_factor features), MONAI's layout; kwargs as monai's resnet (e.g. widen_factor)."""
    return _resnet(10, (1, 1, 1, 1), in_channels, **kwargs)


@register_model("resnet18")
def resnet18(in_channels: int, **kwargs) -> Features:
    """ResNet-18 (512 x widen_factor features), MONAI's layout; kwargs as monai's resnet (e.g. widen_factor)."""
    return _resnet(18, (2, 2, 2, 2), in_channels, **kwargs)
