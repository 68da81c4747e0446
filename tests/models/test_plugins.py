"""Your own backbones and methods: register_backbone / register_method and their refusals, and --plugin's loader."""

import sys

import pytest
import torch

import vibbench
from vibbench.cli import main
from vibbench.core.errors import VibbenchError
from vibbench.models.backbones import BACKBONES, backbone_code
from vibbench.models.methods import METHODS, Method
from vibbench.models.plugins import load_plugin, load_plugins, registered_outside


def tiny_factory(dropout: float = 0.0):
    from torch import nn

    from vibbench.models.layers import Backbone, Dropout

    return Backbone(nn.Sequential(nn.Flatten(), nn.Linear(784, 16), nn.ReLU(), Dropout(dropout, 16)), 16)


def test_a_registered_backbone_gets_every_method(plugin_registry):
    assert vibbench.register_backbone("small")(tiny_factory) is tiny_factory
    assert vibbench.list_models("small_*") == [f"small_{m}" for m in sorted(METHODS)]
    model = vibbench.create_model("small_vib", beta=1e-2).eval()
    assert model.backbone_name == "small" and model.method.beta == 1e-2 and model(torch.rand(3, 784)).shape == (3, 10)
    dropout = vibbench.create_model("small_dropout")
    assert [m.max_rate for m in dropout.modules() if type(m).__name__ == "Dropout"] == [0.5]  # the method's rate reaches it
    # a plugin's backbone is identified by its code; vibbench's own are not (their job hashes stay as they were)
    assert backbone_code("mlp") is None and len(backbone_code("small")) == 64


def test_register_backbone_forms(plugin_registry):
    @vibbench.register_backbone
    def plain(dropout=0.0):
        return tiny_factory(dropout)

    @vibbench.register_backbone(name="named")
    def other(dropout=0.0):
        return tiny_factory(dropout)

    assert {"plain_vib", "named_vib"} <= set(vibbench.list_models())
    vibbench.register_backbone("plain")(plain)  # the same function again: nothing changes


def test_a_registered_method_is_on_every_backbone(plugin_registry):
    method = vibbench.register_method("vib_smooth", stochastic=True, beta=1e-3, label_smoothing=0.1)
    assert method == Method("vib_smooth", stochastic=True, beta=1e-3, label_smoothing=0.1) and METHODS["vib_smooth"] is method
    assert {"mlp_vib_smooth", "conv_vib_smooth"} <= set(vibbench.list_models())
    model = vibbench.create_model("mlp_vib_smooth", beta=1e-2)
    assert model.stochastic and model.method.label_smoothing == 0.1 and model.method.beta == 1e-2
    assert vibbench.register_method(Method("vib_smooth", stochastic=True, beta=1e-3, label_smoothing=0.1)) is method  # equal: a no-op
    assert registered_outside("mlp", "vib_smooth") and not registered_outside("mlp", "vib")


@pytest.mark.parametrize(
    "register, message",
    [
        (lambda: vibbench.register_backbone("mlp")(tiny_factory), "backbone 'mlp' is already registered"),
        (lambda: vibbench.register_backbone("my_net")(tiny_factory), "one word"),
        (lambda: vibbench.register_backbone("Net")(tiny_factory), "one word"),
        (lambda: vibbench.register_backbone("net")(lambda: None), "must take dropout="),
        (lambda: vibbench.register_backbone(3), "takes a name"),
        (lambda: vibbench.register_method("vib", stochastic=True, beta=1e-2), "method 'vib' is already registered"),
        (lambda: vibbench.register_method("Vib2"), "method name 'Vib2' refused"),
        (lambda: vibbench.register_method("a__b"), "refused"),
        (lambda: vibbench.register_method("new", beta=1e-3), "beta only applies to VIB models"),
        (lambda: vibbench.register_method("new", temperature=2.0), "unknown field"),
        (lambda: vibbench.register_method(Method("new"), beta=1.0), "not both"),
    ],
    ids=["duplicate-backbone", "underscore", "uppercase", "no-dropout", "not-a-name", "duplicate-method", "method-case",
         "double-underscore", "method-check", "method-field", "method-twice"],
)
def test_refused_registrations_say_why(plugin_registry, register, message):
    before = (dict(BACKBONES), dict(METHODS))
    with pytest.raises(VibbenchError, match=message):
        register()
    assert (dict(BACKBONES), dict(METHODS)) == before


def test_the_duplicate_message_names_both_origins(plugin_registry):
    vibbench.register_backbone("small")(tiny_factory)

    def small(dropout=0.0):
        return tiny_factory(dropout)

    with pytest.raises(VibbenchError, match=r"already registered \(by .*tiny_factory\); choose another name for .*small"):
        vibbench.register_backbone(small)


def test_what_a_backbone_builds_is_checked(plugin_registry):
    from torch import nn

    vibbench.register_backbone("torchdrop")(lambda dropout=0.0: _with(nn.Sequential(nn.Flatten(), nn.Dropout(0.5)), 784))
    vibbench.register_backbone("nodim")(lambda dropout=0.0: nn.Flatten())
    vibbench.register_backbone("notmodule")(lambda dropout=0.0: "a string")
    with pytest.raises(VibbenchError, match="torch's Dropout, which draws from the global random state"):
        vibbench.create_model("torchdrop_vib")
    with pytest.raises(VibbenchError, match="no positive integer feature_dim"):
        vibbench.create_model("nodim_vib")
    with pytest.raises(VibbenchError, match="not a torch module"):
        vibbench.create_model("notmodule_vib")


def _with(module, dim):
    module.feature_dim = dim
    return module


def test_a_file_plugin_loads_once_and_is_recorded_by_its_absolute_path(tiny_plugin, monkeypatch):
    monkeypatch.chdir(tiny_plugin.parent)
    assert load_plugins(["tinyplugin.py", str(tiny_plugin)]) == (str(tiny_plugin),)  # the second is the same file: skipped
    assert "tiny_vib_smooth" in vibbench.list_models()
    assert load_plugin("./tinyplugin.py") == str(tiny_plugin)


def test_a_module_plugin_by_its_dotted_name(tmp_path, plugin_registry, monkeypatch):
    package = tmp_path / "vbtest_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "extra.py").write_text("import vibbench\nvibbench.register_method('vib_strong', stochastic=True, beta=1e-1)\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert load_plugins("vbtest_pkg.extra") == ("vbtest_pkg.extra",)
    assert load_plugins("vbtest_pkg.extra") == ("vbtest_pkg.extra",)  # imported once: no duplicate registration
    assert "mlp_vib_strong" in vibbench.list_models()


@pytest.mark.parametrize(
    "plugin, message",
    [
        ("vbtest_missing", "cannot be imported here .*install it, put its folder on PYTHONPATH"),
        ("no/such/file.py", "does not exist"),
        ("not a module", "neither a dotted module name nor a FILE.py path"),
        ("vibbench.runs.runner", "part of vibbench"),
        ("", "a plugin is a module name or a FILE.py path"),
    ],
)
def test_a_plugin_that_cannot_load_is_one_clear_error(plugin_registry, plugin, message):
    with pytest.raises(VibbenchError, match=message):
        load_plugin(plugin)


def test_a_failing_plugin_leaves_nothing_registered(tmp_path, plugin_registry):
    """What it registered before failing is taken back: the fixed plugin then loads without a duplicate."""
    path = tmp_path / "broken.py"
    path.write_text(TINY_HEAD + "raise RuntimeError('a bug in the plugin')\n")
    with pytest.raises(RuntimeError, match="a bug in the plugin"):  # the plugin's own error, with its traceback
        load_plugin(str(path))
    assert "half_vib" not in vibbench.list_models() and not any(k.startswith("vibbench_plugin_broken") for k in sys.modules)
    path.write_text(TINY_HEAD)
    load_plugin(str(path))
    assert "half_vib" in vibbench.list_models()


TINY_HEAD = "import vibbench\n\n@vibbench.register_backbone('half')\ndef half(dropout=0.0):\n    raise NotImplementedError\n\n"


def test_list_with_a_plugin_shows_its_models(tiny_plugin, capsys):
    assert main(["list", "--plugin", str(tiny_plugin), "tiny_*", "*_vib_smooth"]) == 0
    out = capsys.readouterr().out
    assert "tiny_vib " in out and "tiny_deterministic" in out and "mlp_vib_smooth" in out and "beta=0.001, label_smoothing=0.1" in out
    assert "mlp_vib " not in out


def test_list_without_the_plugin_does_not_know_its_models(capsys):
    assert main(["list", "tiny_*"]) == 2
    assert "unknown model or pattern 'tiny_*'" in capsys.readouterr().err


def test_list_with_a_missing_plugin_is_one_line(capsys):
    assert main(["list", "--plugin", "vbtest_no_such_plugin"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vibbench: error: plugin module 'vbtest_no_such_plugin' cannot be imported") and err.count("\n") == 1
