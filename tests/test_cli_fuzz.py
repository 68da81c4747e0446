"""Property-based: random option values never crash the CLI with a traceback, only a clean error."""

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import vibbench.cli as cli
import vibbench.runs.runner as runner

text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=20)
values = st.one_of(text, st.integers(-5, 10**6).map(str), st.floats(allow_nan=True).map(str), st.sampled_from(["mlp_vib:beta=", "mlp_*:beta=1e9", "mlp_vib:beta=nan", ":", "*"]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    option=st.sampled_from(["--profile", "--models", "--seeds", "--dataset", "--device", "--epochs", "--trainer", "--executor",
                            "--ray-address", "--ray-cpus-per-job", "--ray-gpus-per-job", "--ray-max-retries", "--config", "--precision"]),
    executor=st.sampled_from([[], ["--executor", "ray"]]),
    value=values,
)
def test_random_option_values_give_a_clean_error_or_a_valid_config(option, executor, value, monkeypatch, capsys):
    ran = []
    monkeypatch.setattr(runner, "run", lambda cfg, **kw: ran.append(cfg) or "out")
    try:
        code = cli.main(["run", *executor, option, value])
    except SystemExit as exc:  # argparse's own usage errors
        code = exc.code
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert code in (0, 2)
    assert (code == 0) == bool(ran)
    if code == 2:
        assert err.strip()
