"""Grad-CAM: the heat map lies where the evidence for the class is."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

torch = pytest.importorskip("torch")
pytest.importorskip("monai")

from spinegrade.report.saliency import gradcam, saliency_png  # noqa: E402


class _BrightnessNet(torch.nn.Module):
    """Class 1 = 'bright': one convolution that passes intensity through, pooled, then a positive weight."""

    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 2, 3, padding=1, bias=False)
        self.fc = torch.nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.conv.weight.zero_()
            self.conv.weight[:, 0, 1, 1] = 1.0
            self.fc.weight.copy_(torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))

    def forward(self, x):
        a = torch.relu(self.conv(x))
        return self.fc(a.mean(dim=(2, 3)))


def test_gradcam_points_at_the_evidence():
    x = torch.zeros(1, 1, 32, 32)
    x[0, 0, 4:10, 20:28] = 1.0  # the bright patch is the only evidence for class 1
    model = _BrightnessNet().train()
    heat = gradcam(model, x, "conv", class_index=1)
    assert heat.shape == (32, 32) and model.training  # mode restored
    inside = heat[4:10, 20:28].mean()
    outside = np.delete(heat.reshape(-1), np.ravel_multi_index(np.mgrid[4:10, 20:28].reshape(2, -1), (32, 32))).mean()
    assert inside > 0.9 and outside < 0.1
    png = saliency_png(x[0, 0].numpy(), heat, scale=2)
    assert Image.open(io.BytesIO(png)).size == (64, 64)


def test_gradcam_on_a_registered_model_with_a_condition_vector():
    registry = pytest.importorskip("spinegrade.models.registry")
    torch.manual_seed(0)
    model = registry.create_model("seed-cnn", in_channels=3, num_outputs=3, cond_dim=4)
    layer = [n for n, m in model.named_modules() if isinstance(m, torch.nn.Conv2d)][-2]
    heat = gradcam(model, torch.randn(1, 3, 64, 64), layer, class_index=2, cond=torch.zeros(1, 4))
    assert heat.shape == (64, 64) and np.isfinite(heat).all() and heat.min() >= 0 and heat.max() <= 1
    with pytest.raises(ValueError, match="one image"):
        gradcam(model, torch.randn(2, 3, 64, 64), layer, class_index=2, cond=torch.zeros(2, 4))
