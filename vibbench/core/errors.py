"""The one exception type the command line turns into a clean message, and wording for OS errors."""

from __future__ import annotations

import difflib
import errno


class VibbenchError(ValueError):
    """A problem the user can fix; the message says what to do. A ValueError: a user's mistake is a bad value,
    so library callers that catch ValueError catch it too.

    The CLI prints the message and exits with status 2 instead of a traceback.
    """


DISK_FULL = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted", errno.EFBIG: "a file size limit was reached"}
_NOT_ALLOWED = {errno.EACCES, errno.EPERM, errno.EROFS}


def describe_os_error(exc: OSError) -> str:
    """The OS's words for `exc` plus what it means for a run: 'No space left on device (the disk is full)'."""
    text = exc.strerror or str(exc)
    if exc.errno in DISK_FULL:
        return f"{text} ({DISK_FULL[exc.errno]})"
    if exc.errno in _NOT_ALLOWED:
        return f"{text} (the folder is read-only or belongs to someone else)"
    return text


def _fold(name: str) -> str:
    """A name as the hint compares it: case, '-' and ' ' do not matter ('Shot-Noise' is close to 'shot_noise')."""
    return name.strip().lower().replace("-", "_").replace(" ", "_")


def unknown_name_message(kind: str, name, known: list[str] | tuple[str, ...]) -> str:
    """"unknown <kind> '<name>'." with up to three close matches among `known` as a hint, then all of `known`.

    `name` may be any value (a number from a config file); only a string gets a hint."""
    close = []
    if isinstance(name, str):
        folded = {}
        for k in known:
            folded.setdefault(_fold(k), k)
        close = [folded[f] for f in difflib.get_close_matches(_fold(name), list(folded), n=3, cutoff=0.5)]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}."


def check_positive_int(name: str, value, *, allow_none: bool = False) -> int | None:
    """`value` if it is a whole number >= 1 (booleans are not numbers here), else a VibbenchError naming `name`;
    with allow_none, None passes too ("null" in config files)."""
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        either = " or null" if allow_none else ""
        raise VibbenchError(f"{name} must be a positive integer{either}, got {value!r}")
    return value


def check_real(name: str, value, *, low: float, high: float | None = None, high_open: bool = True, where: str = ""):
    """`value` if it is a finite real number in [low, high) (or [low, high] with high_open=False; no upper bound when
    high is None), else a VibbenchError naming `name`, the value and the range: "beta must be >= 0, got -1.0",
    "beta must be >= 0 and finite, got inf", "dropout must be in [0, 1), got 'x' (a str, not a number)". Booleans
    and strings are not numbers here. `where` (e.g. " (model 'mlp_vib')") ends the message."""
    import math
    import numbers

    bound = f">= {low:g}" if high is None else f"in [{low:g}, {high:g}{')' if high_open else ']'}"
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise VibbenchError(f"{name} must be {bound}, got {value!r} (a {type(value).__name__}, not a number){where}")
    v = float(value)
    if not math.isfinite(v):
        raise VibbenchError(f"{name} must be {bound}{' and finite' if high is None else ''}, got {value!r}{where}")
    if v < low or (high is not None and (v >= high if high_open else v > high)):
        raise VibbenchError(f"{name} must be {bound}, got {value!r}{where}")
    return value
