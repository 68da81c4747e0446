"""vibbench: a benchmark suite for Variational Information Bottleneck classifiers.

The public API is loaded on first use (PEP 562), so that `import vibbench` and the command line's
`--help` do not pay for torch before they need it.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_API = {
    "Classifier": "vibbench.models.classifier",
    "ForwardDetails": "vibbench.models.classifier",
    "Method": "vibbench.models.methods",
    "VibbenchError": "vibbench.core.errors",
    "create_model": "vibbench.models.registry",
    "evaluate": "vibbench.runs.evaluate",
    "kl_divergence": "vibbench.models.head",
    "list_models": "vibbench.models.registry",
    "load_model": "vibbench.runs.trained",
    "register_backbone": "vibbench.models.backbones",
    "register_method": "vibbench.models.methods",
    "reparameterize": "vibbench.models.head",
}

__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'vibbench' has no attribute {name!r}")
    value = getattr(importlib.import_module(_API[name]), name)
    globals()[name] = value  # later look-ups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
