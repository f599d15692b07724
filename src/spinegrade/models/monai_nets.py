"""MONAI 2D backbones (random init; no weights are downloaded) with their classifier removed.

Each factory returns the MONAI network with its last linear layer replaced or switched off, so it emits
pooled features and the shared `GradingHead` does the grading. Any number of input channels works (2.5D).
"""

from __future__ import annotations

from torch import nn

from ._head import Features
from .registry import register_model

# MONAI's EfficientNet default BN momentum (0.01) is tuned for long ImageNet runs: over the few hundred
# steps of a run here the running statistics would lag the weights and validation would suffer.
_BN = ("batch", {"eps": 1e-3, "momentum": 0.1})


def _efficientnet(variant: str, in_channels: int, **kwargs) -> Features:
    from monai.networks.nets import EfficientNetBN

    kwargs.setdefault("norm", _BN)
    net = EfficientNetBN(variant, pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=1,
                         **kwargs)
    n = net._fc.in_features
    net._fc = nn.Identity()
    return Features(net, n)


@register_model("efficientnet-b0")
def efficientnet_b0(in_channels: int, **kwargs) -> Features:
    """MONAI EfficientNetBN b0 (1280 features); kwargs go to EfficientNetBN (e.g. norm)."""
    return _efficientnet("efficientnet-b0", in_channels, **kwargs)


@register_model("densenet121")
def densenet121(in_channels: int, **kwargs) -> Features:
    """MONAI DenseNet-121 (1024 features); kwargs go to monai DenseNet121."""
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1, **kwargs)
    n = net.class_layers.out.in_features
    net.class_layers.out = nn.Identity()
    return Features(net, n)
