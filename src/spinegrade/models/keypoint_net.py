"""A light keypoint network: a U-Net whose decoder stops at half resolution, with coordinate channels.

Landmark heatmaps do not need full resolution: a peak refined to sub-pixel precision on a half-size map is as
exact as the labels, and the decoder's last, most expensive stage is saved (about 3x the throughput of the
full-resolution `unet-small` at 128 px on a CPU). The encoder reaches 1/16 so each level sees the whole lumbar
spine, which is what tells L1/L2 from L2/L3.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .heatmap import WithCoordinates
from .registry import HEATMAP, register_model


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True),
                         nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class HalfResUNet(nn.Module):
    """(B, C, H, W) -> (B, K, H/2, W/2) logits; H and W multiples of 2**len(widths)."""

    def __init__(self, in_channels: int, num_outputs: int, widths: Sequence[int] = (16, 24, 32, 64, 96)):
        super().__init__()
        w = list(widths)
        # A strided stem: nothing runs at full resolution, where most of a U-Net's time goes.
        self.stem = nn.Sequential(nn.Conv2d(in_channels, w[0], 3, stride=2, padding=1, bias=False),
                                  nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True))
        self.enc = nn.ModuleList([_block(w[i - 1], w[i]) for i in range(1, len(w))])
        self.dec = nn.ModuleList([_block(w[i + 1] + w[i], w[i]) for i in range(len(w) - 2, 0, -1)])
        self.out = nn.Conv2d(w[1], num_outputs, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        x = self.stem(x)
        for i, blk in enumerate(self.enc):
            x = blk(x if i == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        x = skips[-1]
        for blk, skip in zip(self.dec, reversed(skips[:-1])):
            x = blk(torch.cat([F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False), skip], 1))
        return self.out(x)


@register_model("keypoint-half", kind=HEATMAP)
def keypoint_half(in_channels: int, num_outputs: int, widths=(16, 24, 32, 64, 96), coordinates: bool = True
                  ) -> nn.Module:
    """HalfResUNet (+ coordinate channels): one heatmap per landmark at half the input resolution."""
    net = HalfResUNet(in_channels + (2 if coordinates else 0), num_outputs, widths)
    net = WithCoordinates(net) if coordinates else net
    net.out_stride = 2  # its heatmaps are half the input size
    return net
