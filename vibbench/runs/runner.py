"""`vibbench run`: train every (model, seed) of a run config, evaluate it, write results.

Each (model, seed) is a job named by its hash (`RunConfig.job_hash`) with its own folder in
the cache: `train_state.pt` while training (resumable), then `model.pt` (the EMA weights) and
`result.json` (its metrics). A finished job is never trained again; a run that shares jobs
with an earlier one reuses them.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from vibbench.core.atomic import atomic_write_text, remove_stale_temps
from vibbench.evaluation.settings import autoattack_label
from vibbench.training.checkpoints import load_checkpoint, save_checkpoint
from vibbench.core.hashing import stable_hash
from vibbench.runs.config import ModelSpec, RunConfig
from vibbench.runs.config_file import options_of
from vibbench.data.datasets import Dataset, Split, load_dataset
from vibbench.core.errors import VibbenchError, describe_os_error
from vibbench.evaluation.clean import clean_metrics
from vibbench.core.locks import folder_lock
from vibbench.evaluation.sections import OOD_PAIRS, SECTIONS, EvalInputs, enabled_sections, noise_images
from vibbench.core.progress import log
from vibbench.runs.provenance import code_version, git_state, provenance
from vibbench.reporting.report import write_report
from vibbench.reporting.metrics import summary_markdown, write_json, write_metrics
from vibbench.training.population import population_key, train_population
from vibbench.core.errors import unknown_name_message
from vibbench.training.single import TrainingDiverged, train_model

RESULT_FORMAT = "vibbench-job-1"

Job = tuple[ModelSpec, int]
"""One (model, seed): a trained model and its evaluation, named by `RunConfig.job_hash`."""


def default_cache_dir() -> Path:
    if os.environ.get("VIBBENCH_CACHE_DIR"):
        return Path(os.environ["VIBBENCH_CACHE_DIR"])
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "vibbench"


PROBE_BYTES = 65536
"""check_writable writes this much: a folder that cannot take 64 KiB cannot take a checkpoint."""


def check_writable(folder: Path, what: str) -> None:
    """Fail before any training if `folder` cannot take a file (read-only, missing permissions, disk full)."""
    probe = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-test.{os.getpid()}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        raise VibbenchError(f"cannot write to the {what} {folder}: {describe_os_error(exc)}. Choose another folder or free space.") from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)


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


def job_dir(cache_dir: Path, job_hash: str) -> Path:
    return cache_dir / "jobs" / job_hash[:32]


def build_model(spec: ModelSpec, seed: int, cfg: RunConfig, num_classes: int):
    """The model of (spec, seed): same seed and architecture -> same initial weights."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = spec.build()
    if model.num_classes != num_classes:
        raise VibbenchError(f"{spec.label} predicts {model.num_classes} classes but {cfg.train.dataset} has {num_classes}")
    model.eval_samples = cfg.train.eval_samples
    model.train_samples = cfg.train.train_samples
    return model.to(cfg.device)


def load_trained(cfg: RunConfig, spec: ModelSpec, seed: int, cache_dir: Path, num_classes: int = 10):
    """The trained (EMA) model of a finished job, verified against its config."""
    h = cfg.job_hash(spec, seed)
    path = job_dir(cache_dir, h) / "model.pt"
    if not path.exists():
        raise VibbenchError(f"{spec.label} (seed {seed}) has not been trained in {cache_dir}; run `vibbench run` first")
    model = build_model(spec, seed, cfg, num_classes)
    model.load_state_dict(load_checkpoint(path, h, map_location=cfg.device))
    return model.eval()


def _read_result(path: Path, job_hash: str) -> dict | None:
    return _read_entry(path, "job_hash", job_hash, f"delete {path.parent} or rerun with --retrain")


def sealed(record: dict) -> dict:
    """`record` plus the SHA-256 of its JSON form, so that a damaged or edited cache entry is detected."""
    return record | {"sha256": _digest(record)}


def _digest(record: dict) -> str:
    return stable_hash(json.loads(json.dumps(record, default=str)))  # as it reads back from the file


def _read_entry(path: Path, key: str, expected: str, advice: str) -> dict | None:
    """A JSON cache entry made for `expected` (its `key`), its seal verified; None if absent or unparsable
    (written atomically, so that means damage: it is computed again)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("format") != RESULT_FORMAT or record.get(key) != expected:
        raise VibbenchError(f"{path} does not match its config ({key} {expected[:12]}); {advice}")
    digest = record.pop("sha256", None)  # entries of vibbench before the seal have none
    if digest is not None and digest != _digest(record):
        raise VibbenchError(f"{path} fails its SHA-256 check (corrupt or edited); {advice}")
    return record


TRAINERS = ("auto", "single", "population")


def resolve_trainer(trainer: str, device: str) -> str:
    """auto: populations on CUDA, where one vectorized step replaces many small launches; one model at a
    time on the CPU, where vmap's batched products measured slower than plain ones at batch 100."""
    if trainer not in TRAINERS:
        raise VibbenchError(unknown_name_message("trainer", trainer, TRAINERS))
    if trainer == "auto":
        return "population" if device == "cuda" else "single"
    return trainer


def cached_result(cfg: RunConfig, spec: ModelSpec, seed: int, cache_dir: Path, retrain: bool = False) -> dict | None:
    """The finished job's record, verified (its weights included), or None if it must be trained."""
    h = cfg.job_hash(spec, seed)
    folder = job_dir(cache_dir, h)
    if retrain and folder.exists():
        shutil.rmtree(folder)
    result_path, model_path = folder / "result.json", folder / "model.pt"
    if result_path.exists() and model_path.exists():
        record = _read_result(result_path, h)
        if record is not None:
            load_checkpoint(model_path, h)  # refuse a cache entry whose weights do not verify
            log(f"{spec.label} seed {seed}: trained model cached ({folder})")
            return record
    return None


def finish_job(cfg: RunConfig, spec: ModelSpec, seed: int, model, trained, data: DeviceData, cache_dir: Path) -> dict:
    """Save a freshly trained model and its clean metrics as the job's result."""
    h = cfg.job_hash(spec, seed)
    folder = job_dir(cache_dir, h)
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
    save_checkpoint(folder / "model.pt", model.state_dict(), h)
    record = {
        "format": RESULT_FORMAT,
        "job_hash": h,
        "label": spec.label,
        "seed": seed,
        "history": trained.history,
        "train_seconds": trained.seconds,
        "eval_seconds": time.perf_counter() - t0,
        "trained_by": code_version(),
        "metrics": [{"split": s, "eval_mode": m, "metric": k, "value": v} for s, d in metrics.items() for (m, k), v in d.items()],
    }
    write_json(folder / "result.json", sealed(record))
    (folder / "train_state.pt").unlink(missing_ok=True)
    log(f"{spec.label} seed {seed}: trained in {trained.seconds:.0f} s, test error {100 * metrics['test'][('predictor', 'error')]:.2f}%")
    return record


def _start_job(cfg: RunConfig, spec: ModelSpec, seed: int, data: DeviceData, cache_dir: Path):
    h = cfg.job_hash(spec, seed)
    folder = job_dir(cache_dir, h)
    folder.mkdir(parents=True, exist_ok=True)
    write_json(folder / "job.json", {"job_hash": h, "model": spec.resolved(), "seed": seed, "train": cfg.train.to_dict(), "device": cfg.device})
    return build_model(spec, seed, cfg, data.num_classes)


def training_groups(jobs: list[Job], trainer: str) -> list[list[Job]]:
    """The jobs trained together: one model each, or with the population trainer every job of a seed
    whose model stacks with the others (same architecture)."""
    groups: dict[tuple, list[Job]] = {}
    for spec, seed in jobs:
        key = (seed, population_key(spec.build())) if trainer == "population" else (spec, seed)
        groups.setdefault(key, []).append((spec, seed))
    return list(groups.values())


def train_jobs(cfg: RunConfig, jobs: list[tuple[ModelSpec, int]], data: DeviceData, cache_dir: Path, trainer: str) -> dict:
    """Train the given (spec, seed) jobs, alone or as populations (same seed and architecture); returns their records.

    Every model draws its training noise from the generator of (seed, registry name), so a model
    gets the same batches and the same noise on either path."""
    records: dict[tuple[ModelSpec, int], dict] = {}
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


def _train_group(cfg: RunConfig, members: list[tuple[ModelSpec, int]], data: DeviceData, cache_dir: Path) -> dict:
    """Train `members` (same seed) alone or as one population; save each as a finished job."""
    records = {}
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
        pop_hash = stable_hash(sorted(hashes))
        state = cache_dir / "populations" / pop_hash[:32] / "train_state.pt"
        remove_stale_temps(state.parent)
        log(f"training a population of {len(members)}: {', '.join(labels)}")
        results = train_population(
            models, data.train.images, data.train.labels, cfg.train, seed=seed, labels_of_members=labels,
            noise_keys=[spec.name for spec, _ in members], checkpoint_path=state, config_hash=pop_hash,
        )
    for (spec, s), model, trained in zip(members, models, results):
        records[(spec, s)] = finish_job(cfg, spec, s, model, trained, data, cache_dir)
    if len(members) > 1:
        shutil.rmtree(state.parent, ignore_errors=True)
    return records


def evaluate_job(cfg: RunConfig, spec: ModelSpec, seed: int, data: DeviceData, ood: tuple[str, torch.Tensor] | None, cache_dir: Path) -> list[dict]:
    """The harness's sections for one trained model, each cached under its own hash (resumable)."""
    if cfg.eval is None:
        return []
    folder = job_dir(cache_dir, cfg.job_hash(spec, seed))
    with folder_lock(folder, "job folder", wait=True):
        remove_stale_temps(folder)
        return _evaluate_locked(cfg, spec, seed, data, ood, cache_dir)


def _eval_path(cfg: RunConfig, spec: ModelSpec, seed: int, section: str, cache_dir: Path) -> tuple[Path, str]:
    h = cfg.eval_hash(spec, seed, section)
    return job_dir(cache_dir, cfg.job_hash(spec, seed)) / f"eval-{section}-{h[:16]}.json", h


def cached_evaluation(cfg: RunConfig, spec: ModelSpec, seed: int, cache_dir: Path) -> list[dict] | None:
    """The evaluation records of a job whose every section is cached, else None."""
    records: list[dict] = []
    for section in enabled_sections(cfg.eval):
        cached = _read_eval(*_eval_path(cfg, spec, seed, section, cache_dir))
        if cached is None:
            return None
        records += cached
    return records


def _evaluate_locked(cfg, spec, seed, data, ood, cache_dir) -> list[dict]:
    label = f"{spec.label} seed {seed}"
    model = None
    records: list[dict] = []
    for section in enabled_sections(cfg.eval):
        path, h = _eval_path(cfg, spec, seed, section, cache_dir)
        cached = _read_eval(path, h)
        if cached is None:
            if model is None:
                model = load_trained(cfg, spec, seed, cache_dir, data.num_classes)
            t0 = time.perf_counter()
            new = SECTIONS[section](model, EvalInputs(data.val, data.test, ood, cfg.eval, seed, label))
            write_json(path, sealed({"format": RESULT_FORMAT, "eval_hash": h, "seconds": time.perf_counter() - t0, "records": new}))
            log(f"{label}: {section} evaluated in {time.perf_counter() - t0:.0f} s")
            cached = new
        records += cached
    return records


def _read_eval(path: Path, eval_hash: str) -> list[dict] | None:
    record = _read_entry(path, "eval_hash", eval_hash, "delete it (or rerun with --retrain) to evaluate again")
    if record is not None and not isinstance(record.get("records"), list):
        raise VibbenchError(f"{path} holds no records; delete it (or rerun with --retrain) to evaluate again")
    return None if record is None else record["records"]


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


def metric_rows(cfg: RunConfig, spec: ModelSpec, record: dict, eval_records: list[dict] = ()) -> list[dict]:
    model = spec.resolved()
    base = {
        "run_id": cfg.run_id,
        "model": spec.name,
        "label": spec.label,
        "method": model["method"],
        "backbone": model["backbone"],
        "beta": model["beta"],
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


def job_data(cfg: RunConfig, data_dir: Path | None, dataset: Dataset | None = None) -> tuple[DeviceData, tuple[str, torch.Tensor] | None]:
    """The run's splits on the device and its OOD set (loaded from `data_dir` unless `dataset` is given)."""
    dataset = dataset if dataset is not None else load_dataset(cfg.train.dataset, data_dir)
    return device_data(dataset, cfg), ood_set(cfg, data_dir)


def run_unit(cfg: RunConfig, members: list[Job], cache_dir: Path, data_dir: Path | None, trainer: str, data=None) -> list[tuple[dict, list[dict]]]:
    """One unit of a sweep: train `members` (one model, or one population) unless cached, then evaluate each.

    Its arguments are plain picklable values, so an executor may run it in another process or on
    another machine: it loads the data itself unless `data` (a `job_data` pair) is given; every file
    it writes goes to the job folders under `cache_dir`. Returns (result record, evaluation records)
    per member, in order."""
    data, ood = data if data is not None else job_data(cfg, data_dir)
    records = train_jobs(cfg, members, data, cache_dir, trainer)
    return [(records[job], evaluate_job(cfg, *job, data, ood, cache_dir)) for job in members]


def run(
    cfg: RunConfig,
    out_dir: Path | None = None,
    cache_dir: Path | None = None,
    data_dir: Path | None = None,
    retrain: bool = False,
    train: bool = True,
    trainer: str = "auto",
    executor=None,
) -> Path:
    """Train (unless `train` is False: `vibbench eval`) and evaluate the run's models; write metrics.csv,
    summary.md, config.json, provenance.json and the report. The jobs not finished in the cache run on
    `executor` (default: `LocalExecutor`, one after the other in this process)."""
    from vibbench.runs.executors import LocalExecutor

    started = time.perf_counter()
    git_at_start = git_state()  # the code that runs; provenance is written at the end, when the tree may have moved on
    deterministic()
    out_dir = Path(out_dir) if out_dir is not None else Path("results") / cfg.run_id
    # absolute: the executor's workers may not share this process's working directory
    cache_dir = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).absolute()
    data_dir = Path(data_dir).absolute() if data_dir is not None else None
    check_writable(out_dir, "output folder")
    check_writable(cache_dir, "cache folder")
    with folder_lock(out_dir, "output folder", wait=False):
        # what killed runs left half-written: their temporary files (targets are replaced atomically)
        remove_stale_temps(out_dir, recursive=True)
        remove_stale_temps(cache_dir)
        return _run_locked(cfg, out_dir, cache_dir, data_dir, retrain, train, trainer, executor or LocalExecutor(), started, git_at_start)


def deterministic() -> None:
    """Bit-identical reruns on the CPU; on CUDA some kernels have no deterministic variant (warned, see README)."""
    torch.use_deterministic_algorithms(True, warn_only=True)
    # cuBLAS's deterministic mode (PyTorch's reproducibility notes); read when the first cuBLAS handle is created
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")


def _run_locked(cfg, out_dir, cache_dir, data_dir, retrain, train, trainer, executor, started, git_at_start) -> Path:
    dataset = load_dataset(cfg.train.dataset, data_dir)
    log(
        f"run {cfg.run_id}: {len(cfg.models)} model(s) x {len(cfg.seeds)} seed(s) on {cfg.train.dataset} "
        f"({len(dataset.train.labels[: cfg.train.max_train_examples])} training images, {cfg.train.epochs} epoch(s), device {cfg.device})"
    )
    jobs = [(spec, seed) for seed in cfg.seeds for spec in cfg.models]
    trained = {job: cached_result(cfg, *job, cache_dir, retrain) for job in jobs}
    pending = [job for job, record in trained.items() if record is None]
    if pending and not train:
        spec, seed = pending[0]
        raise VibbenchError(f"{spec.label} seed {seed} has no trained model in {cache_dir}; run `vibbench run` with the same options first")
    trainer = resolve_trainer(trainer, cfg.device)
    results: dict[Job, tuple[dict, list[dict]]] = {}
    for job, record in trained.items():
        if record is not None and (evaluated := cached_evaluation(cfg, *job, cache_dir)) is not None:
            results[job] = (record, evaluated)
    units = training_groups([job for job in jobs if job not in results], trainer)
    results |= executor.run_units(cfg, units, cache_dir, data_dir, trainer, dataset)
    rows = []
    for spec, seed in jobs:
        rows += metric_rows(cfg, spec, *results[(spec, seed)])
    df = write_metrics(rows, out_dir / "metrics.csv")
    config = cfg.to_dict() | {"run_id": cfg.run_id, "config_hash": cfg.config_hash}
    if cfg.eval is not None and cfg.eval.attacks is not None:
        config["eval"]["autoattack_label"] = autoattack_label(cfg.eval.attacks)
    write_json(out_dir / "config.json", config)
    options = options_of(cfg)
    write_json(out_dir / "options.json", options)  # `vibbench run --config DIR/options.json` reruns this config
    atomic_write_text(out_dir / "summary.md", summary_markdown(df, title=f"vibbench run {cfg.run_id}"))
    write_json(
        out_dir / "provenance.json",
        provenance(
            config_hash=cfg.config_hash,
            run_id=cfg.run_id,
            seeds=cfg.seeds,
            device=cfg.device,
            extra={
                "git": git_at_start,
                "profile": cfg.profile,
                "options": options,
                "wall_seconds": time.perf_counter() - started,
                "dataset": {"name": dataset.name, "source": dataset.source, "sha256": dataset.sha256},
                "training_path": {"population": "populations (torch.func vmap over stacked parameters)", "single": "one model at a time"}[trainer],
                "executor": executor.describe(),
                "job_hashes": {f"{s.label} seed {seed}": cfg.job_hash(s, seed) for seed in cfg.seeds for s in cfg.models},
                # jobs reused from the cache were trained by the code of an earlier run
                "trained_by": {f"{s.label} seed {seed}": results[(s, seed)][0].get("trained_by") for s, seed in jobs},
            },
        ),
    )
    write_report(out_dir, df)
    log(f"wrote {out_dir} in {time.perf_counter() - started:.0f} s")
    return out_dir
