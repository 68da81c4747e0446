"""`vibbench run`: train every (model, seed) of a run config, evaluate it, write results.

Each (model, seed) is a job named by its hash (`RunConfig.job_hash`) with its own folder in
the cache (`vibbench.runs.cache`). A finished job is never trained again; a run that shares jobs
with an earlier one reuses them. This module holds the run's lifecycle: the locked output
folder, deterministic kernels, the jobs left to do handed to an executor, then the output files.
"""

from __future__ import annotations

import time
from pathlib import Path

from vibbench.core.atomic import atomic_write_text, remove_stale_temps, write_json
from vibbench.core.errors import VibbenchError
from vibbench.core.hashing import stable_hash
from vibbench.core.locks import folder_lock
from vibbench.core.manifest import begin_writing
from vibbench.core.paths import default_cache_dir
from vibbench.core.progress import log
from vibbench.data.datasets import Dataset, load_dataset
from vibbench.evaluation.settings import autoattack_label
from vibbench.evaluation.subsets import evaluation_set_record
from vibbench.reporting.metrics import summary_markdown, write_metrics
from vibbench.core.precision import attack_precision
from vibbench.reporting.report import write_report
from vibbench.runs.cache import cached_evaluation, cached_result, check_writable
from vibbench.runs.config import RunConfig
from vibbench.runs.config_file import options_of
from vibbench.runs.executors import Executor, LocalExecutor, RayExecutor
from vibbench.runs.output_folder import check_output_folder, finish_output_folder
from vibbench.runs.jobs import (
    Job,
    check_precisions,
    deterministic,
    metric_rows,
    resolve_trainer,
    training_groups,
)
from vibbench.runs.own_models import OwnModel, evaluation_data, own_rows, own_run_id, prepare_own_models
from vibbench.runs.provenance import git_state, provenance


def run(
    cfg: RunConfig,
    out_dir: Path | None = None,
    cache_dir: Path | None = None,
    data_dir: Path | None = None,
    retrain: bool = False,
    train: bool = True,
    trainer: str = "auto",
    executor: Executor | None = None,
    overwrite: bool = False,
    started: float | None = None,
    own_models: list[OwnModel] | tuple = (),
) -> Path:
    """Train (unless `train` is False: `vibbench eval`) and evaluate the run's models; write metrics.csv,
    summary.md, config.json, provenance.json and the report. The jobs not finished in the cache run on
    `executor` (default: `LocalExecutor`, one after the other in this process). An output folder holding another run
    or files vibbench did not write is refused unless `overwrite` (runs/output_folder.py); a run that fails before
    writing its files leaves no folder behind. `started`: the time.perf_counter() its wall time counts from (the
    command line's start; default: now). `own_models` (runs/own_models.py)
    are checked before anything runs and evaluated here, beside the registry's models."""
    started = time.perf_counter() if started is None else started
    git_at_start = git_state()  # the code that runs; provenance is written at the end, when the tree may have moved on
    deterministic()
    run_id = own_run_id(cfg, own_models)
    out_dir = Path(out_dir) if out_dir is not None else Path("results") / run_id
    # absolute: the executor's workers may not share this process's working directory
    cache_dir = (Path(cache_dir) if cache_dir is not None else default_cache_dir()).absolute()
    data_dir = Path(data_dir).absolute() if data_dir is not None else None
    # what the output folder's manifest records as the run's identity: the config's hash, and with own models (which
    # the config hash leaves out) the run id too, so that another model of yours never silently replaces a run
    identity = cfg.config_hash if not own_models else stable_hash({"config_hash": cfg.config_hash, "run_id": run_id})
    earlier = check_output_folder(out_dir, identity, overwrite)  # before anything is created
    check_writable(out_dir, "output folder")
    check_writable(cache_dir, "cache folder")
    if not isinstance(executor, RayExecutor):  # the jobs run on this machine (under Ray each unit checks its own)
        check_precisions(cfg, train)
    with folder_lock(out_dir, "output folder", wait=False, tidy=True):
        # what killed runs left half-written: their temporary files (targets are replaced atomically)
        remove_stale_temps(out_dir, recursive=True)
        remove_stale_temps(cache_dir)
        dataset = load_dataset(cfg.train.dataset, data_dir)
        own = prepare_own_models(cfg, list(own_models), dataset)  # before any training: a model that cannot be evaluated fails now
        log(
            f"run {cfg.run_id}: {len(cfg.models)} model(s) x {len(cfg.seeds)} seed(s) on {cfg.train.dataset} "
            f"({len(dataset.train.labels[: cfg.train.max_train_examples])} training images, {cfg.train.epochs} epoch(s), device {cfg.device})"
        )
        executor = executor or LocalExecutor()
        trainer, results = _run_jobs(cfg, cache_dir, data_dir, retrain, train, trainer, executor, dataset)
        if own_models:
            data, ood = evaluation_data(cfg, dataset, data_dir)
            own_models = {o.label: (o.record(), own_rows(cfg, run_id, o, model, data, ood, cfg.seeds[0])) for o, model in zip(own_models, own)}
        begin_writing(out_dir, identity)  # a run killed while writing leaves a folder the next run recognizes
        _write_outputs(cfg, out_dir, cache_dir, dataset, results, trainer, executor, started, git_at_start, own_models or {}, run_id)
        finish_output_folder(out_dir, identity, earlier)
    return out_dir


def _attack_arithmetic(cfg: RunConfig, executor) -> dict | None:
    """The robustness attacks' precision setting and what it resolved to on this machine (None: no attacks; the
    resolution None when the jobs ran on other machines, under Ray)."""
    if cfg.eval is None or cfg.eval.attacks is None:
        return None
    setting = cfg.eval.attacks.precision
    return {"setting": setting, "resolved": None if isinstance(executor, RayExecutor) else attack_precision(cfg.device, setting)}


def _run_jobs(cfg, cache_dir, data_dir, retrain, train, trainer, executor, dataset) -> tuple[str, dict[Job, tuple[dict, list[dict]]]]:
    """(the trainer used, (result record, evaluation records) per job): from the cache where finished, else from `executor`."""
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
    return trainer, results


def _write_outputs(
    cfg: RunConfig, out_dir: Path, cache_dir: Path, dataset: Dataset, results: dict, trainer: str, executor: Executor, started: float, git_at_start: dict,
    own: dict | None = None, run_id: str | None = None,
) -> None:
    """metrics.csv, config.json, evaluation_set.json, options.json, summary.md, provenance.json and the report, in this order.
    `own`: label -> (record, metrics rows) of the run's own models; `run_id`: the run's (with own models, not the config's)."""
    own, run_id = own or {}, run_id or cfg.run_id
    rows = []
    for seed in cfg.seeds:
        for spec in cfg.models:
            rows += metric_rows(cfg, spec, *results[(spec, seed)])
    rows = [r | {"run_id": run_id} for r in rows] + [r for _, own_rows_of in own.values() for r in own_rows_of]
    df = write_metrics(rows, out_dir / "metrics.csv")
    config = cfg.to_dict() | {"run_id": run_id, "config_hash": cfg.config_hash}
    if own:  # not in the config hash (load_model rebuilds the registry's config from options.json); in the run id
        config["own_models"] = [record for record, _ in own.values()]
    if cfg.eval is not None and cfg.eval.attacks is not None:
        config["eval"]["autoattack_label"] = autoattack_label(cfg.eval.attacks)
    write_json(out_dir / "config.json", config)
    if cfg.eval is not None:  # which test images the sections measured, to check or reuse them
        n_test = len(dataset.test.labels[: cfg.train.max_eval_examples])
        write_json(out_dir / "evaluation_set.json", evaluation_set_record(n_test, cfg.eval))
    options = options_of(cfg)
    write_json(out_dir / "options.json", options)  # `vibbench run --config DIR/options.json` reruns this config
    atomic_write_text(out_dir / "summary.md", summary_markdown(df, title=f"vibbench run {run_id}"))
    extra = {
        "git": git_at_start,
        "profile": cfg.profile,
        "options": options,
        "wall_seconds": (wall := time.perf_counter() - started),  # the run's one wall time: here, in the report and the log
        "cache_dir": str(cache_dir),  # where its trained models are: vibbench.load_model and `vibbench export` look there
        "dataset": {"name": dataset.name, "source": dataset.source, "sha256": dataset.sha256},
        "training_path": {"population": "populations (torch.func vmap over stacked parameters)", "single": "one model at a time"}[trainer],
        "executor": executor.describe(),
        "attack_precision": _attack_arithmetic(cfg, executor),
        "job_hashes": {f"{s.label} seed {seed}": cfg.job_hash(s, seed) for seed in cfg.seeds for s in cfg.models},
        # jobs reused from the cache were trained by the code of an earlier run
        "trained_by": {f"{s.label} seed {seed}": results[(s, seed)][0].get("trained_by") for seed in cfg.seeds for s in cfg.models},
    }
    if own:
        extra["own_models"] = config["own_models"]
    prov = provenance(config_hash=cfg.config_hash, run_id=run_id, seeds=cfg.seeds, device=cfg.device, extra=extra)
    write_json(out_dir / "provenance.json", prov)
    write_report(out_dir, df)
    log(f"wrote {out_dir}: wall time {wall:.0f} s ({wall / 60:.1f} min), as provenance.json and report.md record it")
