"""The user-facing wording of errors: OS errors, unknown names, positive integers."""

import errno

import pytest

from vibbench.core.errors import VibbenchError, check_positive_int, describe_os_error, unknown_name_message


def test_os_errors_say_what_they_mean_for_a_run():
    assert describe_os_error(OSError(errno.ENOSPC, "No space left on device")) == "No space left on device (the disk is full)"
    assert describe_os_error(OSError(errno.EROFS, "Read-only file system")).endswith("(the folder is read-only or belongs to someone else)")
    assert describe_os_error(OSError(errno.ENOENT, "No such file or directory")) == "No such file or directory"


def test_an_unknown_name_suggests_close_ones_and_lists_all():
    msg = unknown_name_message("model", "mlp_vbi", ["mlp_vib", "mlp_dropout", "conv_vib"])
    assert msg.startswith("unknown model 'mlp_vbi'. Did you mean mlp_vib")
    assert msg.endswith("Known: mlp_vib, mlp_dropout, conv_vib.")
    assert "Did you mean" not in unknown_name_message("model", "zzz", ["mlp_vib"])


def test_positive_integers_pass_and_everything_else_is_named():
    assert check_positive_int("epochs", 3) == 3
    assert check_positive_int("epochs", None, allow_none=True) is None
    for bad in (0, -1, 1.0, True, "2", None):
        with pytest.raises(VibbenchError, match=r"^epochs must be a positive integer, got"):
            check_positive_int("epochs", bad)
    with pytest.raises(VibbenchError, match="positive integer or null"):
        check_positive_int("epochs", 0, allow_none=True)


def _positive_int_fields():
    """field name -> a builder taking the field's value, for integer fields checked by check_positive_int
    (called inside the tests, so that collecting this file does not import torch)."""
    import torch

    from vibbench.bench.cases import _check as bench_check
    from vibbench.evaluation.calibration import ece
    from vibbench.evaluation.settings import AttackSettings, EvalConfig
    from vibbench.models.head import reparameterize
    from vibbench.models.registry import create_model
    from vibbench.training.config import TrainConfig

    zeros = torch.zeros(1, 2)
    return {
        "attack setting subset": lambda v: AttackSettings(subset=v),
        "attack setting batch_size": lambda v: AttackSettings(batch_size=v),
        "shift_subset": lambda v: EvalConfig(shift_subset=v),
        "calibration_bins": lambda v: EvalConfig(calibration_bins=v),
        "epochs": lambda v: TrainConfig(epochs=v),
        "latent_dim": lambda v: create_model("mlp_vib", latent_dim=v),
        "eval_samples": lambda v: create_model("mlp_vib", eval_samples=v),
        "n_bins": lambda v: ece(zeros.log_softmax(1), torch.zeros(1, dtype=torch.long), n_bins=v),
        "num_samples": lambda v: reparameterize(zeros, zeros, v),
        "batch": lambda v: bench_check("forward", "eager", torch.device("cpu"), v, 1, False),
    }


POSITIVE_INT_FIELDS = [
    "attack setting subset", "attack setting batch_size", "shift_subset", "calibration_bins", "epochs",
    "latent_dim", "eval_samples", "n_bins", "num_samples", "batch",
]


def test_the_field_list_is_the_builders_list():
    assert POSITIVE_INT_FIELDS == list(_positive_int_fields())


@pytest.mark.parametrize("field", POSITIVE_INT_FIELDS)
@pytest.mark.parametrize("value", [True, 0])
def test_positive_integer_fields_refuse_booleans_in_one_wording(field, value):
    build = _positive_int_fields()[field]
    with pytest.raises(VibbenchError, match=rf"^{field} must be a positive integer, got {value!r}$"):
        build(value)
    with pytest.raises(ValueError):  # a user's mistake is a ValueError to library callers too
        build(value)
