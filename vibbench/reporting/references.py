"""Published reference numbers for the paper's Table 1, and when a run may be set beside them.

Pure data and small functions (the standard library only): `REFERENCES` holds the published MNIST test errors,
`comparability(config)` lists why a run's config.json does not follow the protocol the numbers were measured
under (empty: it does), and `references_for(model)` picks the entries that apply to one model of the run.
The report's section that uses them is `vibbench/reporting/published.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

MNIST_TEST_SIZE = 10_000
"""The MNIST test split; the number of examples behind a clean test error when metrics.csv gives no n."""

ARCHITECTURE = "784-1024-1024 MLP, K = 256"
"""The paper's encoder (two hidden layers of 1024) and bottleneck size, the `mlp` backbone with latent_dim 256."""

PROTOCOL = {
    "dataset": "mnist",
    "epochs": 200,
    "batch_size": 100,
    "lr": 1e-4,
    "adam_betas": (0.5, 0.999),
    "lr_decay": 0.97,
    "lr_decay_every": 2,
}
"""The training protocol of Alemi et al. (2017) as config.json's `train` records it; a run is comparable only
with every one of these, on the full training and test splits (max_train_examples and max_eval_examples null)."""

PROTOCOL_TEXT = "MNIST, 200 epochs, batch 100, Adam lr 1e-4 (betas 0.5, 0.999) decayed x0.97 every 2 epochs, " + ARCHITECTURE
"""The protocol in words, for the report."""

VIB_BETA = 1e-3
"""The only beta the published VIB numbers are for."""

VIB_EVAL_SAMPLES = 12
"""The published VIB numbers average the softmax over 12 draws of z."""


@dataclass(frozen=True)
class Reference:
    """One published number: the test error in percent of one method on one dataset and architecture."""

    method: str  # the registry model it corresponds to, e.g. "mlp_vib"
    value: float  # test error in percent
    source: str  # a short citation
    notes: str  # the protocol behind the number, as far as the source states it
    dataset: str = "mnist"
    architecture: str = ARCHITECTURE
    metric: str = "test error"
    beta: float | None = None  # VIB only: the beta the number is for

    @property
    def label(self) -> str:
        return self.method + (f" (beta = {self.beta:g})" if self.beta is not None else "")


ALEMI_TABLE1 = "Alemi et al. 2017, Table 1"
PEREYRA_VIA_ALEMI = "Pereyra et al. 2017, as quoted in Alemi et al. 2017, Table 1"
VIB_DEMO = "Alemi et al., vib_demo notebook"
ALEMI_NOTES = "the paper's own runs under its protocol (200 epochs, batch 100), one number per method"
PEREYRA_NOTES = "Pereyra et al.'s own training setup, not the paper's protocol"
VIB_DEMO_NOTES = "the authors' notebook: about 1.21%, with EMA weights and the softmax averaged over 12 draws of z (beta = 1e-3)"

REFERENCES: tuple[Reference, ...] = (
    Reference("mlp_deterministic", 1.38, ALEMI_TABLE1, ALEMI_NOTES),
    Reference("mlp_dropout", 1.34, ALEMI_TABLE1, ALEMI_NOTES),
    Reference("mlp_label_smoothing", 1.40, ALEMI_TABLE1, ALEMI_NOTES),
    Reference("mlp_label_smoothing", 1.23, PEREYRA_VIA_ALEMI, PEREYRA_NOTES),
    Reference("mlp_confidence_penalty", 1.36, ALEMI_TABLE1, ALEMI_NOTES),
    Reference("mlp_confidence_penalty", 1.17, PEREYRA_VIA_ALEMI, PEREYRA_NOTES),
    Reference("mlp_vib", 1.13, ALEMI_TABLE1, ALEMI_NOTES, beta=VIB_BETA),
    Reference("mlp_vib", 1.21, VIB_DEMO, VIB_DEMO_NOTES, beta=VIB_BETA),
)
"""The published MNIST test errors (%), in the order of the paper's Table 1 (Alemi et al.'s own runs first)."""

K2_REFERENCE = Reference(
    "mlp_vib",
    3.18,
    "Alemi et al. 2017, Fig. 2(a)",
    "the paper's VIB with a two-dimensional bottleneck under its protocol; as we read the caption, the test error "
    "with one draw of z (the text could not be re-checked when this was entered)",
    architecture="784-1024-1024 MLP, K = 2",
    metric="test error, one draw of z",
    beta=VIB_BETA,
)
"""The published error of the K = 2 embedding model (report section "Two-dimensional embedding"), not part of Table 1."""


def _close(a, b) -> bool:
    try:
        return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=0.0)
    except (TypeError, ValueError):
        return False


def _same(recorded, wanted) -> bool:
    if isinstance(wanted, tuple):
        return isinstance(recorded, (list, tuple)) and len(recorded) == len(wanted) and all(map(_close, recorded, wanted))
    if isinstance(wanted, str):
        return recorded == wanted
    return not isinstance(recorded, bool) and _close(recorded, wanted)


def _show(value) -> str:
    if isinstance(value, (list, tuple)):
        return "(" + ", ".join(map(_show, value)) + ")"
    return f"{value:g}" if isinstance(value, float) else str(value)


def comparability(config: dict, datasets: list[str] | None = None) -> list[str]:
    """Why the run of `config` (config.json as a dict) is not comparable with the published numbers, one short
    reason each ("trained 10 epochs, the paper 200"); empty when its training follows the paper's protocol.
    `datasets` are the datasets of the rows being reported (metrics.csv's dataset column), checked as well.
    Which of its models a number applies to is `references_for`'s question."""
    train = config.get("train") if isinstance(config, dict) else None
    if not isinstance(train, dict):
        return ["config.json is missing or records no training settings, so the run's protocol is unknown"]
    reasons = []
    for key, wanted in PROTOCOL.items():
        if key not in train or train[key] is None:
            reasons.append(f"config.json does not record {key}")
        elif not _same(train[key], wanted):
            got, paper = _show(train[key]), _show(wanted)
            reasons.append(f"trained {got} epochs, the paper {paper}" if key == "epochs" else f"{key} {got}, the paper's {paper}")
    for key, what in (("max_train_examples", "training"), ("max_eval_examples", "test")):
        if train.get(key) is not None:
            reasons.append(f"only the first {train[key]} {what} images ({key}), not the full split")
    for dataset in datasets or []:
        if dataset and dataset != PROTOCOL["dataset"] and dataset != train.get("dataset"):
            reasons.append(f"its rows are on {dataset}, the published numbers on {PROTOCOL['dataset']}")
    return reasons


def matches(config: dict, datasets: list[str] | None = None) -> bool:
    """Whether the run of `config` follows the protocol of the published numbers (see `comparability`)."""
    return not comparability(config, datasets)


def references_for(model: dict) -> list[Reference]:
    """The published numbers that apply to one model of config.json's `models` list (a dict with name, backbone,
    latent_dim, beta, eval_samples, ...): its registry name on the mlp backbone with K = 256, and for VIB only at
    beta = 1e-3 with the softmax averaged over 12 draws. Empty when a field is missing: never a guess."""
    if not isinstance(model, dict) or model.get("backbone") != "mlp" or not _same(model.get("latent_dim"), 256):
        return []
    found = [r for r in REFERENCES if r.method == model.get("name")]
    vib_ok = _same(model.get("beta"), VIB_BETA) and _same(model.get("eval_samples"), VIB_EVAL_SAMPLES)
    return [r for r in found if r.beta is None or vib_ok]


__all__ = [
    "ARCHITECTURE",
    "K2_REFERENCE",
    "MNIST_TEST_SIZE",
    "PROTOCOL",
    "REFERENCES",
    "Reference",
    "comparability",
    "matches",
    "references_for",
]
