"""Which files of a folder vibbench wrote: its manifest, `.vibbench-files.json`, so that it replaces and deletes only its own.

The manifest names the run the folder holds (its config hash) and maps each file vibbench wrote there (its path
relative to the folder, with `/`) to its SHA-256: a file listed with its current content is vibbench's; any other
file, also one vibbench wrote and someone changed since, is not. A writer marks the folder as being written
(`begin_writing`) before its first file and lists what it wrote at the end (`finish_writing`), so a writer killed in
between leaves an incomplete manifest, which lists nothing: then the caller decides by the files' names, as for a
folder of a vibbench before manifests (none) or a damaged manifest. Writes are atomic (`core/atomic.py`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vibbench.core.atomic import write_json
from vibbench.core.hashing import sha256_bytes

MANIFEST = ".vibbench-files.json"
FORMAT = "vibbench-files-1"


@dataclass(frozen=True)
class Manifest:
    config_hash: str | None
    complete: bool  # False: being written, killed while written, or damaged; `files` is then empty
    files: dict[str, str] = field(default_factory=dict)  # relative path -> SHA-256

    def lists(self, folder: Path, path: Path) -> bool:
        """Whether `path` (under `folder`) is listed here with its current content."""
        digest = self.files.get(relative(folder, path))
        return digest is not None and path.is_file() and file_sha256(path) == digest


def relative(folder: Path, path: Path) -> str:
    return Path(path).relative_to(folder).as_posix()


def file_sha256(path: Path) -> str:
    return sha256_bytes(Path(path).read_bytes())


def read_manifest(folder: Path) -> Manifest | None:
    """The folder's manifest; None if it has none; an incomplete one if it cannot be read (the names decide)."""
    try:
        doc = json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return Manifest(None, False)
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        return Manifest(None, False)
    files = doc.get("files")
    complete = doc.get("complete") is True and isinstance(files, dict) and all(isinstance(v, str) for v in files.values())
    config_hash = doc.get("config_hash") if isinstance(doc.get("config_hash"), str) else None
    return Manifest(config_hash, complete, dict(files) if complete else {})


def _write(folder: Path, manifest: Manifest) -> None:
    doc = {"format": FORMAT, "config_hash": manifest.config_hash, "complete": manifest.complete, "files": dict(sorted(manifest.files.items()))}
    write_json(Path(folder) / MANIFEST, doc)


def begin_writing(folder: Path, config_hash: str) -> None:
    """Mark `folder` as being written by the run of `config_hash` (before its first file)."""
    _write(folder, Manifest(config_hash, False))


def finish_writing(folder: Path, config_hash: str, paths) -> None:
    """List `paths` (files under `folder`) as what the run of `config_hash` wrote there, with their content now."""
    folder = Path(folder)
    _write(folder, Manifest(config_hash, True, {relative(folder, p): file_sha256(p) for p in paths}))


def record_rewritten(folder: Path, written=(), removed=()) -> None:
    """After a writer replaced `written` and deleted `removed` in a folder whose manifest is complete (`vibbench
    report` on a finished run): list their new content, so that they stay vibbench's. Other folders are left alone."""
    folder = Path(folder)
    manifest = read_manifest(folder)
    if manifest is None or not manifest.complete:
        return
    files = dict(manifest.files)
    for p in removed:
        files.pop(relative(folder, p), None)
    files |= {relative(folder, p): file_sha256(p) for p in written}
    _write(folder, Manifest(manifest.config_hash, True, files))
