"""A run's output folder: vibbench writes into it only where it replaces nothing but its own files.

A run writes `RUN_FILES` and the report's figures (`is_run_file`); the folder's manifest (`core/manifest.py`) lists
the ones it wrote. Before anything runs, `check_output_folder` refuses, in one line each:

- a file at a name the run writes that vibbench did not write (or that was changed since), even with --overwrite:
  a user's own report.md or metrics.csv is never replaced;
- any other file vibbench did not write, unless --overwrite (the run is then written beside it, which is kept);
- another run (a different config hash), unless --overwrite (its files are then replaced, and those the new run
  does not write again are deleted by `finish_output_folder`, so that no stale figure or table survives).

The same config again (a rerun, a resume, `vibbench eval` after `vibbench run`) writes over its own files. A folder
of a vibbench before manifests, or one a killed run left half-written, is recognized by its config.json (or the
incomplete manifest) and the names of its files.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from vibbench.core.errors import VibbenchError
from vibbench.core.manifest import MANIFEST, finish_writing, read_manifest, relative
from vibbench.reporting.figures import FIGURES

RUN_FILES = ("metrics.csv", "timing.csv", "summary.md", "report.md", "config.json", "evaluation_set.json", "options.json", "provenance.json")
"""The files `vibbench run` and `vibbench eval` write at the top of their output folder (figures/ besides)."""

FIGURE_FORMATS = ("png", "pdf")


def is_run_file(rel: str) -> bool:
    """Whether a run writes the file at `rel` (relative to its output folder, with `/`)."""
    if rel in RUN_FILES:
        return True
    folder, _, name = rel.partition("/")
    stem, _, ext = name.rpartition(".")
    return folder == "figures" and "/" not in name and ext in FIGURE_FORMATS and any(stem == f or stem.startswith(f + "_") for f in FIGURES)


def _files(out_dir: Path) -> list[Path]:
    """Every file under `out_dir` but the lock, the manifest and temporary files (`.<name>...tmp`: atomic writes
    under way or killed, the writable probe)."""
    found = []
    for root, _, names in os.walk(out_dir):
        for name in names:
            if name in (".lock", MANIFEST) or (name.startswith(".") and name.endswith(".tmp")):
                continue
            found.append(Path(root) / name)
    return sorted(found)


def _stamp(path: Path) -> tuple[int, int, int]:
    st = path.stat()
    return st.st_ino, st.st_mtime_ns, st.st_size


def _recorded_run(out_dir: Path) -> tuple[str | None, str | None]:
    """(config hash, run id) from config.json, or Nones if it is absent or unreadable."""
    try:
        config = json.loads((out_dir / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None, None
    if not isinstance(config, dict):
        return None, None
    pick = lambda key: config[key] if isinstance(config.get(key), str) else None  # noqa: E731
    return pick("config_hash"), pick("run_id")


def _listed(paths: list[Path], out_dir: Path) -> str:
    names = [relative(out_dir, p) for p in paths]
    return ", ".join(names[:3]) + (f" and {len(names) - 3} more" if len(names) > 3 else "")


def check_output_folder(out_dir: Path, config_hash: str, overwrite: bool = False) -> dict[Path, tuple]:
    """Refuse an output folder the run of `config_hash` may not write into (see the module's docstring), before
    anything is created. Returns the files of the run the folder holds now, which this run may replace, each with
    its (inode, mtime, size), for `finish_output_folder`."""
    out_dir = Path(out_dir)
    if not out_dir.is_dir():
        return {}  # absent (created later), or not a folder (check_writable says so)
    files = _files(out_dir)
    if not files:
        return {}
    manifest = read_manifest(out_dir)
    recorded_hash, run_id = _recorded_run(out_dir)
    if manifest is not None and manifest.complete:
        earlier = manifest.config_hash
        ours = {p for p in files if manifest.lists(out_dir, p)}
    else:  # a folder of a vibbench before manifests, or left half-written: its config.json and the names decide
        earlier = (manifest.config_hash if manifest is not None else None) or recorded_hash
        ours = {p for p in files if earlier and is_run_file(relative(out_dir, p))}
    foreign = [p for p in files if p not in ours]
    clashing = [p for p in foreign if is_run_file(relative(out_dir, p))]
    if clashing:
        raise VibbenchError(
            f"{clashing[0]} was not written by vibbench (or was changed since), and the run writes a file of that name: "
            "vibbench does not replace it, even with --overwrite; move it away or choose another --out"
        )
    if foreign and not overwrite:
        raise VibbenchError(
            f"the output folder {out_dir} holds files vibbench did not write ({_listed(foreign, out_dir)}): choose another "
            "--out, or pass --overwrite to write the run beside them (they are kept)"
        )
    if ours and earlier != config_hash and not overwrite:
        what = f"run {run_id}" if run_id else f"the run of config {str(earlier)[:10]}"
        raise VibbenchError(
            f"the output folder {out_dir} holds another run ({what}): choose another --out, "
            "or pass --overwrite to replace that run's files (files vibbench did not write are kept)"
        )
    return {p: _stamp(p) for p in ours}


def finish_output_folder(out_dir: Path, config_hash: str, earlier: dict[Path, tuple]) -> list[Path]:
    """After the run wrote its files: delete the files of the earlier run (`check_output_folder`'s) that it did not
    write again, and list what it wrote in the manifest. Returns the deleted files."""
    out_dir = Path(out_dir)
    written, stale = [], []
    for p in _files(out_dir):
        if not is_run_file(relative(out_dir, p)):
            continue  # a file vibbench did not write: kept, never listed
        (stale if p in earlier and _stamp(p) == earlier[p] else written).append(p)
    for p in stale:
        p.unlink(missing_ok=True)
    finish_writing(out_dir, config_hash, written)
    return stale


__all__ = ["RUN_FILES", "check_output_folder", "finish_output_folder", "is_run_file"]
