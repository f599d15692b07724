"""The project's ResNet and BasicUNet are MONAI's networks without MONAI's import: the same parameter names,
the same weights from the same seed, the same outputs (bit for bit), so runs trained on MONAI's classes load
and answer unchanged; options these classes do not implement are built by MONAI's own class."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from spinegrade.models import create_model
from spinegrade.models.heatmap import BasicUNet
from spinegrade.models.resnet import ResNet

nets = pytest.importorskip("monai.networks.nets")
BUNDLED = Path(__file__).resolve().parents[2] / "src/spinegrade/bundled/foramina-sagt1-v1"


def _same(a: torch.nn.Module, b: torch.nn.Module, x: torch.Tensor) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)  # names and order: a checkpoint of one loads strictly into the other
    assert all(torch.equal(sa[k], sb[k]) for k in sa)  # same seed, same initial weights
    for train in (True, False):  # batch norm in both modes
        a.train(train), b.train(train)
        ya, yb = a(x), b(x)
        assert ya.shape == yb.shape and torch.equal(ya, yb)


@pytest.mark.parametrize("depth,blocks,kwargs", [(10, (1, 1, 1, 1), {"widen_factor": 0.5}), (10, (1, 1, 1, 1), {}),
                                                 (18, (2, 2, 2, 2), {"widen_factor": 0.25, "no_max_pool": True})])
def test_resnet_is_monais(depth, blocks, kwargs):
    torch.manual_seed(7)
    theirs = getattr(nets, f"resnet{depth}")(spatial_dims=2, n_input_channels=3, feed_forward=False,
                                             conv1_t_stride=2, **kwargs)
    torch.manual_seed(7)
    ours = ResNet(3, blocks, conv1_t_stride=2, **kwargs)
    _same(theirs, ours, torch.randn(2, 3, 56, 40))


@pytest.mark.parametrize("features,size", [((8, 16, 32, 32, 64, 8), (64, 64)), ((4, 4, 8, 8, 8, 4), (45, 38))])
def test_basic_unet_is_monais(features, size):
    torch.manual_seed(7)
    theirs = nets.BasicUNet(spatial_dims=2, in_channels=5, out_channels=4, features=features, dropout=0.0)
    torch.manual_seed(7)
    ours = BasicUNet(5, 4, features)
    _same(theirs, ours, torch.randn(2, 5, *size))  # 45 x 38: MONAI's padding of odd sizes too


def test_the_bundled_grader_answers_as_with_monais_class():
    from spinegrade.models._head import Features
    from spinegrade.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(BUNDLED / "grader")
    spec, state = ckpt["model"], ckpt["state_dict"]
    ours = create_model(spec["name"], spec["in_channels"], spec["num_outputs"], **spec["kwargs"])
    assert type(ours.backbone.net) is ResNet
    theirs = create_model(spec["name"], spec["in_channels"], spec["num_outputs"], **spec["kwargs"])
    kw = {k: v for k, v in spec["kwargs"].items() if k != "cond_dim"}
    mon = nets.resnet10(spatial_dims=2, n_input_channels=spec["in_channels"], feed_forward=False, conv1_t_stride=2,
                        **kw)
    theirs.backbone = Features(mon, mon.in_planes)
    ours.load_state_dict(state)
    theirs.load_state_dict(state)
    ours.eval(), theirs.eval()
    torch.manual_seed(0)
    x, cond = torch.randn(4, 1, 64, 64), torch.eye(spec["kwargs"]["cond_dim"])[:4]
    with torch.no_grad():
        assert torch.equal(ours(x, cond), theirs(x, cond))


def test_options_outside_the_defaults_go_to_monais_class():
    r = create_model("resnet10", 1, 3, shortcut_type="A")
    assert type(r.backbone.net).__module__.startswith("monai.")
    u = create_model("unet-small", 1, 5, upsample="nontrainable")
    assert type(u.net).__module__.startswith("monai.")
    assert type(create_model("unet-small", 1, 5, dropout=0.1).net) is BasicUNet
