"""What produced a result: library versions, device, git state, config hash, seeds, wall time."""

from __future__ import annotations

import datetime
import importlib.metadata
import platform
import subprocess
from pathlib import Path

import torch

from vibbench.core.precision import cpu_capability, cpu_has_native_bf16

LIBRARIES = ("torch", "torchvision", "torchattacks", "numpy", "pandas", "seaborn", "scipy")


def library_versions() -> dict[str, str | None]:
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            versions[lib] = importlib.metadata.version(lib)
        except importlib.metadata.PackageNotFoundError:
            versions[lib] = None
    try:
        versions["vibbench"] = importlib.metadata.version("vibbench")
    except importlib.metadata.PackageNotFoundError:
        versions["vibbench"] = None
    return versions


def device_name(device: str) -> str:
    if device == "cuda":
        return torch.cuda.get_device_name()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def git_state(path: Path | None = None) -> dict[str, str | bool | None]:
    """The commit of the source tree vibbench runs from, and whether it had uncommitted changes."""
    cwd = path or Path(__file__).resolve().parent
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=cwd, capture_output=True, text=True, timeout=10)
        if commit.returncode != 0:
            return {"commit": None, "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=cwd, capture_output=True, text=True, timeout=10)
        return {"commit": commit.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None}


def code_version() -> dict:
    """What trains a model: the git state of vibbench's source and the versions of vibbench and torch."""
    versions = library_versions()
    return {"git": git_state(), "vibbench": versions["vibbench"], "torch": versions["torch"]}


def provenance(*, config_hash: str, run_id: str, seeds, device: str, extra: dict | None = None) -> dict:
    return {
        "run_id": run_id,
        "config_hash": config_hash,
        "seeds": list(seeds),
        "device": device,
        "device_name": device_name(device),
        "cpu_threads": torch.get_num_threads(),
        "cpu_capability": cpu_capability(),
        "cpu_native_bf16": cpu_has_native_bf16(),
        "platform": platform.platform(),
        "versions": library_versions(),
        "git": git_state(),
        "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        **(extra or {}),
    }
