"""The model registry: every backbone crossed with every method, named `<backbone>_<method>`.

    >>> import vibbench
    >>> vibbench.list_models("mlp_*")
    ['mlp_confidence_penalty', 'mlp_deterministic', 'mlp_dropout', 'mlp_label_smoothing', 'mlp_vib']
    >>> model = vibbench.create_model("mlp_vib", beta=1e-2)
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import fnmatch

from vibbench.models.backbones import BACKBONES
from vibbench.core.errors import VibbenchError, check_positive_int, check_real, unknown_name_message
from vibbench.models.methods import HYPERPARAMETER_RANGES, HYPERPARAMETERS, METHODS, Method

if TYPE_CHECKING:
    from vibbench.models.classifier import Classifier

ARCHITECTURE_OPTIONS = ("num_classes", "latent_dim", "eval_samples", "train_samples")


def _split_name(name: str) -> tuple[str, str] | None:
    for backbone in BACKBONES:
        prefix = backbone + "_"
        if name.startswith(prefix) and name[len(prefix) :] in METHODS:
            return backbone, name[len(prefix) :]
    return None


def list_models(pattern: str | list[str] | tuple[str, ...] | None = None) -> list[str]:
    """Registered model names, sorted; `pattern` is one or more shell-style patterns (fnmatch)."""
    names = sorted(f"{b}_{m}" for b in BACKBONES for m in METHODS)
    if pattern is None:
        return names
    patterns = [pattern] if isinstance(pattern, str) else list(pattern)
    return [n for n in names if any(fnmatch.fnmatchcase(n, p) for p in patterns)]


def create_model(name: str, **overrides) -> Classifier:
    """Build a registered model. Overrides that are None are dropped, so CLI defaults never
    override model defaults. Method overrides: beta, dropout, label_smoothing, confidence_penalty;
    architecture overrides: num_classes, latent_dim, eval_samples, train_samples."""
    from vibbench.models.classifier import Classifier  # torch: only when a network is built

    backbone_name, method, arch = check_model(name, **overrides)
    backbone = BACKBONES[backbone_name](dropout=method.dropout)
    return Classifier(backbone, method, name=name, backbone_name=backbone_name, **arch)


def check_model(name: str, **overrides) -> tuple[str, Method, dict]:
    """Validate a model name and its overrides without building the network: (backbone name, method, architecture options).

    Each refusal is one VibbenchError naming the option, the value and the valid values: beta and confidence_penalty
    finite and >= 0; dropout and label_smoothing in [0, 1); num_classes an integer >= 2; latent_dim, eval_samples and
    train_samples positive integers (booleans and strings are not numbers); an unknown option with the closest names."""
    parts = _split_name(name)
    if parts is None:
        raise VibbenchError(unknown_name_message("model", name, list_models()) + " (see `vibbench list`)")
    backbone_name, method_name = parts
    overrides = {k: v for k, v in overrides.items() if v is not None}
    unknown = sorted(set(overrides) - set(HYPERPARAMETERS) - set(ARCHITECTURE_OPTIONS))
    if unknown:
        known = HYPERPARAMETERS + ARCHITECTURE_OPTIONS
        raise VibbenchError(" ".join(unknown_name_message(f"option for model {name!r}", opt, known) for opt in unknown))
    for option, value in overrides.items():
        if option in HYPERPARAMETER_RANGES:
            low, high = HYPERPARAMETER_RANGES[option]
            check_real(option, value, low=low, high=high, where=f" (model {name!r})")
            if type(value) not in (int, float):
                overrides[option] = float(value)  # a numpy scalar: a plain float in the method, config.json and hashes
        elif option == "num_classes":
            if isinstance(value, bool) or not isinstance(value, int) or value < 2:
                raise VibbenchError(f"num_classes must be an integer >= 2, got {value!r} (model {name!r})")
        else:
            check_positive_int(option, value)
    method = METHODS[method_name].with_overrides(**{k: v for k, v in overrides.items() if k in HYPERPARAMETERS})
    return backbone_name, method, {k: v for k, v in overrides.items() if k in ARCHITECTURE_OPTIONS}
