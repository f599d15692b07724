"""Dense networks that map a (2.5D) slice to one heatmap per landmark: the stage-1 localisers.

Registered apart from the grading backbones because they end in a full-resolution map, not pooled
features; `create_heatmap_model(name, in_channels, num_outputs)` builds one by name.
"""

from __future__ import annotations

from collections.abc import Callable

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


@register_heatmap_model("unet-small")
def unet_small(in_channels: int, num_outputs: int, features=(8, 16, 32, 32, 64, 8), **kwargs) -> nn.Module:
    """MONAI BasicUNet with narrow layers: enough for five landmarks on a 64 px slice, quick on a CPU."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_outputs, features=tuple(features),
                     **kwargs)


@register_heatmap_model("unet")
def unet(in_channels: int, num_outputs: int, features=(32, 32, 64, 128, 256, 32), **kwargs) -> nn.Module:
    """MONAI BasicUNet at its usual width, for GPU runs."""
    from monai.networks.nets import BasicUNet

    return BasicUNet(spatial_dims=2, in_channels=in_channels, out_channels=num_outputs, features=tuple(features),
                     **kwargs)
