"""Feature extractors shared by every method: the paper's MLP and a small convolutional net, and your own.

A backbone maps images in [0, 1] of shape (B, 1, 28, 28) to features (B, F); the classifier
adds the encoder's last layer (F -> K or 2K) and the decoder (K -> classes). Rescaling to
[-1, 1], as in the authors' demo, happens here, inside the model, so attacks work in [0, 1].

A backbone is a factory registered under a name (`register_backbone`); every method is combined with it
as `<backbone>_<method>`. The factory takes `dropout` (the method's rate, 0 for most methods) and returns a
module with an integer `feature_dim`, such as `vibbench.models.layers.Backbone(body, feature_dim)`. Dropout must
be `vibbench.models.layers.Dropout`, whose noise the trainers draw from each model's own generator; torch's
dropout draws from the global random state, so such a backbone is refused when it is built.
"""

from __future__ import annotations

import hashlib
import inspect
import re
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from vibbench.core.errors import VibbenchError

if TYPE_CHECKING:
    from vibbench.models.layers import Backbone

BACKBONES: dict[str, Callable[..., Backbone]] = {}
"""Backbone factories by name, each wrapped so that what it builds is checked (`_checked`). torch is imported
inside the factories, so that the registry's names (`vibbench list`, `--help`) are known without loading torch."""

FACTORIES: dict[str, Callable[..., Backbone]] = {}
"""The factories as registered (unwrapped), by name."""

CODES: dict[str, str] = {}
"""SHA-256 of the source file of each backbone registered from outside vibbench (a plugin), read when it was
registered (`backbone_code`)."""

BACKBONE_NAME = re.compile(r"[a-z][a-z0-9]*")
"""One word: a model is named `<backbone>_<method>` and method names may hold underscores, so a backbone's may not
(then every model name splits in exactly one way)."""


def register_backbone(name_or_factory=None, *, name: str | None = None):
    """Register a backbone factory; every method is then available on it as `<name>_<method>`.

        @register_backbone                 # under the function's name
        def mlp(dropout=0.0): ...

        @register_backbone("tiny")         # under a name of your choice
        def make_tiny(dropout=0.0): ...

    The name is one word of lowercase letters and digits, not yet registered; the factory takes `dropout`.
    Returns the factory unchanged."""
    if callable(name_or_factory):
        return _register(name or name_or_factory.__name__, name_or_factory)
    if name_or_factory is not None and name is not None:
        raise VibbenchError("register_backbone: give the name once, positionally or as name=")
    chosen = name_or_factory if name_or_factory is not None else name
    if chosen is not None and not isinstance(chosen, str):
        raise VibbenchError(f"register_backbone takes a name (a string) or a factory, got {chosen!r}")
    return lambda factory: _register(chosen if chosen is not None else factory.__name__, factory)


def _register(name: str, factory):
    if not callable(factory):
        raise VibbenchError(f"backbone {name!r}: register a factory function, not {factory!r}")
    if not isinstance(name, str) or not BACKBONE_NAME.fullmatch(name):
        raise VibbenchError(
            f"backbone name {name!r} refused: use one word of lowercase letters and digits, starting with a letter "
            "(models are named <backbone>_<method>, and method names hold underscores)"
        )
    if name in FACTORIES:
        if FACTORIES[name] is factory:
            return factory  # the same function again: nothing changes
        raise VibbenchError(
            f"backbone {name!r} is already registered (by {_origin(FACTORIES[name])}); choose another name for {_origin(factory)}"
        )
    try:
        params = inspect.signature(factory).parameters.values()
    except (TypeError, ValueError):
        params = None  # a builtin or C function: checked when it is called
    if params is not None and not any(p.name == "dropout" or p.kind is p.VAR_KEYWORD for p in params):
        raise VibbenchError(
            f"backbone factory {_origin(factory)} must take dropout= (the method's dropout rate, 0 for most methods; "
            "give it to vibbench.models.layers.Dropout)"
        )
    if (getattr(factory, "__module__", "") or "").split(".")[0] != "vibbench":
        CODES[name] = _source_digest(factory)
    FACTORIES[name] = factory
    BACKBONES[name] = _checked(name, factory)
    return factory


def _origin(factory) -> str:
    return f"{getattr(factory, '__module__', None) or '?'}.{getattr(factory, '__qualname__', repr(factory))}"


def _checked(name: str, factory):
    """`factory` whose result is checked: a torch module with an integer feature_dim and no torch dropout."""

    def build(**kwargs):
        backbone = factory(**kwargs)
        check_backbone(name, backbone)
        return backbone

    build.__name__ = build.__qualname__ = name
    build.__doc__ = factory.__doc__
    return build


def check_backbone(name: str, backbone) -> None:
    """Refuse what the classifier and the trainers cannot use: not a module, no `feature_dim`, torch's own dropout."""
    from torch import nn

    if not isinstance(backbone, nn.Module):
        raise VibbenchError(f"backbone {name!r} built {type(backbone).__name__}, not a torch module (nn.Module)")
    dim = getattr(backbone, "feature_dim", None)
    if isinstance(dim, bool) or not isinstance(dim, int) or dim < 1:
        raise VibbenchError(
            f"backbone {name!r} has no positive integer feature_dim (got {dim!r}): the width of its output features, "
            "e.g. vibbench.models.layers.Backbone(body, feature_dim)"
        )
    torch_kinds = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout, nn.FeatureAlphaDropout)
    torch_dropout = sorted({type(m).__name__ for m in backbone.modules() if isinstance(m, torch_kinds)})
    if torch_dropout:
        raise VibbenchError(
            f"backbone {name!r} uses torch's {', '.join(torch_dropout)}, which draws from the global random state: use "
            "vibbench.models.layers.Dropout(p, features), whose noise the trainers draw from the model's own generator "
            "(the same masks alone or in a population, on every rerun)"
        )


def backbone_code(name: str) -> str | None:
    """SHA-256 of the source file that defines the backbone `name` as it was when registered, for a backbone from
    outside vibbench (a plugin); None for vibbench's own. It is part of the model's identity (its jobs' hashes), so
    an edited plugin is trained again instead of served from the cache."""
    return CODES.get(name)


def _source_digest(factory) -> str:
    """SHA-256 of the file that defines `factory` (of the function's source where it has no file, as in a notebook)."""
    try:
        source = inspect.getsourcefile(factory)
        data = Path(source).read_bytes() if source and Path(source).is_file() else inspect.getsource(factory).encode()
    except (OSError, TypeError):
        data = f"{_origin(factory)} (source unavailable)".encode()
    return hashlib.sha256(data).hexdigest()


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
