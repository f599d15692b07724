"""MONAI 2D backbones (random init; no weights are downloaded) with their classifier removed.

Each factory returns the MONAI network with its last linear layer replaced or switched off, so it emits
pooled features and the shared `GradingHead` does the grading. Any number of input channels works (2.5D).
"""

from __future__ import annotations

from torch import nn

from .registry import register_model

# MONAI's EfficientNet default BN momentum (0.01) is tuned for long ImageNet runs: over the few hundred
# steps of a run here the running statistics would lag the weights and validation would suffer.
_BN = ("batch", {"eps": 1e-3, "momentum": 0.1})


class _Features(nn.Module):
    """Wrap a MONAI network whose classifier was removed, recording its feature width."""

    def __init__(self, net: nn.Module, num_features: int):
        super().__init__()
        self.net = net
        self.num_features = num_features

    def forward(self, x):
        return self.net(x)


def _efficientnet(variant: str, in_channels: int, **kwargs) -> _Features:
    from monai.networks.nets import EfficientNetBN

    kwargs.setdefault("norm", _BN)
    net = EfficientNetBN(variant, pretrained=False, spatial_dims=2, in_channels=in_channels, num_classes=1,
                         **kwargs)
    n = net._fc.in_features
    net._fc = nn.Identity()
    return _Features(net, n)


def _resnet(depth: int, in_channels: int, **kwargs) -> _Features:
    from monai.networks import nets

    # MONAI's default stem stride is 1 (a 3D habit); 2 is the usual 2D ResNet and 4x cheaper.
    kwargs.setdefault("conv1_t_stride", 2)
    net = getattr(nets, f"resnet{depth}")(spatial_dims=2, n_input_channels=in_channels, feed_forward=False,
                                          **kwargs)
    return _Features(net, net.in_planes)  # in_planes ends as the width of the last stage


@register_model("efficientnet-b0")
def efficientnet_b0(in_channels: int, **kwargs) -> _Features:
    """MONAI EfficientNetBN b0 (1280 features); kwargs go to EfficientNetBN (e.g. norm)."""
    return _efficientnet("efficientnet-b0", in_channels, **kwargs)


@register_model("resnet10")
def resnet10(in_channels: int, **kwargs) -> _Features:
    """MONAI ResNet-10 (512 x widen_factor features); kwargs go to monai ResNet (e.g. widen_factor)."""
    return _resnet(10, in_channels, **kwargs)


@register_model("resnet18")
def resnet18(in_channels: int, **kwargs) -> _Features:
    """MONAI ResNet-18 (512 x widen_factor features); kwargs go to monai ResNet (e.g. widen_factor)."""
    return _resnet(18, in_channels, **kwargs)


@register_model("densenet121")
def densenet121(in_channels: int, **kwargs) -> _Features:
    """MONAI DenseNet-121 (1024 features); kwargs go to monai DenseNet121."""
    from monai.networks.nets import DenseNet121

    net = DenseNet121(spatial_dims=2, in_channels=in_channels, out_channels=1, **kwargs)
    n = net.class_layers.out.in_features
    net.class_layers.out = nn.Identity()
    return _Features(net, n)
