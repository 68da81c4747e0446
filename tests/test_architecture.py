"""The package's shape: its folders are layers, each importing only the ones below it; no import cycles;
the light entry points (import vibbench, create_model, training, --help, list) load no heavy library.

Every import statement is read from the source (function-level imports included), so an import hidden in
a function counts like one at the top. Importing vibbench.a.b also runs vibbench/a/__init__.py, so every
module has an edge to each of its parent packages (not to the root facade vibbench/__init__.py, whose
imports are lazy: its edges are the modules its table names). No module but the facade and the plugin loader
(which imports the user's modules, never vibbench's) computes a module name (importlib.import_module, __import__),
so that every import of the package is visible here."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "vibbench"

LAYERS = {
    "core": 0,
    "models": 1,
    "data": 1,
    "training": 2,
    "evaluation": 3,
    "reporting": 4,
    "runs": 5,
    "bench": 6,
    "cli": 7,
    "__main__": 8,  # python -m vibbench: calls the command line
}
"""The rank of each top-level module or folder: a module may import its own folder and lower ranks only.
models and data share a rank and may not import each other."""

FACADE_MAY_IMPORT = {"core", "models"}
FACADE_MAY_IMPORT_MODULES = {"vibbench.runs.trained", "vibbench.runs.evaluate"}
"""vibbench/__init__.py re-exports the public API (models, the error type, load_model, which reads a run's trained
models from the cache in runs/trained.py, and evaluate, the harness on a model of your own in runs/evaluate.py),
nothing more; lazily, so `import vibbench` loads none of it."""

DYNAMIC_IMPORTS = {"import_module", "__import__"}
"""Functions that import a module named at run time: allowed in the facade and the plugin loader only."""

DYNAMIC_IMPORTERS = {PACKAGE / "__init__.py", PACKAGE / "models" / "plugins.py"}
"""The facade (its lazy table) and the plugin loader (--plugin MODULE: the user's module, which it refuses to be a
vibbench module)."""

HEAVY = ("torchattacks", "pandas", "scipy", "matplotlib", "seaborn")


def module_name(path: Path, root: Path = ROOT) -> str:
    """The dotted name of the module in `path`, a file under the folder `root` that holds the package."""
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _exists(module: str, root: Path = ROOT) -> bool:
    rel = Path(*module.split("."))
    return (root / rel).with_suffix(".py").exists() or (root / rel / "__init__.py").exists()


def imported_modules(path: Path, root: Path = ROOT) -> set[str]:
    """The vibbench modules `path` imports, anywhere in the file (absolute names); `root` holds the package."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path, root) if path.name == "__init__.py" else module_name(path, root).rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.split(".")[0] == "vibbench"}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "vibbench":
                continue
            # `from vibbench.models import fused_head` imports the module vibbench.models.fused_head
            for alias in node.names:
                candidate = f"{mod}.{alias.name}"
                found.add(candidate if _exists(candidate, root) else mod)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("vibbench."):
            # modules named in strings: the public API's lazy table (importlib.import_module)
            if _exists(node.value, root):
                found.add(node.value)
    return found


def dynamic_imports(path: Path) -> list[str]:
    """Where `path` refers to importlib.import_module or __import__ (called, aliased or imported by name)."""
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and node.id in DYNAMIC_IMPORTS:
            found.append(f"{path.name}:{node.lineno}: {node.id}")
        elif isinstance(node, ast.Attribute) and node.attr in DYNAMIC_IMPORTS:
            found.append(f"{path.name}:{node.lineno}: .{node.attr}")
        elif isinstance(node, ast.ImportFrom) and any(a.name in DYNAMIC_IMPORTS for a in node.names):
            found.append(f"{path.name}:{node.lineno}: from {node.module} import {', '.join(a.name for a in node.names)}")
    return sorted(found)


def parent_packages(module: str) -> list[str]:
    """The packages whose __init__ runs before `module`, but the root facade: vibbench.a.b.c -> [vibbench.a, vibbench.a.b]."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(2, len(parts))]


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """Each module's imports: the ones its source states, and its parent packages (their __init__ runs first)."""
    return {
        module_name(p, package.parent): imported_modules(p, package.parent) | set(parent_packages(module_name(p, package.parent)))
        for p in sorted(package.rglob("*.py"))
    }


def violations(graph: dict[str, set[str]]) -> list[str]:
    """The edges of `graph` against the layering, one line each (none: the layering holds)."""
    bad = []
    for module, imports in graph.items():
        src = layer_of(module)
        if module != "vibbench" and src not in LAYERS:
            bad.append(f"{module} is in none of the layers {sorted(LAYERS)}")
            continue
        for target in sorted(imports - {module}):
            dst = layer_of(target)
            if module == "vibbench":
                if dst not in FACADE_MAY_IMPORT and target not in FACADE_MAY_IMPORT_MODULES:
                    bad.append(f"{module} -> {target} (the facade re-exports models, core and runs.trained only)")
            elif dst == "__init__":
                bad.append(f"{module} -> {target} (import from the module that defines it, not the facade)")
            elif dst not in LAYERS:
                bad.append(f"{module} -> {target} (a module in none of the layers)")
            elif src != dst and LAYERS[dst] >= LAYERS[src]:
                bad.append(f"{module} ({src}) -> {target} ({dst})")
    return sorted(bad)


def find_cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path [a, b, ..., a], or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(edges):
        if node not in state and (found := visit(node)):
            return found
    return None


def _without_self_edges(edges: dict[str, set[str]]) -> dict[str, set[str]]:
    return {m: {t for t in imports if t != m} for m, imports in edges.items()}


# ---------------------------------------------------------------------------------------------
# the package
# ---------------------------------------------------------------------------------------------


def test_every_module_belongs_to_a_layer():
    strays = sorted(m for m in graph() if layer_of(m) not in LAYERS and m != "vibbench")
    assert not strays, f"modules outside the layers {sorted(LAYERS)}: {strays}"


def test_no_import_goes_up_a_layer_or_sideways():
    bad = violations(graph())
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_the_package_has_no_import_cycle():
    cycle = find_cycle(_without_self_edges(graph()))
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_module_computes_the_name_it_imports():
    """importlib.import_module / __import__ hide the imported module from the checks above: the facade and the plugin loader only."""
    found = [hit for p in sorted(PACKAGE.rglob("*.py")) if p not in DYNAMIC_IMPORTERS for hit in dynamic_imports(p)]
    assert not found, "dynamic imports outside vibbench/__init__.py and vibbench/models/plugins.py:\n" + "\n".join(found)


def test_the_plugin_loader_refuses_vibbench_modules():
    """Its dynamic import never reaches a module of the package, whose imports the layering checks must see."""
    from vibbench.core.errors import VibbenchError
    from vibbench.models.plugins import load_plugin

    for name in ("vibbench", "vibbench.runs.runner"):
        with pytest.raises(VibbenchError, match="part of vibbench"):
            load_plugin(name)


def test_the_facade_edges_are_its_table():
    """The facade's lazy imports (strings in its table) are the edges the graph gives it."""
    import vibbench

    assert set(vibbench._API.values()) == graph()["vibbench"]


# ---------------------------------------------------------------------------------------------
# the checks themselves, on synthetic graphs and sources
# ---------------------------------------------------------------------------------------------


def test_violations_name_upward_and_sideways_imports():
    assert violations({"vibbench.training.x": {"vibbench.runs.y"}}) == [
        "vibbench.training.x (training) -> vibbench.runs.y (runs)"
    ]
    assert violations({"vibbench.models.a": {"vibbench.data.b"}}) == ["vibbench.models.a (models) -> vibbench.data.b (data)"]
    assert violations({"vibbench.data.b": {"vibbench.models.a"}}) == ["vibbench.data.b (data) -> vibbench.models.a (models)"]
    assert len(violations({"vibbench.core.x": {"vibbench.models.a", "vibbench.cli"}})) == 2
    assert violations({"vibbench.training.x": {"vibbench"}}) == [
        "vibbench.training.x -> vibbench (import from the module that defines it, not the facade)"
    ]
    assert violations({"vibbench.plugins.x": set()}) == ["vibbench.plugins.x is in none of the layers " + str(sorted(LAYERS))]
    assert violations({"vibbench.runs.y": {"vibbench.plugins.x"}}) == ["vibbench.runs.y -> vibbench.plugins.x (a module in none of the layers)"]


def test_violations_pass_downward_and_same_folder_imports():
    downward = {
        "vibbench.__main__": {"vibbench.cli"},
        "vibbench.cli": {"vibbench.bench.command", "vibbench.runs.runner", "vibbench.core.errors"},
        "vibbench.runs.runner": {"vibbench.runs.config", "vibbench.training.single", "vibbench.data.datasets", "vibbench.runs"},
        "vibbench.training.single": {"vibbench.models.registry", "vibbench.data.datasets", "vibbench.training"},
        "vibbench.models.registry": {"vibbench.models.head", "vibbench.core.errors"},
        "vibbench": {"vibbench.models.registry", "vibbench.core.errors"},
    }
    assert violations(downward) == []


def test_violations_hold_the_facade_to_models_core_and_load_model():
    assert violations({"vibbench": {"vibbench.runs.runner"}}) == [
        "vibbench -> vibbench.runs.runner (the facade re-exports models, core and runs.trained only)"
    ]
    assert len(violations({"vibbench": {"vibbench.models.head", "vibbench.data.datasets", "vibbench.cli"}})) == 2
    assert violations({"vibbench": {"vibbench.runs.trained", "vibbench.models.plugins"}}) == []


def test_find_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


SKELETON = {
    f"vibbench/{rel}": ""
    for rel in (
        "__init__.py", "core/__init__.py", "core/errors.py", "models/__init__.py", "models/fused_head.py",
        "runs/__init__.py", "runs/runner.py", "training/__init__.py", "training/sibling.py",
    )
}


@pytest.mark.parametrize(
    "source, expected",
    [
        ("def f():\n    import vibbench.runs.runner\n", {"vibbench.runs.runner"}),
        ("import vibbench.runs.runner as r\n", {"vibbench.runs.runner"}),
        ("from ..runs import runner\n", {"vibbench.runs.runner"}),
        ("from ..runs.runner import run\n", {"vibbench.runs.runner"}),
        ("from .. import runs\n", {"vibbench.runs"}),
        ("from . import sibling\n", {"vibbench.training.sibling"}),
        ("from vibbench.models import fused_head\n", {"vibbench.models.fused_head"}),
        ("from vibbench.models import fused_head, not_a_module\n", {"vibbench.models.fused_head", "vibbench.models"}),
        ("from vibbench.core.errors import VibbenchError\n", {"vibbench.core.errors"}),
        ("class C:\n    def m(self):\n        try:\n            from vibbench.runs import runner\n        except ImportError:\n            pass\n", {"vibbench.runs.runner"}),
        ("TABLE = {'x': 'vibbench.runs.runner', 'y': 'vibbench.no.such'}\n", {"vibbench.runs.runner"}),
        ("import os, torch\nfrom torch import nn\nimport vibbenchmark\n", set()),
    ],
    ids=["function-level", "import-as", "relative-module", "relative-name", "relative-package", "relative-sibling",
         "from-package-module", "module-and-name", "from-module-name", "nested", "string-table", "others"],
)
def test_imported_modules_reads_every_form(tmp_path, source, expected):
    _write(tmp_path, {**SKELETON, "vibbench/training/x.py": source})
    assert imported_modules(tmp_path / "vibbench/training/x.py", tmp_path) == expected


def test_imported_modules_in_a_package_init(tmp_path):
    """In an __init__.py, `.` is the package itself."""
    _write(tmp_path, {**SKELETON, "vibbench/runs/__init__.py": "from .runner import run\nfrom . import runner\n"})
    assert module_name(tmp_path / "vibbench/runs/__init__.py", tmp_path) == "vibbench.runs"
    assert imported_modules(tmp_path / "vibbench/runs/__init__.py", tmp_path) == {"vibbench.runs.runner"}


def test_a_cycle_through_a_package_init_is_found(tmp_path):
    """models.a imports data.b (no edge back), but importing data.b runs data/__init__.py, which imports models.a."""
    files = {
        "vibbench/__init__.py": "",
        "vibbench/models/__init__.py": "",
        "vibbench/models/a.py": "from vibbench.data import b\n",
        "vibbench/data/__init__.py": "from vibbench.models.a import A\n",
        "vibbench/data/b.py": "",
    }
    _write(tmp_path, files)
    edges = graph(tmp_path / "vibbench")
    assert edges["vibbench.data.b"] == {"vibbench.data"} and edges["vibbench.models.a"] == {"vibbench.data.b", "vibbench.models"}
    explicit = {m: imported_modules(tmp_path / "vibbench" / Path(*m.split(".")[1:]).with_suffix(".py"), tmp_path)
                for m in ("vibbench.models.a", "vibbench.data.b")}
    assert find_cycle(explicit | {"vibbench.data": {"vibbench.models.a"}}) is None  # the edge data.b -> data is needed
    assert find_cycle(_without_self_edges(edges)) == ["vibbench.data", "vibbench.models.a", "vibbench.data.b", "vibbench.data"]
    assert parent_packages("vibbench.evaluation.attacks.pgd") == ["vibbench.evaluation", "vibbench.evaluation.attacks"]
    assert parent_packages("vibbench.cli") == [] and parent_packages("vibbench") == []


def test_dynamic_imports_are_found(tmp_path):
    sources = {
        "call.py": "import importlib\ndef f(x):\n    return importlib.import_module('vibbench' + x)\n",
        "builtin.py": "def f(x):\n    return __import__(x)\n",
        "by_name.py": "from importlib import import_module as im\n",
        "alias.py": "import importlib\nload = importlib.import_module\n",
        "clean.py": "import importlib.metadata\nv = importlib.metadata.version('torch')\nfrom vibbench.runs import runner\n",
    }
    for name, text in sources.items():
        (tmp_path / name).write_text(text)
    assert dynamic_imports(tmp_path / "call.py") == ["call.py:3: .import_module"]
    assert dynamic_imports(tmp_path / "builtin.py") == ["builtin.py:2: __import__"]
    assert dynamic_imports(tmp_path / "by_name.py") == ["by_name.py:1: from importlib import import_module"]
    assert dynamic_imports(tmp_path / "alias.py") == ["alias.py:2: .import_module"]
    assert dynamic_imports(tmp_path / "clean.py") == []
    assert dynamic_imports(PACKAGE / "__init__.py")  # the facade's own, allowed there only


def _loaded_after(code: str, libraries: tuple[str, ...] = HEAVY) -> set[str]:
    """Which of `libraries` are in sys.modules after running `code` in a fresh interpreter."""
    probe = code + "\nimport sys\nprint('LOADED:', ' '.join(m for m in sys.modules if m.split('.')[0] in %r))" % (libraries,)
    proc = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    last = proc.stdout.splitlines()[-1]
    assert last.startswith("LOADED:"), proc.stdout[-2000:]
    return {m.split(".")[0] for m in last.removeprefix("LOADED:").split()}


TRAIN_ONE = """
import torch, vibbench
from vibbench.training.config import TrainConfig
from vibbench.training.single import train_model
model = vibbench.create_model("mlp_vib")
x, y = torch.rand(200, 1, 28, 28), torch.randint(0, 10, (200,))
train_model(model, x, y, TrainConfig(dataset="synthetic", epochs=1), seed=0, label="probe")
"""


@pytest.mark.parametrize(
    "code",
    [
        "import vibbench",
        "import vibbench; vibbench.create_model('mlp_vib')",
        TRAIN_ONE,
        "from vibbench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass",
        "from vibbench.cli import main; main(['list'])",
    ],
    ids=["import", "create_model", "train_model", "cli-help", "cli-list"],
)
def test_light_paths_load_no_heavy_library(code):
    assert _loaded_after(code) == set()


HELP = "from vibbench.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass"


@pytest.mark.parametrize("code", [HELP, "from vibbench.cli import main; main(['list'])", "import vibbench; vibbench.list_models()"], ids=["help", "list", "list_models"])
def test_help_and_the_registry_listing_load_no_torch(code):
    """torch alone takes about 2 s to import on the 2-core machines: the command line's help and listing avoid it."""
    assert _loaded_after(code, ("torch", "numpy")) == set()


def test_the_probe_sees_a_heavy_import():
    """The probe above can fail: importing the report does load pandas."""
    assert "pandas" in _loaded_after("import vibbench.reporting.report")
    assert _loaded_after("import vibbench; vibbench.create_model('mlp_vib')", ("torch",)) == {"torch"}
