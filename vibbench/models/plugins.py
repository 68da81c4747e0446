"""Plugins: modules of your own that register backbones and methods, imported before models are resolved.

`vibbench run|eval|list|export --plugin MODULE` imports MODULE, a dotted module name (importable: installed or on
PYTHONPATH) or the path of a FILE.py, before the run's models are resolved; what it registers
(`register_backbone`, `register_method`) is then trained and evaluated like the built-in models, under the same
frozen settings. A run records its plugins (`RunConfig.plugins`: module names, and files as absolute paths) in
config.json, and every process that runs a job imports them first (`vibbench.runs.jobs.run_unit`), so executors
that run jobs elsewhere (Ray workers) know the models too: there a file must be on a path every node reaches, and a
module must be installed on every node.

Loading is idempotent: a plugin already imported in this process is not imported again. A plugin is your own
code, outside vibbench: vibbench's own modules are refused here (they are imported by name where they are used, so
the layering checks of tests/test_architecture.py see every import of the package).
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

from vibbench.core.errors import VibbenchError
from vibbench.core.hashing import sha256_bytes
from vibbench.models.backbones import BACKBONES, CODES, FACTORIES
from vibbench.models.methods import BUILTIN_METHODS, METHODS

FILE_MODULE_PREFIX = "vibbench_plugin_"
"""A FILE.py plugin is imported as the module `vibbench_plugin_<stem>_<hash of its path>` (in sys.modules)."""


def is_file_plugin(text: str) -> bool:
    """Whether a --plugin value names a file (FILE.py or a path) rather than a dotted module name."""
    return text.endswith(".py") or "/" in text or "\\" in text


def load_plugins(plugins) -> tuple[str, ...]:
    """Import each plugin (in order); returns how each is recorded: a module name, or a file's absolute path."""
    if isinstance(plugins, str):
        plugins = [plugins]
    return tuple(dict.fromkeys(load_plugin(p) for p in plugins))  # in order, each once


def load_plugin(text: str) -> str:
    """Import one plugin, a dotted module name or a FILE.py path; returns its recorded form (see `load_plugins`).
    What a plugin that fails to import had registered is taken back, so that a corrected plugin can be loaded."""
    if not isinstance(text, str) or not text.strip():
        raise VibbenchError(f"a plugin is a module name or a FILE.py path, got {text!r}")
    text = text.strip()
    tables = (BACKBONES, FACTORIES, CODES, METHODS)
    before = [set(table) for table in tables]
    try:
        return _load_file(text) if is_file_plugin(text) else _load_module(text)
    except BaseException:
        for table, names in zip(tables, before):
            for name in set(table) - names:
                del table[name]
        raise


def load_user_module(text: str):
    """The module a plugin names (imported by `load_plugin` if it is not yet): where `vibbench eval --model
    FILE.py:FACTORY` (or package.module:FACTORY) finds FACTORY."""
    recorded = load_plugin(text)
    return sys.modules[_file_module_name(Path(recorded)) if is_file_plugin(text) else recorded]


def _file_module_name(path: Path) -> str:
    return f"{FILE_MODULE_PREFIX}{_identifier(path.stem)}_{sha256_bytes(str(path).encode())[:12]}"


def _load_file(text: str) -> str:
    path = Path(text).expanduser().absolute()
    if not path.is_file():
        raise VibbenchError(f"plugin file {text} does not exist (a plugin is a FILE.py path or a dotted module name)")
    if path.suffix != ".py":
        raise VibbenchError(f"plugin file {text} is not a Python file (*.py)")
    name = _file_module_name(path)
    if name in sys.modules:
        return str(path)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # as `import` does: the module can find itself (dataclasses, pickling by reference)
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    return str(path)


def _identifier(stem: str) -> str:
    return "".join(c if c.isalnum() or c == "_" else "_" for c in stem)


def _load_module(name: str) -> str:
    if not all(part.isidentifier() for part in name.split(".")):
        raise VibbenchError(f"plugin {name!r} is neither a dotted module name nor a FILE.py path")
    if name.split(".")[0] == "vibbench":
        raise VibbenchError(f"plugin {name!r} is part of vibbench, which loads its own modules; a plugin is your own module")
    try:
        importlib.import_module(name)
    except ModuleNotFoundError as exc:
        if exc.name is None or not (name == exc.name or name.startswith(exc.name + ".")):
            raise  # the plugin exists and imports something missing: its own error, with its traceback
        raise VibbenchError(
            f"plugin module {name!r} cannot be imported here (no module named {exc.name!r}): install it, put its folder "
            "on PYTHONPATH, or give the path of its file (--plugin path/to/plugin.py)"
        ) from None
    return name


def registered_outside(backbone: str, method: str) -> bool:
    """Whether the model `<backbone>_<method>` has a backbone or a method registered outside vibbench (by a plugin)."""
    module = getattr(FACTORIES[backbone], "__module__", "") or ""
    return module.split(".")[0] != "vibbench" or method not in BUILTIN_METHODS
