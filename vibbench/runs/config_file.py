"""Config files for `vibbench run --config FILE` and `vibbench eval --config FILE`: the run's options.

TOML (`*.toml`) or JSON (`*.json`), chosen by the file's extension. Every field is optional;
options given on the command line override the file, and the file overrides the profile:

    profile = "quick"                  # smoke | quick | paper | table1
    models = ["mlp_*", "mlp_vib:beta=1e-2"]
    seeds = 3                          # seeds 0..2
    dataset = "mnist"                  # mnist | fashion-mnist | synthetic
    device = "auto"                    # auto | cpu | cuda
    epochs = 20
    no_eval = false                    # true: clean accuracy only (--no-eval)
    attack_precision = "auto"          # auto | fp32 | bf16: the attacks' arithmetic (--attack-precision)

    [train]                            # overrides of the profile's TrainConfig
    batch_size = 100
    lr = 1e-4
    precision = "bf16"                 # fp32 (default) | bf16 (autocast, training only)

Every run writes `options.json` (the same options, every training field spelled out) into its
output folder; `vibbench run --config DIR/options.json` reruns it with the same config hash.
"""

from __future__ import annotations

import dataclasses
import json
import math
import tomllib
from pathlib import Path

from vibbench.core.errors import VibbenchError, check_positive_int, describe_os_error, unknown_name_message
from vibbench.runs.config import DEVICES, MAX_SEEDS, PROFILES, RunConfig, make_run_config, parse_model_specs
from vibbench.training.config import TrainConfig
from vibbench.core.precision import ATTACK_PRECISIONS, PRECISIONS

TRAIN_FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig) if f.name not in ("dataset", "epochs"))
"""Fields of the [train] table; dataset and epochs are top-level options, like on the command line."""

OPTION_FIELDS = ("profile", "models", "seeds", "dataset", "device", "epochs", "no_eval", "attack_precision", "train")
FORMATS = {".toml": "TOML", ".json": "JSON"}


def load_options(path: str | Path) -> dict:
    """Read and validate a config file; return the options it sets (a dict with some of OPTION_FIELDS).

    Any problem (unreadable, not UTF-8, bad syntax, unknown field, bad value) is a VibbenchError
    naming the file and the field."""
    path = Path(path)
    where = f"config file {path}"
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise VibbenchError(f"{where}: name it *.toml or *.json (the extension picks the format), not {path.suffix or 'no extension'!r}")
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise VibbenchError(f"cannot read {where}: {describe_os_error(exc)}") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise VibbenchError(f"{where} is not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset {exc.start})") from None
    try:
        doc = tomllib.loads(text) if fmt == "TOML" else json.loads(text)
    except RecursionError:
        raise VibbenchError(f"{where} is not valid {fmt}: nested too deeply") from None
    except ValueError as exc:  # json.JSONDecodeError and tomllib.TOMLDecodeError
        raise VibbenchError(f"{where} is not valid {fmt}: {_first_line(exc)}") from None
    return validate_options(doc, where)


def validate_options(doc, where: str = "config") -> dict:
    """Check a decoded config document field by field; return the options with numbers normalized."""
    return _check_table(doc, where, "field", _CHECKS, ": ")


def check_option(key: str, value, where: str):
    """Validate one option (a key of OPTION_FIELDS); `where` names it in the message (a field or a flag)."""
    return _CHECKS[key](value, where)


def check_train_field(name: str, value, where: str):
    """Validate one field of the [train] table (e.g. precision given as --precision)."""
    return _TRAIN_FIELD_CHECKS[name](value, where)


def run_config_from_options(options: dict, local_device: bool = True) -> RunConfig:
    """The RunConfig of validated options (defaults: the quick profile, device auto, evaluation on);
    local_device=False: the jobs run elsewhere (Ray), so device cuda needs no GPU here."""
    return make_run_config(
        options.get("profile", "quick"),
        models=options.get("models"),
        seeds=options.get("seeds"),
        dataset=options.get("dataset"),
        device=options.get("device", "auto"),
        epochs=options.get("epochs"),
        evaluate=not options.get("no_eval", False),
        train=options.get("train"),
        local_device=local_device,
        attack_precision=options.get("attack_precision"),
    )


def options_of(cfg: RunConfig) -> dict:
    """The options that rebuild `cfg` exactly (same config hash): what a run writes to options.json."""
    if cfg.seeds != tuple(range(len(cfg.seeds))):
        raise ValueError(f"seeds {cfg.seeds} are not 0..N-1; a config file cannot express them")
    train = {name: getattr(cfg.train, name) for name in TRAIN_FIELDS}
    train["adam_betas"] = list(train["adam_betas"])
    return {
        "profile": cfg.profile,
        "models": [spec.text for spec in cfg.models],
        "seeds": len(cfg.seeds),
        "dataset": cfg.train.dataset,
        "device": cfg.device,
        "epochs": cfg.train.epochs,
        "no_eval": cfg.eval is None,
        "attack_precision": cfg.eval.attacks.precision if cfg.eval is not None and cfg.eval.attacks is not None else None,
        "train": train,
    }


# ----------------------------------------------------------------------------- field checks


def _first_line(exc: Exception) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _show(value) -> str:
    """A short one-line description of a value for a message."""
    kind = {bool: "a boolean", int: "an integer", float: "a number", str: "a string", list: "a list", dict: "a table"}.get(type(value), type(value).__name__)
    text = repr(value)
    return f"{kind} {text if len(text) <= 60 else text[:57] + '...'}"


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _positive_int(value, where):
    return check_positive_int(where, value)


def _optional_positive_int(value, where):
    return check_positive_int(f"{where} (null: all examples; JSON only)", value, allow_none=True)


def _seeds(value, where):
    if not _is_int(value) or not 1 <= value <= MAX_SEEDS:
        raise VibbenchError(f"{where} must be a whole number from 1 to {MAX_SEEDS}, got {_show(value)}")
    return value


def _number(value, where):
    try:
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    except OverflowError:  # an integer beyond float range
        ok = False
    if not ok:
        raise VibbenchError(f"{where} must be a finite number, got {_show(value)}")
    return float(value)


def _number_pair(value, where):
    if not isinstance(value, list) or len(value) != 2:
        raise VibbenchError(f"{where} must be a list of two numbers, got {_show(value)}")
    return [_number(v, where) for v in value]


def _choice(kind: str, known):
    def check(value, where):
        if not isinstance(value, str):
            raise VibbenchError(f"{where} must be one of {', '.join(known)}, got {_show(value)}")
        if value not in known:
            raise VibbenchError(f"{where}: " + unknown_name_message(kind, value, tuple(known)))
        return value

    return check


def _boolean(value, where):
    if not isinstance(value, bool):
        raise VibbenchError(f"{where} must be true or false, got {_show(value)}")
    return value


def _models(value, where):
    if not isinstance(value, list) or not value or not all(isinstance(v, str) for v in value):
        raise VibbenchError(f'{where} must be a non-empty list of model patterns such as ["mlp_*", "mlp_vib:beta=1e-2"], got {_show(value)}')
    for entry in value:
        try:
            parse_model_specs([entry])
        except VibbenchError as exc:
            raise VibbenchError(f"{where}: {exc}") from None
    return list(value)


_TRAIN_CHECKS = {
    "int": _positive_int,
    "int | None": _optional_positive_int,
    "float": _number,
    "tuple[float, float]": _number_pair,
}
_TRAIN_FIELD_CHECKS = {f.name: _TRAIN_CHECKS.get(f.type) for f in dataclasses.fields(TrainConfig) if f.name in TRAIN_FIELDS} | {
    "precision": _choice("precision", PRECISIONS),
}


def _check_table(doc, where: str, kind: str, checks: dict, sep: str) -> dict:
    """Check each entry of a table with checks[key] (named `where` + sep + key); unknown keys are refused, listing the known ones."""
    if not isinstance(doc, dict):
        raise VibbenchError(f"{where} must be a table of {kind}s ({', '.join(checks)}), got {_show(doc)}")
    checked = {}
    for key, value in doc.items():
        if key not in checks:
            raise VibbenchError(f"{where}: " + unknown_name_message(kind, str(key), tuple(checks)))
        checked[key] = checks[key](value, f"{where}{sep}{key}")
    return checked


def _train(value, where):
    train = _check_table(value, where, "training field", _TRAIN_FIELD_CHECKS, ".")
    try:  # the ranges (lr in (0, 1), ...) are TrainConfig's own checks
        dataclasses.replace(TrainConfig(), **train)
    except VibbenchError as exc:
        raise VibbenchError(f"{where}: {exc}") from None
    return train


def _dataset(value, where):
    from vibbench.data.datasets import DATASETS

    return _choice("dataset", DATASETS)(value, where)


_CHECKS = {
    "profile": _choice("profile", PROFILES),
    "models": _models,
    "seeds": _seeds,
    "dataset": _dataset,
    "device": _choice("device", DEVICES),
    "epochs": _positive_int,
    "no_eval": _boolean,
    "attack_precision": lambda value, where: None if value is None else _choice("attack precision", ATTACK_PRECISIONS)(value, where),
    "train": _train,
}
