"""Every registered model builds, forwards and back-propagates on a tiny input; the registry's contract."""

from __future__ import annotations

import json

import pytest
import torch

from spinegrade.cli import main
from spinegrade.data.slices import COND_DIM
from spinegrade.errors import SpinegradeError
from spinegrade.models import BACKBONE, HEATMAP, create_model, list_models, model_kind, register_model
from spinegrade.models import registry


def test_every_module_of_the_package_registers_itself():
    """Discovery walks the package: each family module contributes names without a hand-kept list, and what
    a module's source declares (read without importing it) is what it registers when imported."""
    import importlib
    import pkgutil

    import spinegrade.models as pkg

    modules = {m.name for m in pkgutil.iter_modules(pkg.__path__)} - {"registry"}
    modules = {m for m in modules if not m.startswith("_")}  # private plumbing (the grading head) declares none
    declared = registry._declarations()
    assert {d.module.rsplit(".", 1)[-1] for d in declared.values()} == modules
    for m in modules:
        importlib.import_module(f"spinegrade.models.{m}")
    by_module = {n: registry._FACTORIES[n].__module__ for n in list_models(None)}
    assert by_module == {n: d.module for n, d in declared.items()}
    assert {n: registry._KINDS[n] for n in declared} == {n: d.kind for n, d in declared.items()}
    assert list_models() == sorted(list_models())
    assert set(list_models(None)) == set(list_models(BACKBONE)) | set(list_models(HEATMAP))
    assert list_models(HEATMAP) and list_models(BACKBONE)
    assert all(d.description for d in declared.values())  # the factory's docstring, shown by `info`


def test_declarations_are_read_from_the_decorators():
    src = '''
@register_model("a-net")
def a(in_channels):
    """First line of the doc
    goes on here.

    Not this paragraph."""

@registry.register_model("b-net", kind=HEATMAP)
class B: pass

@register_model(name="c-net", kind="heatmap")
def c(in_channels, num_outputs): pass

@something_else("d")
def d(): pass
'''
    got = {d.name: (d.kind, d.description) for d in registry._declarations_in(src, "m", "m.py")}
    assert got == {"a-net": (BACKBONE, "First line of the doc goes on here."), "b-net": (HEATMAP, ""),
                   "c-net": (HEATMAP, "")}
    with pytest.raises(SpinegradeError, match="m.py:1: register_model needs the model's name as a string literal"):
        registry._declarations_in("@register_model(NAME)\ndef f(): pass\n", "m", "m.py")
    with pytest.raises(SpinegradeError, match="m.py:1: register_model's kind"):
        registry._declarations_in("@register_model('x', kind=k)\ndef f(): pass\n", "m", "m.py")


@pytest.mark.parametrize("name", list_models(None))
def test_every_registered_model_forwards_and_backpropagates(name):
    """Read from the registry, so a new file is tested the moment it registers a name."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 32, 32)
    if model_kind(name) == HEATMAP:
        model = create_model(name, in_channels=3, num_outputs=4)
        out = model(x)
        s = 32 // getattr(model, "out_stride", 1)  # a net may answer at a fraction of the input size
        assert out.shape == (2, 4, s, s)
    else:
        model = create_model(name, in_channels=3, num_outputs=6, cond_dim=COND_DIM)
        out = model(x, torch.eye(COND_DIM)[:2])
        assert out.shape == (2, 6)
    assert torch.isfinite(out).all()
    out.square().mean().backward()
    first = next(p for p in model.parameters() if p.ndim == 4)  # the first convolution
    assert first.grad is not None and first.grad.abs().sum() > 0


@pytest.mark.parametrize("name", list_models(BACKBONE))
def test_forward_backward_25d_with_condition(name):
    torch.manual_seed(0)
    model = create_model(name, in_channels=3, num_outputs=6, cond_dim=COND_DIM)
    x = torch.randn(2, 3, 32, 32)
    cond = torch.zeros(2, COND_DIM)
    cond[0, 0] = cond[1, 4] = 1
    out = model(x, cond)
    assert out.shape == (2, 6) and torch.isfinite(out).all()
    out.square().mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None for g in grads)
    first = next(p for p in model.backbone.parameters() if p.ndim == 4)  # the first convolution
    assert first.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():  # the condition reaches the output: another level, other logits
        same = model(x[:1], cond[:1])
        other = model(x[:1], cond[1:])
    assert not torch.allclose(same, other)


@pytest.mark.parametrize("name", ["seed-cnn", "resnet10"])
def test_single_channel_without_condition(name):
    model = create_model(name, in_channels=1, num_outputs=3)
    assert model.cond_dim == 0
    out = model(torch.randn(2, 1, 40, 48))  # non-square works too
    assert out.shape == (2, 3)


def test_condition_of_wrong_size_is_refused():
    model = create_model("seed-cnn", 1, 3, cond_dim=COND_DIM)
    with pytest.raises(ValueError, match=f"size {COND_DIM}"):
        model(torch.randn(2, 1, 32, 32))
    with pytest.raises(ValueError, match=f"size {COND_DIM}"):
        model(torch.randn(2, 1, 32, 32), torch.zeros(2, 3))


def test_backbone_options_pass_through():
    small = create_model("seed-cnn", 1, 3, widths=(4, 4, 8, 8, 8), pool=2)
    assert small.backbone.num_features == 8 * 2 * 2
    half = create_model("resnet10", 1, 3, widen_factor=0.5)
    assert half.backbone.num_features == 256
    with pytest.raises(SpinegradeError, match="seed-cnn"):
        create_model("seed-cnn", 1, 3, no_such_option=1)


def test_unknown_name_lists_the_registered_ones():
    with pytest.raises(SpinegradeError, match="registered: .*seed-cnn"):
        create_model("alexnet-9000", 1, 3)


def test_register_a_new_backbone(monkeypatch):
    monkeypatch.setattr(registry, "_FACTORIES", dict(registry._FACTORIES))
    monkeypatch.setattr(registry, "_KINDS", dict(registry._KINDS))

    class Tiny(torch.nn.Module):
        num_features = 5

        def __init__(self, in_channels):
            super().__init__()
            self.conv = torch.nn.Conv2d(in_channels, 5, 3)

        def forward(self, x):
            return self.conv(x).mean(dim=(2, 3))

    register_model("tiny-test")(Tiny)
    assert "tiny-test" in list_models()
    assert create_model("tiny-test", 2, 3, cond_dim=4)(torch.randn(1, 2, 8, 8), torch.ones(1, 4)).shape == (1, 3)
    with pytest.raises(ValueError, match="already registered"):
        register_model("tiny-test")(lambda in_channels: None)


def test_a_heatmap_name_builds_a_dense_net_and_kinds_do_not_mix():
    from spinegrade.models.heatmap import create_heatmap_model

    assert model_kind("unet-small") == HEATMAP and model_kind("seed-cnn") == BACKBONE
    net = create_heatmap_model("unet-small", 3, 5)
    assert net(torch.zeros(1, 3, 32, 32)).shape == (1, 5, 32, 32)
    with pytest.raises(SpinegradeError, match="unknown heatmap model 'seed-cnn'"):
        create_heatmap_model("seed-cnn", 3, 5)
    with pytest.raises(ValueError, match="model kind"):
        register_model("x", kind="detector")


def test_info_lists_the_models_of_every_kind(capsys):
    assert main(["info", "--json"]) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["models"] == list_models()
    assert d["models_by_kind"] == {BACKBONE: list_models(BACKBONE), HEATMAP: list_models(HEATMAP)}
    assert main(["info"]) == 0
    text = capsys.readouterr().out
    assert f"models (heatmap): {', '.join(list_models(HEATMAP))}" in text
