"""The layers backbones are built from: the backbone module and a dropout whose rate is a tensor."""

from __future__ import annotations

import torch
from torch import nn


class Dropout(nn.Module):
    """Inverted dropout whose rate is a buffer (a tensor), so a population can give each member its own rate.

    Same semantics as nn.Dropout: active in train(), identity in eval(). `max_rate` is a plain
    float, the largest rate in use (the population trainer sets it to the members' maximum): when
    it is 0 the layer is skipped without drawing random numbers, and without reading the buffer,
    which would be data-dependent control flow under vmap. The trainers supply the uniform noise
    through the `noise` buffer (shape (B, features)) from a per-model generator, so that a model
    draws the same masks alone or in a population; without it the layer draws from torch's RNG.
    """

    def __init__(self, p: float, features: int):
        super().__init__()
        self.register_buffer("p", torch.tensor(float(p)), persistent=False)
        self.register_buffer("noise", torch.empty(0), persistent=False)
        self.max_rate = float(p)
        self.features = features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.max_rate == 0.0:
            return x
        keep = 1.0 - self.p
        u = self.noise if self.noise.numel() else torch.rand_like(x)
        return x * (u < keep) / keep


class Backbone(nn.Module):
    def __init__(self, body: nn.Sequential, feature_dim: int):
        super().__init__()
        self.body = body
        self.feature_dim = feature_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x * 2.0 - 1.0)
