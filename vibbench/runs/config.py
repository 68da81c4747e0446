"""The frozen configuration of a run: one training config shared by every model, and profiles.

Identical settings are structural: a run holds ONE `TrainConfig`; every model of a seed is
trained with it and sees the same batches in the same order. The hash of a config names the
run and every cached job, so changing any field retrains exactly what it affects.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

from vibbench.data.datasets import class_count
from vibbench.evaluation.settings import AttackSettings, EvalConfig, PaperProtocolSettings
from vibbench.training.config import TrainConfig
from vibbench.core.errors import VibbenchError, unknown_name_message
from vibbench.core.precision import attack_precision as resolve_attack_precision, check_attack_precision
from vibbench.core.hashing import stable_hash
from vibbench.core.progress import log
from vibbench.models.backbones import backbone_code
from vibbench.models.plugins import load_plugins
from vibbench.models.registry import ARCHITECTURE_OPTIONS, check_model, create_model, list_models
from vibbench.models.methods import HYPERPARAMETERS

CACHE_FORMAT = 3
"""Bumped whenever training or evaluation changes meaning, so old cache entries are not reused.
2: per-model noise generators; 3: fused Adam (same update rule, different rounding)."""

DEVICES = ("auto", "cpu", "cuda")

MAX_SEEDS = 1000
"""Seeds run as 0..N-1; more than this is a typo, not a study (and would be materialized as a tuple)."""


@dataclass(frozen=True)
class ModelSpec:
    """A registry name plus overrides, e.g. mlp_vib with beta=1e-2. Text form: `mlp_vib:beta=1e-2`."""

    name: str
    overrides: tuple[tuple[str, float], ...] = ()

    @property
    def label(self) -> str:
        if not self.overrides:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v:g}" for k, v in self.overrides)

    @property
    def text(self) -> str:
        """The exact form `parse_model_specs` reads back (floats by repr, so nothing is rounded)."""
        if not self.overrides:
            return self.name
        return self.name + ":" + ",".join(f"{k}={v!r}" for k, v in self.overrides)

    def build(self):
        return create_model(self.name, **dict(self.overrides))

    def resolved(self) -> dict:
        """Everything that determines the model: the method's hyperparameters and the architecture; for a backbone
        of a plugin also the SHA-256 of the file that defines it (`backbone_code`), so an edited plugin retrains."""
        return dict(_resolve(self))


@functools.cache
def _resolve(spec: ModelSpec) -> tuple:
    model = spec.build()
    code = backbone_code(model.backbone_name)
    return tuple(
        {
            "name": spec.name,
            "method": model.method.name,
            "backbone": model.backbone_name,
            **model.method.hyperparameters,
            **{k: getattr(model, k) for k in ARCHITECTURE_OPTIONS},
            **({"backbone_code": code} if code is not None else {}),  # vibbench's own backbones: as before
        }.items()
    )


MODEL_OPTIONS = HYPERPARAMETERS + ("latent_dim", "num_classes")
"""What `NAME:key=value` may set: create_model's options but eval_samples and train_samples, which are the run's
(one TrainConfig for every model: set them under [train] in a --config file)."""

RUN_LEVEL_OPTIONS = ("eval_samples", "train_samples")


def _option_value(key: str, text: str, entry: str) -> float | int:
    """The value of `key=text` in `entry`: a float for a hyperparameter, a whole number for latent_dim and
    num_classes; text that is no such number, or a number a float cannot hold (1e-400 would be 0, 1e400 inf), is refused."""
    import decimal

    where = f"for {key} in {entry!r}"
    if key in HYPERPARAMETERS:
        try:
            value = float(text)
        except ValueError:
            raise VibbenchError(f"bad value {text!r} {where}: expected a number") from None
        try:
            underflow = value == 0.0 and decimal.Decimal(text.strip().replace("_", "")) != 0
        except decimal.InvalidOperation:
            underflow = False
        if underflow:
            raise VibbenchError(f"bad value {text!r} {where}: a float cannot hold it (it would be 0); write 0, or a value of at least 1e-308")
        if abs(value) == float("inf") and text.strip().lstrip("+-").lower() not in ("inf", "infinity"):
            raise VibbenchError(f"bad value {text!r} {where}: a float cannot hold it (it would be inf)")
        return value
    try:
        return int(text)
    except ValueError:
        raise VibbenchError(f"bad value {text!r} {where}: expected a whole number") from None


def parse_model_specs(patterns: list[str] | tuple[str, ...]) -> tuple[ModelSpec, ...]:
    """Expand `PATTERN[:key=value,...]` entries into model specs, in order, each model once: an entry that names a
    model already given (another spelling of the same model, or a pattern matching it again) is dropped with a note
    in the log. Keys: `MODEL_OPTIONS`; every value is checked as create_model checks it."""
    specs: list[ModelSpec] = []
    seen: dict[tuple, ModelSpec] = {}
    for entry in patterns:
        pattern, _, opts = entry.partition(":")
        names = list_models(pattern)
        if not names:
            raise VibbenchError(
                unknown_name_message("model or pattern", pattern, list_models())
                + " (see `vibbench list`; models of your own backbones or methods need --plugin MODULE)"
            )
        overrides = {}
        for item in filter(None, opts.split(",")):
            key, eq, value = item.partition("=")
            key = key.strip()
            if key in RUN_LEVEL_OPTIONS:
                raise VibbenchError(
                    f"{key} in {entry!r} is a setting of the whole run, not of one model: set it under [train] in a --config file"
                )
            if not eq or key not in MODEL_OPTIONS:
                raise VibbenchError(
                    f"bad model option {item!r} in {entry!r}: write NAME:key=value with key one of {', '.join(MODEL_OPTIONS)}"
                )
            if key in overrides:
                raise VibbenchError(f"{key} is given twice in {entry!r}")
            overrides[key] = _option_value(key, value, entry)
        for name in names:
            spec = ModelSpec(name, tuple(sorted(overrides.items())))
            check_model(name, **dict(spec.overrides))  # e.g. beta < 0, beta on a non-VIB model, latent_dim=0
            same = _resolve(spec)  # what it builds: mlp_vib and mlp_vib:beta=1e-3 are one model
            if same in seen:
                log(f"note: {spec.text} is {seen[same].text} again (the same model): it runs once")
                continue
            seen[same] = spec
            specs.append(spec)
    return tuple(specs)


PAPER_BETAS = (1e-10, 1e-8, 1e-6, 1e-4, 1e-2, 1e-1, 1.0)
"""The paper's beta grid (Alemi et al. 2017, Fig. 1) besides the registry's default 1e-3."""


def beta_sweep(betas) -> tuple[str, ...]:
    return tuple(f"mlp_vib:beta={b:g}" for b in betas)


EMBEDDING_MODEL = "mlp_vib:latent_dim=2"
"""The paper's two-dimensional embedding (Alemi et al. 2017, Fig. 2): VIB at the registry's beta 1e-3 with K = 2."""


@dataclass(frozen=True)
class Profile:
    train: TrainConfig
    models: tuple[str, ...]
    seeds: int
    description: str
    eval: EvalConfig | None = None


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        TrainConfig(epochs=1, max_train_examples=1000, max_eval_examples=500, eval_batch_size=500),
        ("mlp_*",),
        1,
        "seconds: 1 epoch on 1000 images, tiny attack budgets, for tests",
        EvalConfig(
            attacks=AttackSettings(
                linf_eps=(0.1, 0.3),
                l2_eps=(1.0, 2.0),
                expensive_eps=(0.3,),
                subset=30,
                expensive_subset=10,
                pgd_steps=5,
                eot_iter=2,
                cw_steps=10,
                apgd_steps=5,
                fab_steps=5,
                square_queries=20,
                batch_size=50,
            ),
            severities=(1, 5),
            shift_subset=100,
        ),
    ),
    "quick": Profile(
        TrainConfig(epochs=10),
        ("mlp_*",) + beta_sweep((1e-6, 1e-4, 1e-2, 1e-1)) + (EMBEDDING_MODEL,),
        1,
        "the default: all MNIST-MLP methods and a short beta sweep, 10 epochs on the full training split, 1 seed",
        EvalConfig(
            attacks=AttackSettings(
                linf_eps=(0.05, 0.1, 0.15, 0.2, 0.3, 0.4),
                l2_eps=(0.5, 1.0, 1.5, 2.0, 3.0),
                subset=1000,
                expensive_subset=200,
                eot_iter=4,
                precision="auto",  # the gradient attacks (not the judge) in bf16 where native: 1.45x faster on an AVX-512 EPYC
            ),
            shift_subset=2000,
            # the paper's 1000 images for FGS; targeted C&W on the first 200, toward the next class only (CPU time)
            paper_protocol=PaperProtocolSettings(cw_images=200, cw_targets="next"),
        ),
    ),
    "paper": Profile(
        TrainConfig(epochs=200),
        ("mlp_*",) + beta_sweep(PAPER_BETAS) + (EMBEDDING_MODEL,),
        3,
        "the paper's protocol: 200 epochs, 3 seeds, the paper's beta grid, full attack budgets; meant for a GPU",
        EvalConfig(attacks=AttackSettings(eot_iter=20, precision="auto"), paper_protocol=PaperProtocolSettings()),
    ),
}

TABLE1_MODELS = ("mlp_deterministic", "mlp_dropout", "mlp_label_smoothing", "mlp_confidence_penalty", "mlp_vib")
"""The five methods of the paper's Table 1 (Alemi et al. 2017), VIB at the registry's beta 1e-3."""

PROFILES["table1"] = Profile(
    TrainConfig(epochs=200),  # as `paper`'s: the same job hashes, so the two profiles share trained models (tested)
    TABLE1_MODELS,
    1,
    "the paper's Table 1: its five MNIST-MLP methods (VIB at beta 1e-3) under the paper's training protocol "
    "(200 epochs, batch 100, Adam lr 1e-4 decayed x0.97 every 2 epochs), 1 seed (pass --seeds 3), the quick "
    "profile's evaluation; the report sets the clean test errors beside the published ones",
    PROFILES["quick"].eval,  # by reference: follows any change to the quick evaluation
)


@dataclass(frozen=True)
class RunConfig:
    """What `vibbench run` does: one training config, the models, the seeds, the device."""

    profile: str
    train: TrainConfig
    models: tuple[ModelSpec, ...]
    seeds: tuple[int, ...]
    device: str = "cpu"  # resolved: "cpu" or "cuda"
    eval: EvalConfig | None = None  # None: clean accuracy only
    plugins: tuple[str, ...] = ()
    """Modules imported before the models resolve (--plugin; vibbench.models.plugins): names, or files' absolute paths.
    Every process that runs a job imports them first. Recorded in config.json, not in the hash: a plugin's
    models are named in `models`, with the hash of their backbone's code."""

    def to_dict(self) -> dict:
        d = {
            "profile": self.profile,
            "train": self.train.to_dict(),
            "eval": self.eval.to_dict() if self.eval else None,
            "models": [s.resolved() | {"label": s.label} for s in self.models],
            "seeds": list(self.seeds),
            "device": self.device,
            "cache_format": CACHE_FORMAT,
        }
        if self.plugins:
            d["plugins"] = list(self.plugins)
        return d

    @property
    def config_hash(self) -> str:
        return stable_hash({k: v for k, v in self.to_dict().items() if k != "plugins"})

    @property
    def run_id(self) -> str:
        return f"{self.profile}-{self.train.dataset}-{self.config_hash[:10]}"

    def eval_hash(self, spec: ModelSpec, seed: int, section: str) -> str:
        """Names one evaluation section of one trained model: its job, the evaluation settings and, for a section whose
        attacks compute in bf16 on this machine, that arithmetic (a cache shared with a machine that resolves
        `--attack-precision auto` otherwise keeps both results apart)."""
        from vibbench.evaluation.sections import section_key

        if self.eval is None:
            raise VibbenchError("this run evaluates nothing (--no-eval): it has no evaluation sections")
        key = {"job": self.job_hash(spec, seed)} | section_key(section, self.eval)
        setting = self.eval.attacks.precision if self.eval.attacks is not None else "fp32"
        # a bf16 setting where bf16 is emulated is refused when the run starts, not here (a Ray driver may lack it)
        if "attacks" in key["settings"] and (setting == "bf16" or resolve_attack_precision(self.device, setting) == "bf16"):
            key["arithmetic"] = "bf16"
        return stable_hash(key)

    def job_hash(self, spec: ModelSpec, seed: int) -> str:
        """Names one trained model: the training config, the model, the seed, the device type."""
        return stable_hash(
            {"train": self.train.to_dict(), "model": spec.resolved(), "seed": seed, "device": self.device, "cache_format": CACHE_FORMAT}
        )


def resolve_device(device: str, local: bool = True) -> str:
    """"auto" becomes cuda when this machine has it; with local=False (the jobs run on other machines,
    `--executor ray`) "cuda" is not checked here: the cluster's nodes must have GPUs."""
    import torch

    if device not in DEVICES:
        raise VibbenchError(unknown_name_message("device", device, DEVICES))
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda" and local and not torch.cuda.is_available():
        raise VibbenchError("device cuda was asked for but torch sees no CUDA device; use --device cpu or auto")
    return device


def make_run_config(
    profile: str = "quick",
    *,
    models: list[str] | None = None,
    seeds: int | None = None,
    dataset: str | None = None,
    device: str = "auto",
    epochs: int | None = None,
    evaluate: bool = True,
    local_device: bool = True,
    train: dict | None = None,
    plugins=(),
    attack_precision: str | None = None,
) -> RunConfig:
    """Resolve a profile plus overrides (None means: the profile's value); `train` overrides
    fields of the profile's TrainConfig, e.g. {"batch_size": 50, "lr": 1e-3}; local_device=False:
    the jobs run elsewhere, so device cuda needs no GPU on this machine; `plugins`: modules (names or
    FILE.py paths) imported before the models resolve, recorded so that every job's process imports them;
    `attack_precision`: the arithmetic of the robustness attacks (AttackSettings.precision: auto, fp32, bf16)."""
    plugins = load_plugins(plugins)
    if profile not in PROFILES:
        raise VibbenchError(unknown_name_message("profile", profile, tuple(PROFILES)))
    prof = PROFILES[profile]
    if seeds is not None and (not isinstance(seeds, int) or isinstance(seeds, bool) or not 1 <= seeds <= MAX_SEEDS):
        raise VibbenchError(f"seeds must be a whole number from 1 to {MAX_SEEDS}, got {seeds!r}")
    changes = dict(train or {}) | {k: v for k, v in {"dataset": dataset, "epochs": epochs}.items() if v is not None}
    known = [f.name for f in dataclasses.fields(TrainConfig)]
    for name in changes:
        if name not in known:
            raise VibbenchError(unknown_name_message("training field", name, known))
    train = dataclasses.replace(prof.train, **changes)
    if attack_precision is not None:  # checked also when nothing is attacked: no silent typo
        check_attack_precision(attack_precision)
    specs = parse_model_specs(models or prof.models)
    for spec in specs:  # now, not when the first job is built: a failed start leaves nothing behind
        classes = dict(spec.overrides).get("num_classes")
        if classes is not None and classes != class_count(train.dataset):
            raise VibbenchError(f"{spec.label} predicts {classes} classes but {train.dataset} has {class_count(train.dataset)}")
    return RunConfig(
        profile=profile,
        train=train,
        models=specs,
        seeds=tuple(range(seeds or prof.seeds)),
        device=resolve_device(device, local_device),
        eval=_with_attack_precision(prof.eval, attack_precision) if evaluate else None,
        plugins=plugins,
    )


def _with_attack_precision(cfg: EvalConfig | None, precision: str | None) -> EvalConfig | None:
    """`cfg` with its attacks computed in `precision` (None: as the profile says)."""
    if precision is None or cfg is None or cfg.attacks is None:
        return cfg
    return dataclasses.replace(cfg, attacks=dataclasses.replace(cfg.attacks, precision=precision))
