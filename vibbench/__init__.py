"""vibbench: a benchmark suite for Variational Information Bottleneck classifiers."""

from .classifier import Classifier, ForwardDetails
from .errors import VibbenchError
from .head import kl_divergence, reparameterize
from .registry import create_model, list_models

__version__ = "0.1.0"

__all__ = [
    "Classifier",
    "ForwardDetails",
    "VibbenchError",
    "create_model",
    "kl_divergence",
    "list_models",
    "reparameterize",
]
