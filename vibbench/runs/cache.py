"""The run cache: one folder per job, named by its hash, holding sealed JSON entries and checkpoints.

A job's folder holds `job.json` (what it is), `train_state.pt` while training (resumable), then
`model.pt` (the EMA weights) and `result.json` (its metrics), and one `eval-<section>-<hash>.json`
per evaluation section. Every JSON entry carries the hash it was made for and the SHA-256 of its
content, so an entry of another config, or a damaged or edited one, is refused instead of used.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from vibbench.core.errors import DISK_FULL, VibbenchError, describe_os_error
from vibbench.core.hashing import stable_hash
from vibbench.core.progress import log
from vibbench.evaluation.sections import enabled_sections
from vibbench.core.atomic import write_json
from vibbench.runs.config import ModelSpec, RunConfig
from vibbench.training.checkpoints import load_checkpoint, save_checkpoint

RESULT_FORMAT = "vibbench-job-1"

PROBE_BYTES = 65536
"""check_writable writes this much: a folder that cannot take 64 KiB cannot take a checkpoint."""


def check_writable(folder: Path, what: str) -> None:
    """Fail before any training if `folder` cannot take a file (read-only, missing permissions, disk full).
    The folders the probe creates are removed again: whatever fails next leaves nothing behind."""
    created = [p for p in (folder, *folder.parents) if not p.exists()]
    probe = None
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=f".write-test.{os.getpid()}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        advice = "Choose another folder or free space" if exc.errno in DISK_FULL else "Choose another folder"
        raise VibbenchError(f"cannot write to the {what} {folder}: {describe_os_error(exc)}. {advice}.") from None
    finally:
        if probe is not None:
            with contextlib.suppress(OSError):
                os.unlink(probe)
        for p in created:  # deepest first
            try:
                p.rmdir()
            except OSError:
                break


def job_dir(cache_dir: Path, job_hash: str) -> Path:
    return cache_dir / "jobs" / job_hash[:32]


def population_dir(cache_dir: Path, population_hash: str) -> Path:
    """Where a population being trained keeps its resumable state (removed once its members are saved)."""
    return cache_dir / "populations" / population_hash[:32]


def sealed(record: dict) -> dict:
    """`record` plus the SHA-256 of its JSON form, so that a damaged or edited cache entry is detected."""
    return record | {"sha256": _digest(record)}


def _digest(record: dict) -> str:
    return stable_hash(json.loads(json.dumps(record, default=str)))  # as it reads back from the file


def _read_entry(path: Path, key: str, expected: str, advice: str) -> dict | None:
    """A JSON cache entry made for `expected` (its `key`), its seal verified; None if absent or unreadable
    (written atomically, so that means damage: it is computed again, and the log says which file and why)."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as exc:
        reason = describe_os_error(exc) if isinstance(exc, OSError) else "not UTF-8 text" if isinstance(exc, UnicodeDecodeError) else f"not valid JSON: {exc}"
        log(f"damaged cache entry {path} ({reason}): computing it again")
        return None
    if not isinstance(record, dict) or record.get("format") != RESULT_FORMAT or record.get(key) != expected:
        raise VibbenchError(f"{path} does not match its config ({key} {expected[:12]}); {advice}")
    digest = record.pop("sha256", None)  # entries of vibbench before the seal have none
    if digest is not None and digest != _digest(record):
        raise VibbenchError(f"{path} fails its SHA-256 check (corrupt or edited); {advice}")
    return record


def write_job_description(folder: Path, cfg: RunConfig, spec: ModelSpec, seed: int) -> None:
    """`job.json`: what the job is (model, seed, training config, device), for whoever browses the cache."""
    folder.mkdir(parents=True, exist_ok=True)
    record = {"job_hash": cfg.job_hash(spec, seed), "model": spec.resolved(), "seed": seed, "train": cfg.train.to_dict(), "device": cfg.device}
    write_json(folder / "job.json", record)


def save_result(folder: Path, job_hash: str, state_dict: dict, record: dict) -> None:
    """A finished job: its weights, then its sealed record (the record's presence means the job is done)."""
    save_checkpoint(folder / "model.pt", state_dict, job_hash)
    write_json(folder / "result.json", sealed(record))
    (folder / "train_state.pt").unlink(missing_ok=True)


def cached_result(cfg: RunConfig, spec: ModelSpec, seed: int, cache_dir: Path, retrain: bool = False) -> dict | None:
    """The finished job's record, verified (its weights included), or None if it must be trained."""
    h = cfg.job_hash(spec, seed)
    folder = job_dir(cache_dir, h)
    if retrain and folder.exists():
        shutil.rmtree(folder)
    result_path, model_path = folder / "result.json", folder / "model.pt"
    if result_path.exists() and not model_path.exists():  # save_result writes model.pt first: damage, not an interruption
        log(f"damaged cache entry {folder}: result.json without model.pt; training it again")
    if result_path.exists() and model_path.exists():
        record = _read_entry(result_path, "job_hash", h, f"delete {folder} or rerun with --retrain")
        if record is not None:
            load_checkpoint(model_path, h)  # refuse a cache entry whose weights do not verify
            log(f"{spec.label} seed {seed}: trained model cached ({folder})")
            return record
    return None


def eval_path(cfg: RunConfig, spec: ModelSpec, seed: int, section: str, cache_dir: Path) -> tuple[Path, str]:
    """The cache entry of one evaluation section of a job, and the hash it is made for."""
    h = cfg.eval_hash(spec, seed, section)
    return job_dir(cache_dir, cfg.job_hash(spec, seed)) / f"eval-{section}-{h[:16]}.json", h


def read_eval(path: Path, eval_hash: str) -> list[dict] | None:
    """The records of a cached evaluation section, verified; None if absent or damaged (evaluated again)."""
    record = _read_entry(path, "eval_hash", eval_hash, "delete it (or rerun with --retrain) to evaluate again")
    if record is not None and not isinstance(record.get("records"), list):
        raise VibbenchError(f"{path} holds no records; delete it (or rerun with --retrain) to evaluate again")
    return None if record is None else record["records"]


def write_eval(path: Path, eval_hash: str, seconds: float, records: list[dict]) -> None:
    write_json(path, sealed({"format": RESULT_FORMAT, "eval_hash": eval_hash, "seconds": seconds, "records": records}))


def cached_evaluation(cfg: RunConfig, spec: ModelSpec, seed: int, cache_dir: Path) -> list[dict] | None:
    """The evaluation records of a job whose every section is cached, else None."""
    records: list[dict] = []
    for section in enabled_sections(cfg.eval):
        cached = read_eval(*eval_path(cfg, spec, seed, section, cache_dir))
        if cached is None:
            return None
        records += cached
    return records
