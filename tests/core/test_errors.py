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
