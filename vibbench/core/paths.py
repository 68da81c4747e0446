"""Where vibbench keeps what it computes: one rule for the cache folder, shared by the run cache and the datasets."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root() -> Path:
    """$XDG_CACHE_HOME/vibbench, else ~/.cache/vibbench: the folder the run cache and the datasets default to."""
    if os.environ.get("XDG_CACHE_HOME"):
        return Path(os.environ["XDG_CACHE_HOME"]).expanduser() / "vibbench"
    return Path.home() / ".cache" / "vibbench"


def default_cache_dir() -> Path:
    """The run cache (checkpoints, job results): $VIBBENCH_CACHE_DIR, else `cache_root()`."""
    if os.environ.get("VIBBENCH_CACHE_DIR"):
        return Path(os.environ["VIBBENCH_CACHE_DIR"]).expanduser()
    return cache_root()
