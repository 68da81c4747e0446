"""Feature extractors shared by every method: the paper's MLP and a small convolutional net.

A backbone maps images in [0, 1] of shape (B, 1, 28, 28) to features (B, F); the classifier
adds the encoder's last layer (F -> K or 2K) and the decoder (K -> classes). Rescaling to
[-1, 1], as in the authors' demo, happens here, inside the model, so attacks work in [0, 1].
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

BACKBONES: dict[str, Callable[..., "Backbone"]] = {}


def register_backbone(fn):
    """Register a backbone factory under its function name."""
    BACKBONES[fn.__name__] = fn
    return fn


class Dropout(nn.Module):
    """Inverted dropout whose rate is a buffer (a tensor), so a population can give each member its own rate.

    Same semantics as nn.Dropout: active in train(), identity in eval().
    """

    def __init__(self, p: float):
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training:
            return x
        if self.p.dim() == 0 and float(self.p) == 0.0:
            return x
        keep = 1.0 - self.p
        return x * (torch.rand_like(x) < keep) / keep


class Backbone(nn.Module):
    def __init__(self, body: nn.Sequential, feature_dim: int):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2.0 - 1.0)


@register_backbone
def mlp(dropout: float = 0.0, hidden: int = 1024, in_features: int = 784) -> Backbone:
    """The VIB paper's encoder body: 784 -> 1024 -> ReLU -> 1024 -> ReLU (Alemi et al. 2017, Sec. 4.1)."""
    body = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        Dropout(dropout),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        Dropout(dropout),
    )
    return Backbone(body, hidden)


@register_backbone
def conv(dropout: float = 0.0, hidden: int = 1024) -> Backbone:
    """A small CNN: conv5x5(32)-pool-conv5x5(64)-pool-fc(1024), the classic TensorFlow MNIST tutorial net."""
    body = nn.Sequential(
        nn.Conv2d(1, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(64 * 7 * 7, hidden),
        nn.ReLU(),
        Dropout(dropout),
    )
    return Backbone(body, hidden)
