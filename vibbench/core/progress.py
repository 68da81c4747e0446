"""Progress display: a tqdm bar on a terminal, a line per finished unit of work elsewhere; wall times for people."""

from __future__ import annotations

import sys

from tqdm import tqdm


_BARS = True


def disable_bars() -> None:
    """No live bars in this process (a worker of a parallel run, whose bars would overwrite each other's); lines stay."""
    global _BARS
    _BARS = False


def is_interactive() -> bool:
    """Whether stderr is a terminal (where a live bar can be drawn) and bars are not disabled in this process."""
    return _BARS and sys.stderr.isatty()


def bar(total: int, desc: str, initial: int = 0) -> tqdm:
    """A bar that draws only on a terminal; in logs and CI it stays silent."""
    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, disable=not is_interactive(), dynamic_ncols=True)


def log(message: str) -> None:
    """One line to stderr, printed above any live bar."""
    tqdm.write(message, file=sys.stderr)


def duration(seconds: float) -> str:
    """A wall time for people: 54 s, 12 min 3 s, 2 h 05 min."""
    s = round(seconds)
    if s < 90:
        return f"{seconds:.1f} s" if seconds < 10 else f"{s} s"
    if s < 90 * 60:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


def elapsed_and_eta(elapsed: float, done: int, total: int) -> str:
    """"3 min 2 s elapsed, ETA 6 min 4 s": the time left estimated from the mean time of the `done` of `total`
    items so far (no ETA before the first is done)."""
    text = f"{duration(elapsed)} elapsed"
    if 0 < done < total:
        text += f", ETA {duration(elapsed / done * (total - done))}"
    return text
