"""Feature extractors shared by every method: the paper's MLP and a small convolutional net.

A backbone maps images in [0, 1] of shape (B, 1, 28, 28) to features (B, F); the classifier
adds the encoder's last layer (F -> K or 2K) and the decoder (K -> classes). Rescaling to
[-1, 1], as in the authors' demo, happens here, inside the model, so attacks work in [0, 1].
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable

if TYPE_CHECKING:
    from vibbench.models.layers import Backbone

BACKBONES: dict[str, Callable[..., Backbone]] = {}
"""Backbone factories by name. torch is imported inside the factories, so that the registry's names
(`vibbench list`, `--help`) are known without loading torch."""


def register_backbone(fn):
    """Register a backbone factory under its function name."""
    BACKBONES[fn.__name__] = fn
    return fn


@register_backbone
def mlp(dropout: float = 0.0, hidden: int = 1024, in_features: int = 784) -> Backbone:
    """The VIB paper's encoder body: 784 -> 1024 -> ReLU -> 1024 -> ReLU (Alemi et al. 2017, Sec. 4.1)."""
    from torch import nn

    from vibbench.models.layers import Backbone, Dropout

    body = nn.Sequential(
        nn.Flatten(),
        nn.Linear(in_features, hidden),
        nn.ReLU(),
        Dropout(dropout, hidden),
        nn.Linear(hidden, hidden),
        nn.ReLU(),
        Dropout(dropout, hidden),
    )
    return Backbone(body, hidden)


@register_backbone
def conv(dropout: float = 0.0, hidden: int = 1024) -> Backbone:
    """A small CNN: conv5x5(32)-pool-conv5x5(64)-pool-fc(1024), the classic TensorFlow MNIST tutorial net."""
    from torch import nn

    from vibbench.models.layers import Backbone, Dropout

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
        Dropout(dropout, hidden),
    )
    return Backbone(body, hidden)
