"""Your own models in a run: loaded (`vibbench eval --model [LABEL=]FILE.py:FACTORY [--weights PATH]`, or a
module given to `vibbench.evaluate`), checked, and evaluated by the harness beside the registry's models.

An own model is not trained and not cached: it is evaluated as given, once, under the run's first seed (0), by
the same sections and settings as the registry's models (`evaluation/sections.py`), in the process that writes
the run's outputs. Its rows in metrics.csv have method `external`, no backbone and no training rows. What identifies
it goes into config.json and provenance.json (`own_models`): the factory, the SHA-256 of its file and of its
weights file, and the SHA-256 of the weights it was evaluated with (`state_sha256`, also for a module given in
Python); the run id of a run with own models hashes these too, so it differs from the registry-only run's.
"""

from __future__ import annotations

import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from vibbench.core.errors import VibbenchError, unknown_name_message
from vibbench.core.hashing import stable_hash
from vibbench.core.progress import log
from vibbench.data.datasets import Dataset, Split
from vibbench.evaluation.clean import clean_metrics
from vibbench.evaluation.inference import eval_mode
from vibbench.evaluation.sections import SECTIONS, EvalInputs, enabled_sections
from vibbench.models.classifier import Classifier
from vibbench.models.external import ExternalModel, check_classifier
from vibbench.models.plugins import is_file_plugin, load_user_module
from vibbench.runs.config import RunConfig
from vibbench.runs.jobs import DeviceData, ood_set

LABEL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")
"""An own model's label: letters, digits and _ . + - (no ':' or '=', which name registry options)."""

CHECK_IMAGES = 8
"""Test images `check_classifier` runs an own model on before anything is evaluated."""


@dataclass
class OwnModel:
    """One model of your own: its label in the run, the module, whether it samples at test time, where it came from."""

    label: str
    module: nn.Module
    stochastic: bool
    source: dict = field(default_factory=dict)

    def record(self) -> dict:
        """What config.json and provenance.json record of it (`own_models`)."""
        kind = type(self.module)
        return {
            "label": self.label,
            **self.source,
            "class": f"{kind.__module__}.{kind.__qualname__}",
            "stochastic": self.stochastic,
            "mean_path": self.stochastic and (isinstance(self.module, Classifier) or isinstance(getattr(self.module, "mean_mode", None), bool)),
            "parameters": sum(p.numel() for p in self.module.parameters()),
            "state_sha256": state_sha256(self.module),
        }


def state_sha256(module: nn.Module) -> str:
    """SHA-256 of a module's state_dict: every entry's name, dtype, shape and bytes, in name order."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _check_label(label, where: str) -> str:
    if not isinstance(label, str) or not LABEL.match(label):
        raise VibbenchError(f"{where}: the label {label!r} must be letters, digits and _ . + - (starting with a letter or digit)")
    return label


def _stochastic(module, stochastic) -> bool:
    declared = getattr(module, "stochastic", False) if stochastic is None else stochastic
    if not isinstance(declared, bool):
        raise VibbenchError(f"stochastic must be True or False, got {declared!r}")
    return declared


def own_model(module, *, label: str | None = None, stochastic: bool | None = None) -> OwnModel:
    """An own model given in Python; `stochastic` None: the module's own `stochastic` attribute (default False)."""
    if not isinstance(module, nn.Module):
        kind = type(module)
        raise VibbenchError(f"vibbench.evaluate takes a torch.nn.Module, got a {kind.__module__}.{kind.__qualname__}")
    label = _check_label(type(module).__name__ if label is None else label, "vibbench.evaluate")
    return OwnModel(label, module, _stochastic(module, stochastic), {"source": "python"})


def load_own_model(text: str, weights: str | Path | None = None) -> OwnModel:
    """`[LABEL=]FILE.py:FACTORY` or `[LABEL=]package.module:FACTORY`: FACTORY() is called with no arguments and must
    return the nn.Module; `weights` a state_dict file for it, read with torch.load(weights_only=True). The label
    defaults to FACTORY."""
    where = f"--model {text}"
    label, eq, rest = text.partition("=")
    if not eq or "/" in label or "\\" in label or ":" in label:
        label, rest = None, text
    source, colon, factory = rest.rpartition(":")
    if not colon or not source or not factory.isidentifier():
        raise VibbenchError(f"{where}: write FILE.py:FACTORY or package.module:FACTORY (optionally LABEL=...), FACTORY a function returning the model")
    label = _check_label(label if label is not None else factory, where)
    record: dict = {"source": "file" if is_file_plugin(source) else "module", "model": rest, "factory": factory}
    if is_file_plugin(source):
        path = Path(source).expanduser().absolute()
        if not path.is_file() or path.suffix != ".py":
            raise VibbenchError(f"{where}: {source} is not a Python file (*.py) here")
        record |= {"file": str(path), "file_sha256": file_sha256(path)}
    module = load_user_module(source)
    if record["source"] == "module" and getattr(module, "__file__", None):
        record |= {"file": str(Path(module.__file__).absolute()), "file_sha256": file_sha256(Path(module.__file__))}
    make = getattr(module, factory, None)
    if not callable(make):
        defined = sorted(k for k, v in vars(module).items() if callable(v) and not k.startswith("_") and getattr(v, "__module__", None) == module.__name__)
        if not defined:
            raise VibbenchError(f"{where}: {source} has no function {factory} (it defines no public function)")
        raise VibbenchError(f"{where}: {source}: " + unknown_name_message("function", factory, defined))
    try:
        model = make()
    except Exception as exc:
        raise VibbenchError(f"{where}: {factory}() failed: {type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}") from exc
    if not isinstance(model, nn.Module):
        kind = type(model)
        raise VibbenchError(f"{where}: {factory}() returned a {kind.__module__}.{kind.__qualname__}, not a torch.nn.Module")
    if weights is not None:
        record |= _load_weights(model, Path(weights), where)
    return OwnModel(label, model, _stochastic(model, None), record)


def _load_weights(model: nn.Module, path: Path, where: str) -> dict:
    if not path.is_file():
        raise VibbenchError(f"{where}: the weights file {path} does not exist")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise VibbenchError(
            f"{where}: {path} is not a state_dict torch.load(weights_only=True) reads ({type(exc).__name__}); save one with "
            "torch.save(model.state_dict(), PATH)"
        ) from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):  # `vibbench export` files, many checkpoints
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise VibbenchError(f"{where}: {path} holds no state_dict (a dict of parameter names to tensors); save one with torch.save(model.state_dict(), PATH)")
    result = model.load_state_dict(state, strict=False)
    if result.missing_keys or result.unexpected_keys:
        parts = [f"{len(keys)} {kind} ({', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''})" for kind, keys in (("missing", result.missing_keys), ("unexpected", result.unexpected_keys)) if keys]
        raise VibbenchError(f"{where}: {path} does not fit the model: {'; '.join(parts)} parameter names")
    return {"weights": str(path.absolute()), "weights_sha256": file_sha256(path)}


def own_run_id(cfg: RunConfig, own: list[OwnModel] | tuple = ()) -> str:
    """The run id: the config's, or with own models one that also hashes what identifies them."""
    if not own:
        return cfg.run_id
    ids = [{k: o.record()[k] for k in ("label", "class", "stochastic", "state_sha256")} for o in own]
    return f"{cfg.profile}-{cfg.train.dataset}-{stable_hash({'config': cfg.config_hash, 'own_models': ids})[:10]}"


def check_labels(cfg: RunConfig, own: list[OwnModel]) -> None:
    seen = {s.label for s in cfg.models}
    for o in own:
        if o.label in seen:
            raise VibbenchError(f"two models of the run are labelled {o.label!r}: give yours another label (--model LABEL=FILE.py:FACTORY, or label=)")
        seen.add(o.label)


def prepare_own_models(cfg: RunConfig, own: list[OwnModel], dataset: Dataset) -> list[nn.Module]:
    """Each own model checked (`check_classifier`, on the run's device) and seen through the harness's contract: a
    vibbench Classifier as it is, any other module as an `ExternalModel`. Fails before anything is evaluated."""
    check_labels(cfg, own)
    images = dataset.test.images[:CHECK_IMAGES].to(cfg.device)
    prepared = []
    for o in own:
        o.module.to(cfg.device)
        check_classifier(o.module, images, dataset.num_classes, name=o.label, dataset=dataset.name, stochastic=o.stochastic, gradients=cfg.eval is not None and cfg.eval.attacks is not None)
        if isinstance(o.module, Classifier):
            if o.module.stochastic != o.stochastic:
                raise VibbenchError(f"{o.label} is a vibbench model with stochastic={o.module.stochastic}; it cannot be declared otherwise")
            prepared.append(o.module)
        else:
            prepared.append(ExternalModel(o.module, name=o.label, num_classes=dataset.num_classes, stochastic=o.stochastic))
    return prepared


def evaluation_data(cfg: RunConfig, dataset: Dataset, data_dir: Path | None) -> tuple[DeviceData, tuple | None]:
    """The splits an own model is evaluated on (the run's validation and test images on the device; it is not trained)
    and the run's OOD set."""
    n = cfg.train.max_eval_examples

    def head(s: Split) -> Split:
        return Split(s.images[:n].to(cfg.device), s.labels[:n].to(cfg.device))

    return DeviceData(dataset.train, head(dataset.val), head(dataset.test), dataset.num_classes), ood_set(cfg, data_dir)


NOT_MEASURED = ("rate_bits", "izy_bits")
"""Clean metrics of a latent code, which a module that is not a vibbench model does not have."""


def own_rows(cfg: RunConfig, run_id: str, o: OwnModel, model: nn.Module, data: DeviceData, ood, seed: int = 0) -> list[dict]:
    """The rows of metrics.csv for one own model: clean metrics on val and test, then every evaluation section of the
    run, under the noise seed `seed`. A module that is not a vibbench model has no rate or KL (its `rate` OOD score and
    rate rows are left out) and, without a mean path, no mean-mode rows."""
    t0 = time.perf_counter()
    base = {
        "run_id": run_id, "model": o.label, "label": o.label, "method": "external", "backbone": "", "beta": None,
        "seed": seed, "dataset": cfg.train.dataset,
    }  # fmt: skip
    records = []
    with eval_mode(model):
        for split, s in (("val", data.val), ("test", data.test)):
            metrics = clean_metrics(model, s.images, s.labels, batch_size=cfg.train.eval_batch_size, seed=seed)
            records += [{"split": split, "eval_mode": m, "metric": k, "value": v} for (m, k), v in metrics.items()]
        bad = [f"{r['split']} {r['metric']}" for r in records if not math.isfinite(r["value"])]
        if bad:
            raise VibbenchError(f"{o.label}: non-finite {', '.join(bad[:4])} on the clean images: check the model's outputs")
        for section in enabled_sections(cfg.eval):
            t = time.perf_counter()
            records += SECTIONS[section](model, EvalInputs(data.val, data.test, ood, cfg.eval, seed, o.label))
            log(f"{o.label}: {section} evaluated in {time.perf_counter() - t:.0f} s")
    if isinstance(model, ExternalModel):
        records = [
            r for r in records
            if r["metric"] not in NOT_MEASURED and r.get("score") != "rate" and (model.has_mean_path or not model.stochastic or r["eval_mode"] != "mean")
        ]  # fmt: skip
    log(f"{o.label}: evaluated in {time.perf_counter() - t0:.0f} s")
    return [base | r for r in records]
