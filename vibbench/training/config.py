"""The training configuration: the paper's protocol as one frozen object shared by every model of a run."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from vibbench.core.errors import VibbenchError, check_positive_int, unknown_name_message
from vibbench.data.datasets import DATASETS
from vibbench.core.precision import check_precision


def _is_number(value) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


@dataclass(frozen=True)
class TrainConfig:
    """The paper's protocol (Alemi et al. 2017; the authors' vib_demo), one object for all models."""

    dataset: str = "mnist"
    epochs: int = 200
    batch_size: int = 100  # examples per step
    lr: float = 1e-4  # Adam learning rate at epoch 0
    adam_betas: tuple[float, float] = (0.5, 0.999)
    lr_decay: float = 0.97  # multiplied into the lr ...
    lr_decay_every: int = 2  # ... every this many epochs (staircase)
    ema_decay: float = 0.999  # Polyak averaging of the weights used for evaluation
    train_samples: int = 1  # draws of z per training step
    eval_samples: int = 12  # draws of z averaged by the stochastic predictor
    max_train_examples: int | None = None  # first N training images only (smoke tests)
    max_eval_examples: int | None = None  # first N validation / test images only
    eval_batch_size: int = 1000  # chunk size for evaluation; bounds memory, not results
    precision: str = "fp32"  # training only: "bf16" autocasts matrix products (the attacks: AttackSettings.precision)

    def __post_init__(self):
        check_precision(self.precision)

        if self.dataset not in DATASETS:
            raise VibbenchError(unknown_name_message("dataset", self.dataset, DATASETS))
        for name in ("epochs", "batch_size", "lr_decay_every", "train_samples", "eval_samples", "eval_batch_size"):
            check_positive_int(name, getattr(self, name))
        for name in ("max_train_examples", "max_eval_examples"):
            check_positive_int(name, getattr(self, name), allow_none=True)
        ranges = {"lr": (lambda v: 0 < v < 1, "(0, 1)"), "lr_decay": (lambda v: 0 < v <= 1, "(0, 1]"), "ema_decay": (lambda v: 0 <= v < 1, "[0, 1)")}
        for name, (ok, allowed) in ranges.items():
            value = getattr(self, name)
            if not (_is_number(value) and ok(value)):
                raise VibbenchError(f"{name} must be a number in {allowed}, got {value!r}")
            object.__setattr__(self, name, float(value))  # 1 and 1.0 are one config (and one hash)
        betas = tuple(self.adam_betas) if isinstance(self.adam_betas, tuple | list) else ()
        if len(betas) != 2 or not all(_is_number(b) and 0 <= b < 1 for b in betas):
            raise VibbenchError(f"adam_betas must be two numbers in [0, 1), got {self.adam_betas!r}")
        object.__setattr__(self, "adam_betas", (float(betas[0]), float(betas[1])))

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["precision"] == "fp32":  # added later: at its default it leaves existing job hashes as they were
            del d["precision"]
        return d
