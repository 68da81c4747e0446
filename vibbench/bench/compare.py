"""Our trainers against the conventional alternatives, side by side on the same data and steps.

`compare_training` times, interleaved in one process (A B B A ...), on the same data and the
same number of steps:
- "pipeline": our `train_model` against `train_conventional` (vibbench.bench.conventional), one VIB model each;
- "population": the quick registry (`PROFILES["quick"]`: the five `mlp_*` methods and VIB at four
  more betas, 9 models) trained as populations (grouped by `population.population_key`, one
  `train_population` call per group) against the same 9 models trained one by one with `train_model`;
- "processes" (on the CPU): the same models trained one by one in this process against the same models trained in
  worker processes, each on its share of the cores, as `vibbench run --executor processes` (the default on a CPU with
  several cores) trains a sweep; the worker pool is started and warmed before any timing;
- "products" and "products_update": our `train_model` against the limits of its step on this machine
  (vibbench.bench.limits): the step's matrix products alone, and those plus the trainer's Adam step and EMA,
  replayed at the pipeline model's shapes; the ratio is the share of that limit our trainer reaches.
Throughput is examples per second summed over the models trained (models x steps x batch / wall
seconds); the ratio is candidate / baseline. Timing starts after the models are built and the
data is loaded, and includes each trainer's own set-up; an untimed warm-up of every contestant on
two batches comes first, so that lazy initialisation is not charged to whoever runs first.
"""

from __future__ import annotations

import dataclasses
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vibbench.bench.conventional import to_uint8, train_conventional
from vibbench.core.errors import VibbenchError, check_positive_int, unknown_name_message
from vibbench.training.config import TrainConfig
from vibbench.core.precision import check_precision

PIPELINE_MODEL = "mlp_vib"

RUN_COLUMNS = (
    "comparison", "implementation", "role", "repeat", "device", "device_name", "torch", "precision",
    "dataset", "models", "steps", "batch", "seconds", "examples_per_second",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "comparison", "baseline", "candidate", "baseline_precision", "candidate_precision", "models", "steps", "batch", "repeats",
    "baseline_examples_per_second", "candidate_examples_per_second", "ratio", "ratio_min", "ratio_max",
)  # fmt: skip


@dataclass(frozen=True)
class CompareConfig:
    """What `compare_training` compares, and how often.

    models: registry patterns of the population comparison (default: the quick profile's 9).
    precision: our trainers' (`TrainConfig.precision`); baseline_precision: the conventional loop's,
    fp32 by default because that is how public reproductions train. warmup: the untimed warm-up round."""

    steps: int = 200
    device: str = "cpu"
    dataset: str = "mnist"
    data_dir: Path | None = None
    batch_size: int = 100
    repeats: int = 2
    precision: str = "fp32"
    baseline_precision: str = "fp32"
    pipeline: bool = True
    population: bool = True
    limits: bool = True
    processes: bool = True  # on the CPU only
    pipeline_model: str = PIPELINE_MODEL
    models: tuple[str, ...] | None = None
    seed: int = 0
    warmup: bool = True

    def check(self) -> None:
        """Raise VibbenchError for a setting that cannot be compared."""
        check_precision(self.precision)
        check_precision(self.baseline_precision)
        check_positive_int("repeats", self.repeats)
        check_positive_int("steps", self.steps)
        if not (self.pipeline or self.population or self.limits or self.processes):
            raise VibbenchError("nothing to compare: enable pipeline, population, processes or limits")
        from vibbench.data.datasets import DATASETS
        from vibbench.runs.config import parse_model_specs

        if self.dataset not in DATASETS:
            raise VibbenchError(unknown_name_message("dataset", self.dataset, DATASETS))
        if self.models is not None:  # before any data is loaded
            parse_model_specs(list(self.models))


@dataclass
class CompareResult:
    runs: object  # pandas DataFrame: one row per (comparison, implementation, repeat)
    summary: object  # pandas DataFrame: one row per comparison, medians and the ratio
    info: dict = field(default_factory=dict)


def step_plan(steps: int, num_images: int, batch_size: int) -> tuple[int, int]:
    """(epochs, steps per epoch) with epochs * steps_per_epoch == steps and steps_per_epoch
    batches fitting in `num_images`: both trainers run whole epochs over the first
    steps_per_epoch * batch_size images."""
    if steps < 1:
        raise VibbenchError(f"steps must be positive, got {steps}")
    fit = num_images // batch_size
    if fit < 1:
        raise VibbenchError(f"{num_images} images is fewer than one batch of {batch_size}")
    per_epoch = max(d for d in range(1, min(steps, fit) + 1) if steps % d == 0)
    return steps // per_epoch, per_epoch


# ---------------------------------------------------------------------------------------------
# the contestants


@dataclass
class _Arena:
    """What every contestant shares: the data (on the device, and as uint8 on the CPU for the
    conventional loop), the training config, the population's model specs."""

    cfg: CompareConfig
    device: torch.device
    train: TrainConfig
    steps_per_epoch: int
    images: torch.Tensor
    labels: torch.Tensor
    images_u8: torch.Tensor
    labels_cpu: torch.Tensor
    specs: list
    pool: object = None  # the worker processes of the "processes" comparison, started on first use

    def setting(self, repeat: int) -> tuple[TrainConfig, slice]:
        """The config and the images of one round: repeat -1 is the untimed warm-up on two batches,
        since first calls pay for lazy initialisation (autograd, vmap, allocator, DataLoader), which
        would otherwise land on whoever runs first."""
        if repeat < 0:
            return dataclasses.replace(self.train, epochs=1), slice(0, 2 * self.cfg.batch_size)
        return self.train, slice(None)

    def build(self, spec_or_name):
        """A fresh model from a registry name or a model spec, seeded alike for every contestant."""
        torch.manual_seed(self.cfg.seed)
        if isinstance(spec_or_name, str):
            from vibbench.models.registry import create_model

            return create_model(spec_or_name).to(self.device)
        return spec_or_name.build().to(self.device)

    def timed(self, train: Callable[[], object]) -> float:
        """Wall seconds of `train()`, the device synchronized before and after."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t0 = time.perf_counter()
        train()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter() - t0


@dataclass(frozen=True)
class _Run:
    implementation: str
    role: str  # "candidate" or "baseline"
    models: int
    seconds: float
    precision: str


def _ours_pipeline(a: _Arena, repeat: int) -> _Run:
    from vibbench.training.single import train_model

    c, part = a.setting(repeat)
    name = a.cfg.pipeline_model
    model = a.build(name)
    seconds = a.timed(lambda: train_model(model, a.images[part], a.labels[part], c, seed=a.cfg.seed, label=f"{name} (vibbench)"))
    return _Run("vibbench.train_model", "candidate", 1, seconds, a.cfg.precision)


def _conventional_pipeline(a: _Arena, repeat: int) -> _Run:
    c, part = a.setting(repeat)
    model = a.build(a.cfg.pipeline_model)
    images = a.images_u8[part]
    expected = c.epochs * (images.shape[0] // a.cfg.batch_size)

    def train():
        result = train_conventional(model, images, a.labels_cpu[part], c, seed=a.cfg.seed, device=a.device, precision=a.cfg.baseline_precision)
        if result.steps != expected:  # the same work, or the ratio means nothing
            raise VibbenchError(f"the conventional loop took {result.steps} steps, expected {expected}")

    seconds = a.timed(train)
    return _Run("conventional (DataLoader + PIL + state_dict EMA + logging)", "baseline", 1, seconds, a.cfg.baseline_precision)


def _limit(a: _Arena, repeat: int, update: bool) -> _Run:
    from vibbench.bench.limits import StepProducts, step_products

    c, _ = a.setting(repeat)
    model = a.build(a.cfg.pipeline_model)
    products = step_products(model, a.images[: a.cfg.batch_size], c.train_samples)
    replay = StepProducts(products, a.device, c.precision, update=[p.shape for p in model.parameters()] if update else None, cfg=c)
    steps = c.epochs * (a.steps_per_epoch if repeat >= 0 else 2)

    def train():
        for _ in range(steps):
            replay.step()

    seconds = a.timed(train)
    name = "the step's matrix products" + (" + Adam + EMA" if update else " alone")
    return _Run(name, "baseline", 1, seconds, a.cfg.precision)


def _products_alone(a: _Arena, repeat: int) -> _Run:
    return _limit(a, repeat, update=False)


def _products_and_update(a: _Arena, repeat: int) -> _Run:
    return _limit(a, repeat, update=True)


def _populations(a: _Arena, repeat: int) -> _Run:
    from vibbench.training.population import population_key, train_population
    from vibbench.training.single import train_model

    c, part = a.setting(repeat)
    groups: dict[tuple, list] = {}
    for spec in a.specs:
        model = a.build(spec)
        groups.setdefault(population_key(model), []).append((spec, model))
    images, labels, seed = a.images[part], a.labels[part], a.cfg.seed

    def train():
        for members in groups.values():
            if len(members) == 1:
                spec, model = members[0]
                train_model(model, images, labels, c, seed=seed, label=spec.label, noise_key=spec.label)
            else:
                names = [s.label for s, _ in members]
                train_population([m for _, m in members], images, labels, c, seed=seed, labels_of_members=names, noise_keys=names)

    seconds = a.timed(train)
    return _Run(f"train_population ({len(groups)} groups)", "candidate", len(a.specs), seconds, a.cfg.precision)


def _one_by_one(a: _Arena, repeat: int) -> _Run:
    from vibbench.training.single import train_model

    c, part = a.setting(repeat)
    built = [(spec, a.build(spec)) for spec in a.specs]

    def train():
        for spec, model in built:
            train_model(model, a.images[part], a.labels[part], c, seed=a.cfg.seed, label=spec.label, noise_key=spec.label)

    seconds = a.timed(train)
    return _Run("train_model one by one", "baseline", len(built), seconds, a.cfg.precision)


def _one_per_core(a: _Arena, repeat: int) -> _Run:
    c, part = a.setting(repeat)
    pool, workers, threads = a.pool

    def train():  # from submission to the last model trained; the models are built in the workers, on this side's time
        for future in [pool.submit(_train_in_worker, spec, c, part, a.cfg.seed) for spec in a.specs]:
            future.result()

    seconds = a.timed(train)
    return _Run(f"train_model in {workers} worker processes x {threads} thread(s)", "candidate", len(a.specs), seconds, a.cfg.precision)


def _start_pool(a: _Arena):
    """Worker processes as `--executor processes` starts them, each holding the images, all started and idle."""
    import multiprocessing
    import os
    from concurrent.futures import ProcessPoolExecutor

    from vibbench.runs.executors import ProcessExecutor

    shape = ProcessExecutor()
    pool = ProcessPoolExecutor(
        shape.workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init_worker,
        initargs=(shape.threads, os.getpid(), a.images, a.labels),
    )  # fmt: skip
    for future in [pool.submit(time.sleep, 0.5) for _ in range(shape.workers)]:  # one each: every worker spawned
        future.result()
    return pool, shape.workers, shape.threads


_WORKER_DATA: list = []


def _init_worker(threads: int, parent: int, images: torch.Tensor, labels: torch.Tensor) -> None:
    from vibbench.runs.executors import init_worker

    init_worker(threads, parent)
    _WORKER_DATA[:] = [images, labels]


def _train_in_worker(spec, c: TrainConfig, part: slice, seed: int) -> None:
    from vibbench.training.single import train_model

    images, labels = _WORKER_DATA
    torch.manual_seed(seed)  # as _Arena.build
    model = spec.build()
    train_model(model, images[part], labels[part], c, seed=seed, label=spec.label, noise_key=spec.label)


# ---------------------------------------------------------------------------------------------
# the comparison


def _arena(cfg: CompareConfig) -> _Arena:
    """Load the data once and cut it to whole epochs of the asked steps."""
    from vibbench.data.datasets import load_dataset
    from vibbench.runs.config import PROFILES, parse_model_specs

    data = load_dataset(cfg.dataset, cfg.data_dir)
    epochs, per_epoch = step_plan(cfg.steps, data.train.images.shape[0], cfg.batch_size)
    n = per_epoch * cfg.batch_size
    device = torch.device(cfg.device)
    train = TrainConfig(dataset=cfg.dataset, epochs=epochs, batch_size=cfg.batch_size, precision=cfg.precision)
    specs = parse_model_specs(list(cfg.models) if cfg.models else list(PROFILES["quick"].models))
    images, labels = data.train.images[:n], data.train.labels[:n]
    return _Arena(cfg, device, train, per_epoch, images.to(device), labels.to(device), to_uint8(images), labels, specs)


def _record(a: _Arena, comparison: str, repeat: int, run: _Run, device_name: str) -> dict:
    steps = a.train.epochs * a.steps_per_epoch
    return {
        "comparison": comparison, "implementation": run.implementation, "role": run.role, "repeat": repeat,
        "device": a.device.type, "device_name": device_name, "torch": torch.__version__, "precision": run.precision,
        "dataset": a.cfg.dataset, "models": run.models, "steps": steps, "batch": a.cfg.batch_size,
        "seconds": run.seconds, "examples_per_second": run.models * steps * a.cfg.batch_size / run.seconds,
    }  # fmt: skip


def compare_training(cfg: CompareConfig, progress: Callable[[str], None] | None = None) -> CompareResult:
    """Time our trainers against the conventional alternatives (module docstring), interleaved ABBA.

    Returns per-repeat runs and a summary whose `ratio` is the median over repeats of
    candidate / baseline examples per second (> 1: the candidate is faster)."""
    import pandas as pd

    from vibbench.runs.provenance import device_name

    cfg.check()
    arena = _arena(cfg)
    name = device_name(arena.device.type)
    pairs = [("pipeline", _ours_pipeline, _conventional_pipeline)] if cfg.pipeline else []
    pairs += [("population", _populations, _one_by_one)] if cfg.population else []
    if cfg.processes and arena.device.type == "cpu":
        pairs.append(("processes", _one_per_core, _one_by_one))
        arena.pool = _start_pool(arena)
    pairs += [("products", _ours_pipeline, _products_alone), ("products_update", _ours_pipeline, _products_and_update)] if cfg.limits else []
    rows: list[dict] = []
    try:
        for repeat in range(-1 if cfg.warmup else 0, cfg.repeats):
            for comparison, a, b in pairs:
                for contestant in (a, b) if repeat % 2 == 0 else (b, a):  # ABBA: drift hits both sides alike
                    if progress:
                        when = "warm-up" if repeat < 0 else f"repeat {repeat + 1}/{cfg.repeats}"
                        progress(f"compare {comparison}, {when}: {contestant.__name__.lstrip('_')}")
                    run = contestant(arena, repeat)
                    if repeat >= 0:
                        rows.append(_record(arena, comparison, repeat, run, name))
    finally:
        if arena.pool is not None:
            arena.pool[0].shutdown(wait=True, cancel_futures=True)
    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    summary = pd.DataFrame([_summarize(runs[runs.comparison == c]) for c in runs.comparison.unique()], columns=list(SUMMARY_COLUMNS))
    info = {
        "epochs": arena.train.epochs, "steps_per_epoch": arena.steps_per_epoch, "images": arena.steps_per_epoch * cfg.batch_size,
        "models": [s.label for s in arena.specs], "pipeline_model": cfg.pipeline_model,
    }  # fmt: skip
    if cfg.limits:
        from vibbench.bench.limits import step_products

        products = step_products(arena.build(cfg.pipeline_model), arena.images[: cfg.batch_size], arena.train.train_samples)
        info["step_flops_per_example"] = sum(p.flops for p in products) / cfg.batch_size
    return CompareResult(runs, summary, info)


def _summarize(d) -> dict:
    base = d[d.role == "baseline"].sort_values("repeat")
    cand = d[d.role == "candidate"].sort_values("repeat")
    ratios = [c / b for c, b in zip(cand.examples_per_second, base.examples_per_second)]
    return {
        "comparison": d.comparison.iloc[0],
        "baseline": base.implementation.iloc[0],
        "candidate": cand.implementation.iloc[0],
        "baseline_precision": base.precision.iloc[0],
        "candidate_precision": cand.precision.iloc[0],
        "models": int(cand.models.iloc[0]),
        "steps": int(cand.steps.iloc[0]),
        "batch": int(cand.batch.iloc[0]),
        "repeats": len(ratios),
        "baseline_examples_per_second": statistics.median(base.examples_per_second),
        "candidate_examples_per_second": statistics.median(cand.examples_per_second),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def concat_compare(results: list[CompareResult]) -> CompareResult:
    """One result of several comparisons (e.g. one per precision), their repeats kept apart."""
    import pandas as pd

    if len(results) == 1:
        return results[0]
    return CompareResult(
        pd.concat([r.runs for r in results], ignore_index=True),
        pd.concat([r.summary for r in results], ignore_index=True),
        results[0].info,
    )
