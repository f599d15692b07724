"""What every grading backbone shares: the grading head on top of its pooled features, and the wrapper
that records the feature width of a network whose classifier was removed."""

from __future__ import annotations

import torch
from torch import nn


class Features(nn.Module):
    """Wrap a network whose classifier was removed, recording its feature width (keys: `net.*`)."""

    def __init__(self, net: nn.Module, num_features: int):
        super().__init__()
        self.net = net
        self.num_features = num_features

    def forward(self, x):
        return self.net(x)


class GradingHead(nn.Module):
    """Fully connected layers from image features (+ the condition vector) to `num_outputs` logits.

    The condition vector goes through the hidden layer rather than being added to the logits, so the
    level and side can change how image features are read, not only shift the class prior.
    """

    def __init__(self, num_features: int, num_outputs: int, cond_dim: int = 0, hidden: int = 256,
                 dropout: float = 0.3):
        super().__init__()
        self.cond_dim = cond_dim
        self.layers = nn.Sequential(
            nn.Dropout(dropout),
            nn.Linear(num_features + cond_dim, hidden),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(hidden, num_outputs),
        )

    def forward(self, features: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        if self.cond_dim:
            if cond is None or cond.shape[-1] != self.cond_dim:
                got = None if cond is None else tuple(cond.shape)
                raise ValueError(f"this model needs a condition vector of size {self.cond_dim}, got {got}")
            features = torch.cat([features, cond.to(features.dtype)], dim=1)
        return self.layers(features)


class GradingNet(nn.Module):
    """A registered backbone and a `GradingHead`: `forward(image, cond=None) -> logits`."""

    def __init__(self, backbone: nn.Module, num_outputs: int, cond_dim: int = 0, head_hidden: int = 256,
                 head_dropout: float = 0.3):
        super().__init__()
        self.backbone = backbone
        self.head = GradingHead(backbone.num_features, num_outputs, cond_dim, head_hidden, head_dropout)

    @property
    def cond_dim(self) -> int:
        return self.head.cond_dim

    def forward(self, image: torch.Tensor, cond: torch.Tensor | None = None) -> torch.Tensor:
        return self.head(self.backbone(image), cond)
