"""The seed project's network: five blocks of convolution, batch norm, max pooling and dropout.

The seed flattened its last feature map into fully connected layers, which tied the network to one image
size; here the map is first pooled to a fixed `pool` x `pool` grid, so the same design takes any size.
Its fully connected layers are the shared `GradingHead` that `create_model` puts on top.
"""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn

from .registry import register_model


class SeedCNN(nn.Module):
    """Five conv blocks -> pooled, flattened features (`num_features` = widths[-1] * pool**2)."""

    def __init__(self, in_channels: int, widths: Sequence[int] = (32, 64, 128, 256, 256), dropout: float = 0.1,
                 pool: int = 4):
        super().__init__()
        layers: list[nn.Module] = []
        c = in_channels
        for w in widths:
            layers += [
                nn.Conv2d(c, w, kernel_size=3, padding=1, bias=False),
                nn.BatchNorm2d(w),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(2, ceil_mode=True),  # ceil: small inputs shrink to 1x1, never to 0x0
                nn.Dropout2d(dropout),
            ]
            c = w
        self.features = nn.Sequential(*layers, nn.AdaptiveAvgPool2d(pool), nn.Flatten())
        self.num_features = c * pool * pool

    def forward(self, x):
        return self.features(x)


@register_model("seed-cnn")
def seed_cnn(in_channels: int, **kwargs) -> SeedCNN:
    """The seed design; kwargs: widths (five channel counts), dropout, pool."""
    return SeedCNN(in_channels, **kwargs)
