"""A run's trained models, back from the cache: `load_model` (the Python API) and `export_model` (`vibbench export`).

A run folder names its config (config.json, options.json); the config names each trained model's job in the cache
(`RunConfig.job_hash`). Both functions read the job as the runner does (`cache.cached_result`: the result's seal and
the checkpoint's SHA-256 and config hash; `jobs.load_trained`: the EMA weights in eval mode), so a damaged,
edited or foreign cache entry is refused here too.

The exported file (EXPORT_FORMAT) is a `torch.save` of plain data, readable with `torch.load(weights_only=True)`:

    {"format": "vibbench-model-1",
     "spec": {"name": "mlp_vib", "beta": 0.001, "dropout": 0.0, "label_smoothing": 0.0, "confidence_penalty": 0.0,
              "num_classes": 10, "latent_dim": 256, "eval_samples": 12, "train_samples": 1},
     "state_dict": {parameter name: tensor (CPU)},      # the EMA weights the run evaluated
     "vibbench_version": "0.1.0", "run_id": ..., "label": "mlp_vib", "seed": 0, "job_hash": ..., "plugins": [...]}

    model = vibbench.create_model(**doc["spec"]); model.load_state_dict(doc["state_dict"]); model.eval()

rebuilds the model (a plugin's model needs its plugin imported first).
"""

from __future__ import annotations

import importlib.metadata
import io
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from vibbench.core.atomic import atomic_write_bytes
from vibbench.core.errors import VibbenchError, unknown_name_message
from vibbench.core.paths import default_cache_dir
from vibbench.models.methods import HYPERPARAMETERS
from vibbench.models.plugins import load_plugins
from vibbench.models.registry import ARCHITECTURE_OPTIONS
from vibbench.runs.cache import cached_result, job_dir
from vibbench.runs.config import ModelSpec, RunConfig, parse_model_specs
from vibbench.runs.folder import recorded_cache_dir, run_config_of
from vibbench.runs.jobs import load_trained

if TYPE_CHECKING:
    from vibbench.models.classifier import Classifier

EXPORT_FORMAT = "vibbench-model-1"


def load_model(
    run_dir: str | Path, model: str, seed: int = 0, *, cache_dir: str | Path | None = None, device: str | torch.device = "cpu", plugins=()
) -> Classifier:
    """The trained model `model` (a label of the run, e.g. "mlp_vib" or "mlp_vib:beta=0.01") of seed `seed` of the run
    in `run_dir`: its EMA weights, verified like every cache read, in eval mode on `device`.

    cache_dir: the run cache holding it (default: the one the run recorded in provenance.json, else the default
    cache folder). plugins: modules (names or FILE.py paths) to import first, for the models of a run with --plugin.
    Evaluate it under the run's noise seed to reproduce its numbers: `vibbench.evaluation.inference.predict(model,
    images, seed=seed)` gives the predictions behind metrics.csv's clean test accuracy."""
    return _load(run_dir, model, seed, cache_dir, device, plugins)[0]


def export_model(
    run_dir: str | Path, model: str, seed: int, path: str | Path, *, cache_dir: str | Path | None = None, plugins=()
) -> Path:
    """Write the trained model (as `load_model` finds it) to `path` atomically, in the format of this module's
    docstring: a plain state_dict and the `create_model` arguments that rebuild it. Returns `path`."""
    loaded, cfg, spec, job_hash = _load(run_dir, model, seed, cache_dir, "cpu", plugins)
    doc = {
        "format": EXPORT_FORMAT,
        "spec": creation_spec(loaded),
        "state_dict": {k: v.detach().cpu().clone() for k, v in loaded.state_dict().items()},
        "vibbench_version": _version(),
        "run_id": cfg.run_id,
        "label": spec.label,
        "seed": seed,
        "job_hash": job_hash,
        "plugins": list(cfg.plugins),
    }
    buffer = io.BytesIO()
    torch.save(doc, buffer)
    data = buffer.getvalue()
    torch.load(io.BytesIO(data), weights_only=True)  # what the file promises: it loads without running code
    path = Path(path)
    atomic_write_bytes(path, data)
    return path


def creation_spec(model) -> dict:
    """The keyword arguments of `create_model` that rebuild `model`'s network and behaviour: its registry name,
    every hyperparameter of its method and its architecture options (explicit: a later default does not change it)."""
    return {"name": model.name} | {k: getattr(model.method, k) for k in HYPERPARAMETERS} | {k: getattr(model, k) for k in ARCHITECTURE_OPTIONS}


def _load(run_dir, model: str, seed: int, cache_dir, device, plugins) -> tuple:
    """(the loaded model, the run config, its spec, its job hash)."""
    load_plugins(plugins)
    run_dir = Path(run_dir)
    cfg, _ = run_config_of(run_dir)
    spec = find_spec(cfg, model)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed not in cfg.seeds:
        n = len(cfg.seeds)
        seeds = "seed 0" if cfg.seeds == (0,) else f"seeds 0..{n - 1}" if cfg.seeds == tuple(range(n)) else f"seeds {', '.join(map(str, cfg.seeds))}"
        raise VibbenchError(f"run {cfg.run_id} trained {seeds}, not seed {seed!r}; `vibbench run --seeds N` trains seeds 0..N-1")
    cache = Path(cache_dir) if cache_dir is not None else (recorded_cache_dir(run_dir) or default_cache_dir())
    job_hash = cfg.job_hash(spec, seed)
    if cached_result(cfg, spec, seed, cache) is None:  # verifies the result's seal and the checkpoint
        where = "" if cache.is_dir() else "; that folder does not exist"
        plugins_flags = "".join(f" --plugin {p}" for p in cfg.plugins)
        raise VibbenchError(
            f"{spec.label} seed {seed} of run {cfg.run_id} is not in the cache {cache} (no finished job {job_dir(cache, job_hash).name}{where}). "
            f"Pass the cache folder the run used (--cache-dir, cache_dir=), or run `vibbench run --config {run_dir / 'options.json'} "
            f"--out {run_dir} --cache-dir {cache}{plugins_flags}` again to retrain it (the same config: only missing models train)"
        )
    return load_trained(cfg, spec, seed, cache, num_classes=None, device=str(device)), cfg, spec, job_hash


def find_spec(cfg: RunConfig, model: str) -> ModelSpec:
    """The model of the run named `model`: its label (metrics.csv's label column), or a spec that parses to one of
    the run's (mlp_vib:beta=1e-2 for mlp_vib:beta=0.01)."""
    labels = [s.label for s in cfg.models]
    if not isinstance(model, str):
        raise VibbenchError(f"a model is named by its label (a string, such as {labels[0]!r}), got {model!r}")
    for spec in cfg.models:
        if model in (spec.label, spec.text):
            return spec
    try:
        parsed = parse_model_specs([model]) if not any(c in model for c in "*?[") else ()
    except VibbenchError:
        parsed = ()
    if len(parsed) == 1 and parsed[0] in cfg.models:
        return parsed[0]
    raise VibbenchError(unknown_name_message(f"model of run {cfg.run_id}", model, labels) + " (the labels of its metrics.csv)")


def _version() -> str | None:
    try:
        return importlib.metadata.version("vibbench")
    except importlib.metadata.PackageNotFoundError:
        return None
