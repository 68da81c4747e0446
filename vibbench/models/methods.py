"""The training methods of the paper's MNIST table, as data.

Every method is the same network trained with a different loss or regularizer; a method is
a frozen record of its hyperparameters, so that one loss function (`vibbench.training.losses`) covers
them all and a population of members can carry them as tensors.

Hyperparameters and their sources:
- deterministic: z = mu, plain cross-entropy (Alemi et al. 2017, baseline).
- dropout: rate 0.5 on the hidden layers (Srivastava et al., JMLR 2014, Sec. 6.1.1: p = 0.5 for
  hidden units of MNIST MLPs; the VIB paper's dropout baseline does not state its rate).
- label_smoothing: epsilon = 0.1 (Szegedy et al., CVPR 2016, the value Pereyra et al. 2017
  and Mueller et al. 2019 use as the standard setting).
- confidence_penalty: weight 0.1 on -H(p(y|x)) (Pereyra et al., ICLR 2017 workshop; they
  grid-search {0.1, 0.3, 0.5, 1, 2, 4, 8} and do not publish the MNIST pick; we take the
  grid's smallest value, which keeps the penalty a mild regularizer as in their figures).
- vib: beta = 1e-3, the paper's headline MNIST setting (Alemi et al. 2017, Table 1).

`register_method` adds a method of your own: a new combination of these regularizers under a new name
(a new loss term needs a change in `vibbench.training.losses`); every backbone gets it as `<backbone>_<method>`.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass

from vibbench.core.errors import VibbenchError, check_real


@dataclass(frozen=True)
class Method:
    """A training method: which regularizer, at what strength, and whether z is sampled at test time."""

    name: str
    stochastic: bool = False  # samples z at evaluation (VIB); the harness attacks such models with EOT
    beta: float = 0.0  # weight of KL(q(z|x) || N(0, I)), nats
    dropout: float = 0.0  # drop probability on hidden layers, training only
    label_smoothing: float = 0.0  # epsilon of the smoothed target (1 - eps) * onehot + eps / C
    confidence_penalty: float = 0.0  # weight of -H(p(y|x)), nats

    def __post_init__(self):
        # finite numbers only (no inf, NaN, bool or str): "beta must be >= 0 and finite, got inf (method 'vib')"
        for field, (low, high) in HYPERPARAMETER_RANGES.items():
            check_real(field, getattr(self, field), low=low, high=high, where=f" (method {self.name!r})")
        if self.beta > 0.0 and not self.stochastic:
            raise VibbenchError(f"beta only applies to VIB models; method {self.name!r} has no KL term")

    def with_overrides(self, **overrides) -> "Method":
        return dataclasses.replace(self, **overrides)

    @property
    def hyperparameters(self) -> dict[str, float]:
        return {f: getattr(self, f) for f in HYPERPARAMETERS}


HYPERPARAMETERS = ("beta", "dropout", "label_smoothing", "confidence_penalty")

HYPERPARAMETER_RANGES = {"beta": (0.0, None), "dropout": (0.0, 1.0), "label_smoothing": (0.0, 1.0), "confidence_penalty": (0.0, None)}
"""The valid values of each hyperparameter: (low, high), low <= value < high; high None: any finite value >= low."""

METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("deterministic"),
        Method("dropout", dropout=0.5),
        Method("label_smoothing", label_smoothing=0.1),
        Method("confidence_penalty", confidence_penalty=0.1),
        Method("vib", stochastic=True, beta=1e-3),
    )
}

BUILTIN_METHODS = frozenset(METHODS)
"""vibbench's own methods; the others come from plugins."""

METHOD_NAME = re.compile(r"[a-z][a-z0-9]*(_[a-z0-9]+)*")
"""Lowercase words joined by single underscores (a model is named `<backbone>_<method>`)."""


def register_method(method: Method | str, **fields) -> Method:
    """Register a method under its name; every backbone then has it as `<backbone>_<method>`. Returns the Method.

        register_method(Method("vib_smooth", stochastic=True, beta=1e-3, label_smoothing=0.1))
        register_method("vib_smooth", stochastic=True, beta=1e-3, label_smoothing=0.1)   # the same

    Its hyperparameters (beta, dropout, label_smoothing, confidence_penalty) are its defaults, and `create_model`
    overrides them as for the built-in methods. A name already registered is refused."""
    if isinstance(method, str):
        known = [f.name for f in dataclasses.fields(Method) if f.name != "name"]
        unknown = sorted(set(fields) - set(known))
        if unknown:
            raise VibbenchError(f"register_method({method!r}): unknown field(s) {', '.join(unknown)}; a method has {', '.join(known)}")
        method = Method(method, **fields)
    elif fields:
        raise VibbenchError("register_method: give a Method, or a name and its fields, not both")
    if not isinstance(method, Method):
        raise VibbenchError(f"register_method takes a vibbench Method or a name, got {method!r}")
    if not isinstance(method.name, str) or not METHOD_NAME.fullmatch(method.name):
        raise VibbenchError(
            f"method name {method.name!r} refused: use lowercase words of letters and digits joined by single underscores, "
            "starting with a letter (models are named <backbone>_<method>)"
        )
    if method.name in METHODS:
        if METHODS[method.name] == method:
            return METHODS[method.name]  # the same method again: nothing changes
        raise VibbenchError(f"method {method.name!r} is already registered ({METHODS[method.name]}); choose another name")
    METHODS[method.name] = method
    return method
