"""`--config FILE` (TOML or JSON): precedence, validation messages, and property-based fuzzing of the file's bytes and structure."""

import json
import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vibbench.cli as cli
import vibbench.runs.runner as runner
from vibbench.runs.config import DEVICES, PROFILES, make_run_config
from vibbench.runs.config_file import OPTION_FIELDS, TRAIN_FIELDS, load_options, options_of, run_config_from_options
from vibbench.data.datasets import DATASETS

TOML = """
profile = "smoke"
models = ["mlp_vib:beta=1e-2", "mlp_deterministic"]
seeds = 2
dataset = "synthetic"
device = "cpu"
epochs = 3
no_eval = true

[train]
batch_size = 50
lr = 1e-3
adam_betas = [0.9, 0.99]
"""


@pytest.fixture
def ran(monkeypatch):
    """The configs `vibbench run` would have run (the runner is replaced: nothing trains)."""
    configs = []
    monkeypatch.setattr(runner, "run", lambda cfg, **kw: configs.append(cfg) or "out")
    return configs


def write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_a_toml_file_sets_every_option_and_json_says_the_same(tmp_path):
    cfg = run_config_from_options(load_options(write(tmp_path, "run.toml", TOML)))
    assert cfg.profile == "smoke" and cfg.seeds == (0, 1) and cfg.device == "cpu" and cfg.eval is None
    assert [s.label for s in cfg.models] == ["mlp_vib:beta=0.01", "mlp_deterministic"]
    t = cfg.train
    assert (t.dataset, t.epochs, t.batch_size, t.lr, t.adam_betas) == ("synthetic", 3, 50, 1e-3, (0.9, 0.99))
    assert t.max_train_examples == PROFILES["smoke"].train.max_train_examples  # untouched fields: the profile's
    as_json = {
        "profile": "smoke", "models": ["mlp_vib:beta=1e-2", "mlp_deterministic"], "seeds": 2, "dataset": "synthetic",
        "device": "cpu", "epochs": 3, "no_eval": True, "train": {"batch_size": 50, "lr": 0.001, "adam_betas": [0.9, 0.99]},
    }
    assert run_config_from_options(load_options(write(tmp_path, "run.json", json.dumps(as_json)))).config_hash == cfg.config_hash


def test_command_line_overrides_the_file_and_the_file_overrides_the_profile(tmp_path, ran):
    path = write(tmp_path, "run.toml", TOML)
    assert cli.main(["run", "--config", str(path), "--epochs", "2", "--models", "mlp_dropout", "--profile", "quick"]) == 0
    (cfg,) = ran
    assert cfg.profile == "quick" and [s.label for s in cfg.models] == ["mlp_dropout"]
    assert cfg.train.epochs == 2 and cfg.train.batch_size == 50 and cfg.seeds == (0, 1)  # the file's, where the command line is silent
    assert cfg.train.max_train_examples is None  # the quick profile's, not smoke's
    assert cli.main(["eval", "--config", str(path)]) == 0 and ran[1].train.epochs == 3


def test_options_of_a_config_rebuild_it_exactly(tmp_path):
    cfg = make_run_config("quick", dataset="synthetic", models=["mlp_*", "mlp_vib:beta=0.123456789"], seeds=3, device="cpu", train={"lr": 3e-4})
    path = write(tmp_path, "options.json", json.dumps(options_of(cfg)))
    again = run_config_from_options(load_options(path))
    assert again.config_hash == cfg.config_hash and again.models[-1].overrides == (("beta", 0.123456789),)


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("run.toml", b"profile = \"smoke\"\n\xff\xfe", "is not UTF-8 text (byte 0xff at offset 18)"),
        ("run.toml", "epochs = 3\nseeds = ]", "is not valid TOML: Invalid value (at line 2, column 9)"),
        ("run.json", "{", "is not valid JSON: Expecting property name enclosed in double quotes: line 1 column 2 (char 1)"),
        ("run.json", "[1, 2]", "must be a table of fields (profile, models, seeds, dataset, device, epochs, no_eval, attack_precision, train), got a list [1, 2]"),
        ("run.json", "[" * 100_000, "is not valid JSON: nested too deeply"),
        ("run.yaml", "epochs: 3", "name it *.toml or *.json (the extension picks the format), not '.yaml'"),
        ("run.toml", "epoch = 3", "unknown field 'epoch'. Did you mean epochs? Known: profile, models, seeds, dataset, device, epochs, no_eval, attack_precision, train."),
        ("run.toml", "seeds = 0", ": seeds must be a whole number from 1 to 1000, got an integer 0"),
        ("run.toml", "seeds = true", ": seeds must be a whole number from 1 to 1000, got a boolean True"),
        ("run.toml", "epochs = 2.5", ": epochs must be a positive integer, got 2.5"),
        ("run.toml", "epochs = true", ": epochs must be a positive integer, got True"),
        ("run.toml", 'profile = "fast"', ": profile: unknown profile 'fast'. Known: smoke, quick, paper, table1."),
        ("run.toml", "device = 1", ": device must be one of auto, cpu, cuda, got an integer 1"),
        ("run.toml", 'dataset = "cifar"', ": dataset: unknown dataset 'cifar'. Known: mnist, fashion-mnist, synthetic."),
        ("run.toml", 'models = "mlp_vib"', ': models must be a non-empty list of model patterns such as ["mlp_*", "mlp_vib:beta=1e-2"]'),
        ("run.toml", 'models = ["mlp_vbi"]', ": models: unknown model or pattern 'mlp_vbi'. Did you mean mlp_vib"),
        ("run.toml", 'models = ["mlp_vib:beta=-1"]', ": models: beta must be >= 0, got -1.0"),
        ("run.toml", 'no_eval = "yes"', ": no_eval must be true or false, got a string 'yes'"),
        ("run.toml", "train = 3", ": train must be a table of training fields (batch_size, lr, adam_betas,"),
        ("run.toml", "[train]\nlr = 2.0", ": train: lr must be a number in (0, 1), got 2.0"),
        ("run.toml", '[train]\nlr = "fast"', ": train.lr must be a finite number, got a string 'fast'"),
        ("run.json", '{"train": {"lr": NaN}}', ": train.lr must be a finite number, got a number nan"),
        ("run.json", '{"train": {"adam_betas": [0.9]}}', ": train.adam_betas must be a list of two numbers, got a list [0.9]"),
        ("run.json", '{"train": {"max_train_examples": null, "eval_batch_size": 0}}', ": train.eval_batch_size must be a positive integer, got 0"),
        ("run.json", '{"train": {"max_train_examples": 0}}', ": train.max_train_examples (null: all examples; JSON only) must be a positive integer or null, got 0"),
        ("run.toml", "[train]\nbatchsize = 5", ": train: unknown training field 'batchsize'. Did you mean batch_size"),
        ("run.toml", "[train]\nepochs = 5", ": train: unknown training field 'epochs'."),
    ],
)
def test_a_bad_file_gets_one_line_naming_the_file_and_the_field(tmp_path, capsys, ran, name, content, message):
    path = write(tmp_path, name, content)
    assert cli.main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vibbench: error: config file {path}") and err.count("\n") == 1, err
    assert message in err and not ran


@pytest.mark.parametrize("make", [lambda p: p / "missing.toml", lambda p: (p / "dir.toml").mkdir() or p / "dir.toml"])
def test_an_unreadable_file_is_named(tmp_path, capsys, make):
    path = make(tmp_path)
    assert cli.main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"vibbench: error: cannot read config file {path}: ") and err.count("\n") == 1


# ----------------------------------------------------------------------------- property-based


def outcome(argv, ran, capsys):
    """Run the CLI; a crash (any exception) fails the test. Returns the exit code after checking the message."""
    ran.clear()
    try:
        code = cli.main(argv)
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in (0, 2)
    assert (code == 0) == (len(ran) == 1)
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("vibbench: error: "), err
    return code


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FUZZ
@given(content=st.binary(max_size=200), suffix=st.sampled_from([".toml", ".json"]))
def test_random_bytes_as_a_config_file_never_crash(tmp_path, capsys, ran, content, suffix):
    outcome(["run", "--config", str(write(tmp_path, "random" + suffix, content))], ran, capsys)


scalars = st.one_of(
    st.booleans(), st.integers(-3, 2000), st.integers(), st.floats(), st.text(max_size=12),
    st.sampled_from(list(PROFILES) + list(DATASETS) + list(DEVICES) + ["mlp_vib", "fast", "cuda:0"]),
)
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3), max_leaves=6)
model_lists = st.lists(st.sampled_from(["mlp_vib", "mlp_*", "mlp_vib:beta=1e-2", "conv_vib", "mlp_vbi", "mlp_dropout:beta=1", "mlp_vib:beta=nan", "*:x=1"]), max_size=3)
train_tables = st.dictionaries(
    st.sampled_from(TRAIN_FIELDS + ("epochs", "bogus")),
    st.one_of(values, st.floats(1e-6, 1.5), st.integers(0, 200), st.lists(st.floats(0, 1.2), min_size=1, max_size=3), st.none()),
    max_size=4,
)
VALID = {
    "profile": st.sampled_from(list(PROFILES)),
    "models": st.lists(st.sampled_from(["mlp_vib", "mlp_*", "mlp_vib:beta=1e-2", "conv_dropout"]), min_size=1, max_size=3),
    "seeds": st.integers(1, 5),
    "dataset": st.sampled_from(DATASETS),
    "device": st.sampled_from(["auto", "cpu"]),
    "epochs": st.integers(1, 300),
    "no_eval": st.booleans(),
    "attack_precision": st.sampled_from(["auto", "fp32"]),
    "train": st.fixed_dictionaries(
        {},
        optional={
            "batch_size": st.integers(1, 500),
            "lr": st.floats(1e-6, 0.5),
            "adam_betas": st.lists(st.floats(0, 0.999), min_size=2, max_size=2),
            "lr_decay": st.floats(0.5, 1.0),
            "ema_decay": st.floats(0.0, 0.999),
            "eval_samples": st.integers(1, 30),
            "max_eval_examples": st.integers(1, 10**6),
        },
    ),
}
valid_documents = st.fixed_dictionaries({}, optional=VALID)
# a valid document with one field replaced or added: mostly refused, sometimes still valid
documents = st.one_of(
    valid_documents,
    st.builds(
        lambda doc, key, value: doc | {key: value},
        valid_documents,
        st.sampled_from(OPTION_FIELDS + ("epoch", "lr")) | st.text(max_size=6),
        st.one_of(values, model_lists, train_tables),
    ),
)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return repr(v)  # nan, inf and -inf are TOML too
    if isinstance(v, str):
        return json.dumps(v)  # a basic string; whatever TOML rejects must be a clean syntax error anyway
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v if x is not None) + "]"
    return "{" + ", ".join(f"{json.dumps(k)} = {toml_value(x)}" for k, x in v.items() if x is not None) + "}"


def same(value, wanted) -> bool:
    return list(value) == list(wanted) if isinstance(value, tuple) else value == wanted or (value != value and wanted != wanted)


@FUZZ
@given(doc=documents, fmt=st.sampled_from(["json", "toml"]))
def test_random_structures_as_a_config_file_are_applied_or_refused_cleanly(tmp_path, capsys, ran, doc, fmt):
    if fmt == "json":
        text = json.dumps(doc)
    else:
        text = "\n".join(f"{json.dumps(k)} = {toml_value(v)}" for k, v in doc.items() if v is not None)
        try:
            doc = tomllib.loads(text)  # what the file says, as TOML reads it
        except ValueError:
            doc = None
    if outcome(["run", "--config", str(write(tmp_path, "run." + fmt, text))], ran, capsys) == 0:
        (cfg,) = ran  # accepted: every field the file sets is in the config that would run
        assert doc is not None
        for key, value in doc.items():
            got = {
                "profile": cfg.profile, "seeds": len(cfg.seeds), "dataset": cfg.train.dataset, "epochs": cfg.train.epochs,
                "no_eval": cfg.eval is None, "device": cfg.device if value != "auto" else "auto",
                "attack_precision": cfg.eval.attacks.precision if cfg.eval is not None else value,  # no attacks: unused
            }.get(key)
            if key == "train":
                assert all(same(getattr(cfg.train, k), v) for k, v in value.items())
            elif key == "models":
                assert len(cfg.models) >= 1
            else:
                assert got == value, (key, value, got)


def test_numbers_from_files_are_normalized_so_one_config_has_one_hash(tmp_path):
    a = run_config_from_options(load_options(write(tmp_path, "a.toml", "[train]\nlr_decay = 1\nema_decay = 0")))
    b = run_config_from_options(load_options(write(tmp_path, "b.toml", "[train]\nlr_decay = 1.0\nema_decay = 0.0")))
    assert a.config_hash == b.config_hash and math.isclose(a.train.lr_decay, 1.0)


def test_the_readme_example_is_a_valid_config_file(tmp_path):
    readme = (Path(__file__).parents[2] / "README.md").read_text()
    example = readme.split("```toml\n", 1)[1].split("```", 1)[0]
    options = load_options(write(tmp_path, "readme.toml", example))
    assert set(options) == set(OPTION_FIELDS)
    cfg = run_config_from_options(options | {"device": "cpu"})
    assert cfg.seeds == (0, 1, 2) and cfg.train.epochs == 20 and cfg.train.adam_betas == (0.5, 0.999)
