"""Progress display: a tqdm bar on a terminal, a line per finished unit of work elsewhere."""

from __future__ import annotations

import sys

from tqdm import tqdm


def is_interactive() -> bool:
    """Whether stderr is a terminal (where a live bar can be drawn)."""
    return sys.stderr.isatty()


def bar(total: int, desc: str, initial: int = 0) -> tqdm:
    """A bar that draws only on a terminal; in logs and CI it stays silent."""
    return tqdm(total=total, initial=initial, desc=desc, unit="step", leave=False, disable=not is_interactive(), dynamic_ncols=True)


def log(message: str) -> None:
    """One line to stderr, printed above any live bar."""
    tqdm.write(message, file=sys.stderr)
