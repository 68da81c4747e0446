"""The jobs of a run: each (model, seed) is built, trained (alone or in a population), measured, saved to
its cache folder and evaluated section by section; `run_unit` does all of it for one training group.

Everything here reads and writes the job folders of the cache (`vibbench.runs.cache`) and nothing
else, so a unit can run in any process that sees the cache folder.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vibbench.core.atomic import remove_stale_temps
from vibbench.core.errors import VibbenchError, unknown_name_message
from vibbench.core.hashing import stable_hash
from vibbench.core.locks import folder_lock
from vibbench.core.progress import log
from vibbench.data.datasets import Dataset, Split, load_dataset
from vibbench.evaluation.clean import clean_metrics
from vibbench.evaluation.sections import OOD_PAIRS, SECTIONS, EvalInputs, enabled_sections, noise_images
from vibbench.evaluation.timing import timing_record
from vibbench.models.plugins import load_plugins
from vibbench.runs.cache import (
    RESULT_FORMAT,
    cached_result,
    eval_path,
    job_dir,
    population_dir,
    read_eval,
    save_result,
    write_eval,
    write_job_description,
)
from vibbench.runs.config import ModelSpec, RunConfig
from vibbench.runs.provenance import code_version
from vibbench.training.checkpoints import load_checkpoint
from vibbench.training.loop import TrainingDiverged
from vibbench.training.population import LAYOUT as POPULATION_LAYOUT, population_key, train_population
from vibbench.core.precision import attack_precision, check_native_precision, cpu_capability
from vibbench.training.single import train_model

Job = tuple[ModelSpec, int]
"""One (model, seed): a trained model and its evaluation, named by `RunConfig.job_hash`."""

TRAINERS = ("auto", "single", "population")

POPULATION_CPU_CAPABILITIES = ("AVX2",)
"""torch CPU capabilities on which `--trainer auto` trains populations: `vibbench bench --compare` measured the quick
registry as populations against one by one at 1.23x on a 2-core AVX2 EPYC and 0.91x on a 2-core AVX-512 Xeon (AMX),
whose fast fp32 products leave less per-step overhead for a population to save."""


def resolve_trainer(trainer: str, device: str) -> str:
    """auto: populations on CUDA, where one vectorized step replaces many small launches, and on CPUs whose capability
    is in POPULATION_CPU_CAPABILITIES, where they measured faster; one model at a time on other CPUs."""
    if trainer not in TRAINERS:
        raise VibbenchError(unknown_name_message("trainer", trainer, TRAINERS))
    if trainer == "auto":
        return "population" if device == "cuda" or (device == "cpu" and cpu_capability() in POPULATION_CPU_CAPABILITIES) else "single"
    return trainer


def deterministic() -> None:
    """Bit-identical reruns on the CPU; on CUDA some kernels have no deterministic variant (warned, see README)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    # cuBLAS's deterministic mode (PyTorch's reproducibility notes); read when the first cuBLAS handle is created
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


# ----------------------------------------------------------------------------- data


@dataclass
class DeviceData:
    train: Split
    val: Split
    test: Split
    num_classes: int


def _head(split: Split, n: int | None, device: str) -> Split:
    images, labels = (split.images, split.labels) if n is None else (split.images[:n], split.labels[:n])
    return Split(images.to(device), labels.to(device))


def device_data(data: Dataset, cfg: RunConfig) -> DeviceData:
    """The run's splits, moved to the device once (batches are slices, no DataLoader)."""
    t = cfg.train
    return DeviceData(
        _head(data.train, t.max_train_examples, cfg.device),
        _head(data.val, t.max_eval_examples, cfg.device),
        _head(data.test, t.max_eval_examples, cfg.device),
        data.num_classes,
    )


def ood_set(cfg: RunConfig, data_dir: Path | None) -> tuple[str, torch.Tensor] | None:
    """The OOD images paired with the run's dataset (loaded before any training, so a missing set fails early)."""
    if cfg.eval is None or not cfg.eval.ood:
        return None
    name = OOD_PAIRS[cfg.train.dataset]
    n = cfg.train.max_eval_examples
    if name == "noise":
        images = noise_images(n or 10_000, seed=12345)
    else:
        images = load_dataset(name, data_dir).test.images[:n]
    return name, images.to(cfg.device)


def job_data(cfg: RunConfig, data_dir: Path | None, dataset: Dataset | None = None) -> tuple[DeviceData, tuple[str, torch.Tensor] | None]:
    """The run's splits on the device and its OOD set (loaded from `data_dir` unless `dataset` is given)."""
    dataset = dataset if dataset is not None else load_dataset(cfg.train.dataset, data_dir)
    return device_data(dataset, cfg), ood_set(cfg, data_dir)


# ----------------------------------------------------------------------------- models


def build_model(spec: ModelSpec, seed: int, cfg: RunConfig, num_classes: int | None, device: str | None = None):
    """The model of (spec, seed) on `device` (default: the run's): same seed and architecture -> same initial
    weights. num_classes: the dataset's, checked against the model's (None: not checked)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build()
    if num_classes is not None and model.num_classes != num_classes:
        raise VibbenchError(f"{spec.label} predicts {model.num_classes} classes but {cfg.train.dataset} has {num_classes}")
    model.eval_samples = cfg.train.eval_samples
    model.train_samples = cfg.train.train_samples
    return model.to(device or cfg.device)


def load_trained(cfg: RunConfig, spec: ModelSpec, seed: int, cache_dir: Path, num_classes: int | None = 10, device: str | None = None):
    """The trained (EMA) model of a finished job, verified against its config, in eval mode on `device` (default: the run's)."""
    h = cfg.job_hash(spec, seed)
    path = job_dir(cache_dir, h) / "model.pt"
    if not path.exists():
        raise VibbenchError(f"{spec.label} (seed {seed}) has not been trained in {cache_dir}; run `vibbench run` first")
    model = build_model(spec, seed, cfg, num_classes, device)
    model.load_state_dict(load_checkpoint(path, h, map_location=device or cfg.device))
    return model.eval()


# ----------------------------------------------------------------------------- training


def training_groups(jobs: list[Job], trainer: str) -> list[list[Job]]:
    """The jobs trained together: one model each, or with the population trainer every job of a seed
    whose model stacks with the others (same architecture)."""
    groups: dict[tuple, list[Job]] = {}
    for spec, seed in jobs:
        key = (seed, population_key(spec.build())) if trainer == "population" else (spec, seed)
        groups.setdefault(key, []).append((spec, seed))
    return list(groups.values())


def train_jobs(cfg: RunConfig, jobs: list[Job], data: DeviceData, cache_dir: Path, trainer: str) -> dict:
    """Train the given (spec, seed) jobs, alone or as populations (same seed and architecture); returns their records.

    Every model draws its training noise from the generator of (seed, registry name), so a model
    gets the same batches and the same noise on either path."""
    records: dict[Job, dict] = {}
    for group in training_groups(jobs, trainer):
        with contextlib.ExitStack() as held:
            for spec, seed in group:
                held.enter_context(folder_lock(job_dir(cache_dir, cfg.job_hash(spec, seed)), "job folder", wait=True))
            # another process may have finished some of these while we waited for their locks
            for spec, seed in group:
                remove_stale_temps(job_dir(cache_dir, cfg.job_hash(spec, seed)))
                if (record := cached_result(cfg, spec, seed, cache_dir)) is not None:
                    records[(spec, seed)] = record
            members = [job for job in group if job not in records]
            if members:
                records |= _train_group(cfg, members, data, cache_dir)
    return records


def _start_job(cfg: RunConfig, spec: ModelSpec, seed: int, data: DeviceData, cache_dir: Path):
    write_job_description(job_dir(cache_dir, cfg.job_hash(spec, seed)), cfg, spec, seed)
    return build_model(spec, seed, cfg, data.num_classes)


def _train_group(cfg: RunConfig, members: list[Job], data: DeviceData, cache_dir: Path) -> dict:
    """Train `members` (same seed) alone or as one population; save each as a finished job."""
    models = [_start_job(cfg, spec, seed, data, cache_dir) for spec, seed in members]
    hashes = [cfg.job_hash(spec, seed) for spec, seed in members]
    labels = [f"{spec.label} seed {seed}" for spec, seed in members]
    seed = members[0][1]
    if len(members) == 1:
        results = [
            train_model(
                models[0], data.train.images, data.train.labels, cfg.train, seed=seed, label=labels[0],
                checkpoint_path=job_dir(cache_dir, hashes[0]) / "train_state.pt", config_hash=hashes[0], noise_key=members[0][0].name,
            )
        ]
    else:
        pop_hash = stable_hash({"members": sorted(hashes), "layout": POPULATION_LAYOUT})
        state = population_dir(cache_dir, pop_hash) / "train_state.pt"
        remove_stale_temps(state.parent)
        log(f"training a population of {len(members)}: {', '.join(labels)}")
        results = train_population(
            models, data.train.images, data.train.labels, cfg.train, seed=seed, labels_of_members=labels,
            noise_keys=[spec.name for spec, _ in members], checkpoint_path=state, config_hash=pop_hash,
        )
    records = {}
    for (spec, s), model, trained in zip(members, models, results):
        records[(spec, s)] = job_record(cfg, spec, s, model, trained, data)
        save_job(cache_dir, model, records[(spec, s)], trained.seconds)
    if len(members) > 1:
        shutil.rmtree(state.parent, ignore_errors=True)
    return records


def job_record(cfg: RunConfig, spec: ModelSpec, seed: int, model, trained, data: DeviceData) -> dict:
    """The result record of a freshly trained model: its training history and clean metrics on val and test.
    Raises TrainingDiverged, writing nothing, if any of them is not finite."""
    t0 = time.perf_counter()
    metrics = {
        split: clean_metrics(model, s.images, s.labels, batch_size=cfg.train.eval_batch_size, seed=seed)
        for split, s in (("val", data.val), ("test", data.test))
    }
    bad = [f"{split} {mode} {metric}" for split, d in metrics.items() for (mode, metric), v in d.items() if not math.isfinite(v)]
    bad += [f"epoch {e['epoch']} {k}" for e in trained.history for k in ("loss", "ce", "kl") if not math.isfinite(e[k])]
    if bad:
        raise TrainingDiverged(
            f"{spec.label} seed {seed} diverged: non-finite {', '.join(bad[:4])}. Lower the learning rate or beta; "
            "no result was written for this model."
        )
    return {
        "format": RESULT_FORMAT,
        "job_hash": cfg.job_hash(spec, seed),
        "label": spec.label,
        "seed": seed,
        "history": trained.history,
        "train_seconds": trained.seconds,
        "eval_seconds": time.perf_counter() - t0,
        "trained_by": code_version(),
        "metrics": [{"split": s, "eval_mode": m, "metric": k, "value": v} for s, d in metrics.items() for (m, k), v in d.items()],
    }


def save_job(cache_dir: Path, model, record: dict, train_seconds: float) -> None:
    """Save a trained model and its result record as a finished job."""
    h = record["job_hash"]
    save_result(job_dir(cache_dir, h), h, model.state_dict(), record)
    test_error = next(m["value"] for m in record["metrics"] if (m["split"], m["eval_mode"], m["metric"]) == ("test", "predictor", "error"))
    log(f"{record['label']} seed {record['seed']}: trained in {train_seconds:.0f} s, test error {100 * test_error:.2f}%")


# ----------------------------------------------------------------------------- evaluation


def evaluate_job(cfg: RunConfig, spec: ModelSpec, seed: int, data: DeviceData, ood: tuple[str, torch.Tensor] | None, cache_dir: Path) -> list[dict]:
    """The harness's sections for one trained model, each cached under its own hash (resumable)."""
    if cfg.eval is None:
        return []
    folder = job_dir(cache_dir, cfg.job_hash(spec, seed))
    with folder_lock(folder, "job folder", wait=True):
        remove_stale_temps(folder)
        return _evaluate_locked(cfg, spec, seed, data, ood, cache_dir)


def _evaluate_locked(cfg, spec, seed, data, ood, cache_dir) -> list[dict]:
    label = f"{spec.label} seed {seed}"
    model = None
    records: list[dict] = []
    for section in enabled_sections(cfg.eval):
        path, h = eval_path(cfg, spec, seed, section, cache_dir)
        cached = read_eval(path, h)
        if cached is None:
            if model is None:
                model = load_trained(cfg, spec, seed, cache_dir, data.num_classes)
            t0 = time.perf_counter()
            new = SECTIONS[section](model, EvalInputs(data.val, data.test, ood, cfg.eval, seed, label))
            seconds = time.perf_counter() - t0
            new.append(timing_record(section, seconds))  # cached with the section: timing.csv says when it was measured
            write_eval(path, h, seconds, new)
            log(f"{label}: {section} evaluated in {seconds:.0f} s")
            cached = new
        records += cached
    return records


def check_precisions(cfg: RunConfig, train: bool = True) -> None:
    """Refuse, before any work, bf16 this machine only emulates: the training precision (when it trains) and the
    attacks' (when it evaluates them). Called where the work runs: by the runner for its own machine, and by every
    unit, also on another machine of the executor (Ray), whose CPU or GPU may differ from the head's."""
    if train:
        check_native_precision(cfg.device, cfg.train.precision)
    if cfg.eval is not None and cfg.eval.attacks is not None:
        attack_precision(cfg.device, cfg.eval.attacks.precision)


def run_unit(cfg: RunConfig, members: list[Job], cache_dir: Path, data_dir: Path | None, trainer: str, data=None) -> list[tuple[dict, list[dict]]]:
    """One unit of a sweep: train `members` (one model, or one population) unless cached, then evaluate each.

    Its arguments are plain picklable values, so an executor may run it in another process or on
    another machine: it loads the data itself unless `data` (a `job_data` pair) is given; every file
    it writes goes to the job folders under `cache_dir`. Returns (result record, evaluation records)
    per member, in order. The run's plugins are imported first (already imported ones are skipped), so that a
    process of another executor knows their models."""
    load_plugins(cfg.plugins)
    # bf16 this machine only emulates, refused before any work: the training precision only if something is left to
    # train (looked up only for bf16, the one precision that can be refused: fp32 units read their cache once, below)
    left_to_train = cfg.train.precision != "fp32" and any(cached_result(cfg, spec, seed, cache_dir) is None for spec, seed in members)
    check_precisions(cfg, train=left_to_train)
    data, ood = data if data is not None else job_data(cfg, data_dir)
    records = train_jobs(cfg, members, data, cache_dir, trainer)
    return [(records[job], evaluate_job(cfg, *job, data, ood, cache_dir)) for job in members]


def metric_rows(cfg: RunConfig, spec: ModelSpec, record: dict, eval_records: list[dict] = ()) -> list[dict]:
    """The rows of metrics.csv for one job: its clean metrics, its training summary, its evaluation records."""
    model = spec.resolved()
    base = {
        "run_id": cfg.run_id,
        "model": spec.name,
        "label": spec.label,
        "method": model["method"],
        "backbone": model["backbone"],
        "beta": model["beta"] if model["method"] == "vib" else None,  # empty: not a VIB, unlike a VIB at beta 0
        "seed": record["seed"],
        "dataset": cfg.train.dataset,
    }
    rows = [base | m for m in record["metrics"]]
    last = record["history"][-1]
    training = {
        "loss": last["loss"],
        "ce": last["ce"],
        "kl": last["kl"],
        "seconds": record["train_seconds"],
        "examples_per_second": sum(h["examples_per_second"] for h in record["history"]) / len(record["history"]),
    }
    rows += [base | {"split": "train", "eval_mode": "training", "metric": k, "value": v} for k, v in training.items()]
    rows += [base | r for r in eval_records]
    return rows
