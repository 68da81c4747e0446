"""The package's shape: its folders are layers, each importing only the ones below it; no import cycles;
the light entry points (import vibbench, create_model, training, --help, list) load no heavy library.

Every import statement is read from the source (function-level imports included), so an import hidden in
a function counts like one at the top."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "vibbench"

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
"""vibbench/__init__.py re-exports the public API (models and the error type), nothing more."""

HEAVY = ("torchattacks", "pandas", "scipy", "matplotlib", "seaborn")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The vibbench modules `path` imports, anywhere in the file (absolute names)."""
    tree = ast.parse(path.read_text(), str(path))
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
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
                found.add(candidate if _exists(candidate) else mod)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("vibbench."):
            # modules named in strings: the public API's lazy table (importlib.import_module)
            if _exists(node.value):
                found.add(node.value)
    return found


def _exists(module: str) -> bool:
    rel = Path(*module.split(".")[1:])
    return (PACKAGE / rel).with_suffix(".py").exists() or (PACKAGE / rel / "__init__.py").exists()


def layer_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def graph() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_module_belongs_to_a_layer():
    strays = sorted(m for m in graph() if layer_of(m) not in LAYERS and m != "vibbench")
    assert not strays, f"modules outside the layers {sorted(LAYERS)}: {strays}"


def test_no_import_goes_up_a_layer_or_sideways():
    bad = []
    for module, imports in graph().items():
        for target in imports:
            src, dst = layer_of(module), layer_of(target)
            if module == "vibbench":
                if dst not in FACADE_MAY_IMPORT:
                    bad.append(f"{module} -> {target} (the facade re-exports models and core only)")
            elif dst == "__init__":
                bad.append(f"{module} -> {target} (import from the module that defines it, not the facade)")
            elif src != dst and LAYERS[dst] >= LAYERS[src]:
                bad.append(f"{module} ({src}) -> {target} ({dst})")
    assert not bad, "imports against the layering:\n" + "\n".join(sorted(bad))


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


def test_the_package_has_no_import_cycle():
    cycle = find_cycle({m: {t for t in imports if t != m} for m, imports in graph().items()})
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_catch_what_they_look_for():
    """The checker itself: a cycle is found, an upward import is named."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    assert layer_of("vibbench.runs.runner") == "runs" and LAYERS["runs"] > LAYERS["evaluation"]
    # a real module of a lower layer imports things below it, nothing above
    assert "vibbench.core.errors" in imported_modules(PACKAGE / "training" / "config.py")


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
