"""Where the evaluation time goes: timing records of the tidy schema (metric "seconds"), which metrics.csv leaves
to timing.csv.

A timing record's eval_mode is the evaluation section it belongs to (calibration, ood, shift, robustness,
paper_protocol, embedding), as a training row's is "training"; one record per section holds the section's wall time,
and the robustness and paper-protocol sections add one per attack and path (attack, path, norm filled in; attack
"checks" for the gradient and large-budget checks of a path).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager


def timing_record(section: str, seconds: float, **conditions: str) -> dict:
    """A timing row of `section`: its wall time in seconds under `conditions` (attack, path, norm)."""
    return {"split": "test", "eval_mode": section, **conditions, "metric": "seconds", "value": float(seconds)}


@contextmanager
def timed(into: list[dict], section: str, **conditions: str) -> Iterator[None]:
    """Append to `into` the timing record of the block's wall time."""
    t0 = time.perf_counter()
    try:
        yield
    finally:
        into.append(timing_record(section, time.perf_counter() - t0, **conditions))
