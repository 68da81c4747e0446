"""What the evaluation measures: the attack settings and the evaluation config, part of a run's hash."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from vibbench.core.precision import check_attack_precision
from vibbench.core.errors import VibbenchError, check_positive_int, unknown_name_message
from vibbench.data.corruptions import CORRUPTIONS, SEVERITIES
from vibbench.evaluation.attacks.registry import ATTACKS


NORMS = ("linf", "l2")


@dataclass(frozen=True)
class AttackSettings:
    """Everything that decides what the attacks do; saved with the results."""

    attacks: tuple[str, ...] = tuple(ATTACKS)
    linf_eps: tuple[float, ...] = (0.05, 0.1, 0.15, 0.2, 0.25, 0.3, 0.4)
    l2_eps: tuple[float, ...] = (0.5, 1.0, 1.5, 2.0, 3.0, 4.0)
    expensive_eps: tuple[float, ...] = (0.1, 0.3)  # L-inf budgets for the expensive attacks that take a budget
    large_eps: tuple[tuple[str, float], ...] = (("linf", 0.9), ("l2", 20.0))  # sanity check: accuracy ~ chance
    subset: int = 1000  # N test images of the run's evaluation set (a random draw, EvalConfig.subset_seed)
    expensive_subset: int = 1000  # the first N of those for the expensive attacks (and for the worst case over them)
    pgd_steps: int = 40
    eot_iter: int = 10  # forward passes averaged per gradient on the EOT path
    cw_steps: int = 100
    cw_cs: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0)  # CW is run at each c; per example the smallest success counts
    cw_lr: float = 0.1  # Adam step in tanh space; 0.01 with 100 steps leaves most examples unbroken on MNIST
    apgd_steps: int = 100
    fab_steps: int = 100
    square_queries: int = 5000
    judge_draws: int = 5  # independent noise draws of a stochastic model's predictor judging each image (evaluation/judge.py)
    oracle_draws: int = 8  # draws (fixed once per attack) of the oracle Square queries on a stochastic model's EOT path
    square_stop_margin: float = 1.0  # on a stochastic model Square stops on an image once log p(true) < log p(other) - this
    batch_size: int = 500
    early_stop: bool = True  # PGD stops on an image once the judge has it broken under every draw (attacks/early_stop.py)
    precision: str = "fp32"  # the attacks' own forward and backward passes: fp32, bf16 (autocast) or auto (bf16 where
    # native); the judge that scores them, and the paper protocol's own attacks (their bookkeeping is its number), in fp32

    def __post_init__(self):
        check_attack_precision(self.precision)
        if not isinstance(self.early_stop, bool):
            raise VibbenchError(f"early_stop must be true or false, got {self.early_stop!r}")
        for name in self.attacks:
            if name not in ATTACKS:
                raise VibbenchError(unknown_name_message("attack", name, tuple(ATTACKS)))
        for norm, grid in (("linf", self.linf_eps), ("l2", self.l2_eps)):
            for eps in grid:
                check_eps(norm, eps)
        for eps in self.expensive_eps:
            check_eps("linf", eps)
        for norm, eps in self.large_eps:
            check_eps(norm, eps)
        if isinstance(self.square_stop_margin, bool) or not isinstance(self.square_stop_margin, (int, float)) or not 0 <= self.square_stop_margin < 10:
            raise VibbenchError(f"square_stop_margin must be a number in [0, 10) (a log-probability margin), got {self.square_stop_margin!r}")
        if not self.cw_cs or not all(isinstance(c, (int, float)) and c > 0 for c in self.cw_cs):
            raise VibbenchError(f"cw_cs must be positive numbers, got {self.cw_cs!r}")
        for name in ("subset", "expensive_subset", "pgd_steps", "eot_iter", "cw_steps", "apgd_steps", "fab_steps", "square_queries", "judge_draws", "oracle_draws", "batch_size"):
            check_positive_int(f"attack setting {name}", getattr(self, name))

    def grid(self, norm: str) -> tuple[float, ...]:
        return {"linf": self.linf_eps, "l2": self.l2_eps}[check_norm(norm)]

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.precision == "fp32":  # absent, not "fp32": the hashes of runs with fp32 attacks stay as they were
            del d["precision"]
        return d


def check_norm(norm: str) -> str:
    if norm not in NORMS:
        raise VibbenchError(f"no attack for norm {norm!r}: vibbench attacks in {', '.join(NORMS)}")
    return norm


def check_eps(norm: str, eps: float) -> float:
    check_norm(norm)
    if not isinstance(eps, (int, float)) or not math.isfinite(eps) or eps < 0:
        raise VibbenchError(f"eps must be a finite number >= 0, got {eps!r}")
    if norm == "linf" and eps > 1:
        raise VibbenchError(f"L-infinity eps {eps} is outside [0, 1]: budgets are in [0, 1] pixel space (MNIST's standard is 0.3)")
    return float(eps)


def autoattack_label(s: AttackSettings) -> str:
    """Name the ensemble by what ran; "standard" only when it matches the original's settings. Deterministic functions
    (a deterministic model, a stochastic model's mean path) get the standard version, the EOT path the version for
    randomized defenses (attacks/autoattack.py)."""
    original = s.apgd_steps == 100 and s.fab_steps == 100 and s.square_queries == 5000
    detail = f"APGD-CE {s.apgd_steps} steps, APGD-T 9x{s.apgd_steps}, FAB-T 9x{s.fab_steps}, Square {s.square_queries} queries"
    head = f"AutoAttack (standard: {detail})" if original else f"AutoAttack-style ensemble ({detail}; the original runs 100/100/5000)"
    rand = (
        f"on the EOT path the version for randomized defenses: APGD-CE and APGD-DLR, {s.apgd_steps} steps, "
        f"EOT over {s.eot_iter} draws (the original: 100 steps, 20 draws)"
    )
    return (
        f"{head}; {rand}; each part attacks the images the judge still finds robust, and the strongest image found is kept; "
        "its Square part is the Square row's run on the same images"
    )


PAPER_TARGET_RULES = {
    "all": "each of the other classes: every image attacked once toward each class it is not",
    "next": "the next class, (y + 1) mod 10: 0 -> 1, as in the paper's Figure 4",
}
"""How the paper protocol's targeted C&W picks its target classes (see evaluation/paper_protocol.py)."""


@dataclass(frozen=True)
class PaperProtocolSettings:
    """The robustness claim of Alemi et al. (2017, Sec. 4.2) measured as the paper ran it and, on the same images,
    the honest way (evaluation/paper_protocol.py, which says what each choice follows); and the K = 2 embedding."""

    images: int = 1000  # the FIRST N test images (the paper's set), for FGS and the clean column
    fgs_eps: tuple[float, ...] = (0.35, 0.4, 0.45, 0.5)  # L-inf budgets of the paper's untargeted FGS
    cw_images: int = 1000  # the first N of those are attacked by the targeted C&W L2 attack
    cw_targets: str = "all"  # a key of PAPER_TARGET_RULES
    embedding_images: int = 1000  # the first N test images whose K = 2 embedding is recorded

    def __post_init__(self):
        for name in ("images", "cw_images", "embedding_images"):
            check_positive_int(f"paper protocol {name}", getattr(self, name))
        if not self.fgs_eps:
            raise VibbenchError("paper protocol fgs_eps is empty: give at least one L-infinity budget, e.g. (0.35, 0.4, 0.45, 0.5)")
        for eps in self.fgs_eps:
            check_eps("linf", eps)
        if self.cw_targets not in PAPER_TARGET_RULES:
            raise VibbenchError(unknown_name_message("paper protocol cw_targets", self.cw_targets, tuple(PAPER_TARGET_RULES)))

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvalConfig:
    """What the harness measures beyond clean accuracy; part of a run's config and hash."""

    attacks: AttackSettings | None = AttackSettings()  # None: no robustness section
    calibration_bins: int = 15
    ood: bool = True
    corruptions: tuple[str, ...] = tuple(CORRUPTIONS)
    severities: tuple[int, ...] = SEVERITIES
    shift_subset: int = 10_000  # N test images of the run's evaluation set are corrupted
    subset_seed: int = 0  # draws the run's evaluation set (evaluation/subsets.py), one for every model and seed
    paper_protocol: PaperProtocolSettings | None = None  # None: no paper-protocol and embedding sections

    def __post_init__(self):
        for name in self.corruptions:
            if name not in CORRUPTIONS:
                raise VibbenchError(unknown_name_message("corruption", name, tuple(CORRUPTIONS)))
        for s in self.severities:
            if s not in SEVERITIES:
                raise VibbenchError(f"severity {s!r} is not one of {SEVERITIES}")
        check_positive_int("shift_subset", self.shift_subset)
        if isinstance(self.subset_seed, bool) or not isinstance(self.subset_seed, int) or self.subset_seed < 0:
            raise VibbenchError(f"subset_seed must be a whole number >= 0, got {self.subset_seed!r}")
        check_positive_int("calibration_bins", self.calibration_bins)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if self.attacks is not None:
            d["attacks"] = self.attacks.to_dict()
        if self.paper_protocol is None:  # absent, not null: the hashes of runs without it stay as they were
            del d["paper_protocol"]
        return d
