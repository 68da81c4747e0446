"""A finished run's folder read back: what `vibbench show` prints, and the run config its trained models belong to.

`vibbench run` writes into its folder metrics.csv, summary.md, report.md, config.json (the resolved config and
its hash), options.json (the options that rebuild that config) and provenance.json (wall time, the cache folder,
versions, ...). `show_run` needs only text files (no torch); `run_config_of` rebuilds the run's `RunConfig` from
options.json and checks it against config.json's hash, so that the jobs it names are the ones the run trained.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from vibbench.core.errors import VibbenchError, describe_os_error
from vibbench.core.progress import duration

if TYPE_CHECKING:  # runs.config imports torch: `show` does without
    from vibbench.runs.config import RunConfig


def read_json(path: Path, what: str) -> dict | None:
    """A JSON object file of a run folder; None if absent, a VibbenchError if unreadable or not an object."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except (OSError, UnicodeDecodeError) as exc:
        reason = describe_os_error(exc) if isinstance(exc, OSError) else "not UTF-8 text"
        raise VibbenchError(f"cannot read the {what} {path}: {reason}") from None
    try:
        doc = json.loads(text)
    except ValueError as exc:
        raise VibbenchError(f"the {what} {path} is not valid JSON ({exc}); the run folder is damaged") from None
    if not isinstance(doc, dict):
        raise VibbenchError(f"the {what} {path} is not a JSON object; the run folder is damaged")
    return doc


def check_run_folder(run_dir: Path) -> Path:
    """`run_dir` as a Path, if it holds metrics.csv (a finished run); else one line saying what it is."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VibbenchError(f"{run_dir} is not a folder: give the output folder of `vibbench run` (results/<run id> by default)")
    if not (run_dir / "metrics.csv").is_file():
        raise VibbenchError(f"{run_dir} has no metrics.csv: it is not the folder of a finished `vibbench run`")
    return run_dir


def show_run(run_dir: Path) -> str:
    """What `vibbench show DIR` prints: the run id, profile and models, wall time, where the report and the cache
    are, then summary.md (made from metrics.csv when the folder lacks it)."""
    run_dir = check_run_folder(run_dir)
    config = read_json(run_dir / "config.json", "run config") or {}
    prov = read_json(run_dir / "provenance.json", "provenance record") or {}
    run_id = config.get("run_id") or prov.get("run_id") or run_dir.name
    lines = [f"run:       {run_id}"]
    what = []
    if config.get("profile"):
        what.append(f"profile {config['profile']}")
    if isinstance(config.get("train"), dict) and config["train"].get("dataset"):
        what.append(f"dataset {config['train']['dataset']}")
    if isinstance(config.get("models"), list):
        what.append(f"{len(config['models'])} model(s)")
    if isinstance(config.get("seeds"), list):
        what.append(f"{len(config['seeds'])} seed(s)")
    if config.get("device"):
        what.append(f"device {config['device']}")
    if what:
        lines.append(f"config:    {', '.join(what)}")
    wall = prov.get("wall_seconds")
    if isinstance(wall, int | float):
        when = f", finished {prov['created']}" if prov.get("created") else ""
        lines.append(f"wall time: {duration(wall)}{when}")
    else:
        lines.append("wall time: not recorded (no provenance.json)")
    report = run_dir / "report.md"
    if report.is_file():
        figures = run_dir / "figures"
        lines.append(f"report:    {report}" + (f" (figures in {figures}/)" if figures.is_dir() else ""))
    else:
        lines.append(f"report:    none; `vibbench report {run_dir}` writes it from metrics.csv")
    if prov.get("cache_dir"):
        lines.append(f"cache:     {prov['cache_dir']}")
    if config.get("plugins"):
        lines.append(f"plugins:   {', '.join(config['plugins'])}")
    summary = run_dir / "summary.md"
    if summary.is_file():
        try:
            text = summary.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise VibbenchError(f"cannot read {summary}: {exc}") from None
    else:
        from vibbench.reporting.metrics import read_metrics, summary_markdown

        text = summary_markdown(read_metrics(run_dir), title=f"vibbench run {run_id} (summary.md is missing: made from metrics.csv)")
    return "\n".join(lines) + "\n\n" + text.rstrip("\n") + "\n"


def recorded_cache_dir(run_dir: Path) -> Path | None:
    """The cache folder the run used, if its provenance.json records it."""
    prov = read_json(Path(run_dir) / "provenance.json", "provenance record") or {}
    return Path(prov["cache_dir"]) if isinstance(prov.get("cache_dir"), str) and prov["cache_dir"] else None


def run_config_of(run_dir: Path) -> tuple[RunConfig, dict]:
    """(the RunConfig of a finished run, its config.json): rebuilt from options.json, its hash checked against
    config.json's. The run's plugins must be loaded already (their models are resolved here)."""
    import dataclasses

    from vibbench.runs.config_file import run_config_from_options, validate_options

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise VibbenchError(f"{run_dir} is not a folder: give the output folder of `vibbench run` (results/<run id> by default)")
    config = read_json(run_dir / "config.json", "run config")
    options = read_json(run_dir / "options.json", "run options")
    if config is None or options is None:
        missing = " and ".join(n for n, d in (("config.json", config), ("options.json", options)) if d is None)
        raise VibbenchError(f"{run_dir} has no {missing}: it is not the folder of a finished `vibbench run` (or one of a vibbench before options.json)")
    plugins = tuple(config.get("plugins") or ())
    try:
        cfg = run_config_from_options(validate_options(options, f"{run_dir / 'options.json'}"), local_device=False)
    except VibbenchError as exc:
        if plugins:
            flags = " ".join(f"--plugin {p}" for p in plugins)
            raise VibbenchError(f"run {run_dir} used the plugin(s) {', '.join(plugins)}: load them first ({flags}; plugins=[...] in Python). {exc}") from None
        raise
    cfg = dataclasses.replace(cfg, plugins=plugins)
    if cfg.config_hash != config.get("config_hash"):
        recorded = {m.get("label"): m for m in config.get("models", []) if isinstance(m, dict)}
        changed = [s.label for s in cfg.models if s.label in recorded and {k: v for k, v in recorded[s.label].items() if k != "label"} != s.resolved()]
        detail = (
            f"the model(s) {', '.join(changed)} differ from the ones it trained (a plugin's code changed since?)"
            if changed
            else "it was written by another version of vibbench, or edited"
        )
        raise VibbenchError(
            f"{run_dir / 'options.json'} rebuilds config {cfg.config_hash[:10]}, not the run's {str(config.get('config_hash'))[:10]}: "
            f"{detail}; its trained models cannot be found from this folder"
        )
    return cfg, config
