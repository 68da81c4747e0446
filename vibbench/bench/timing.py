"""Timing a benchmarked call: synchronized calls, warm-up, interleaved medians."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping

import torch


def synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    """`fn`, followed on CUDA by a device synchronization, so that a time is the latency of one
    call (pytest-benchmark's perf_counter would otherwise time the kernel launches only)."""
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def warm_up(fn: Callable[[], object], implementation: str, warmup: int) -> float | None:
    """Run the warm-up calls; for `compile`, the first call (compilation plus one run) is timed
    and its seconds returned, else None."""
    compile_seconds = None
    if implementation == "compile":
        t0 = time.perf_counter()
        fn()
        compile_seconds = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    return compile_seconds


def interleaved_medians(
    calls: Mapping[str, Callable[[], object]], *, min_run_time: float = 0.2, repeats: int = 3
) -> dict[str, tuple[float, int]]:
    """{name: (median seconds per call, number of timed runs)}, measuring the calls in turn
    (A B C, C B A, A B C, ...) with Timer.blocked_autorange, so that drift on a shared machine
    hits every implementation alike; the median is over every block of every repeat."""
    from torch.utils.benchmark import Timer

    threads = torch.get_num_threads()  # Timer defaults to 1 thread; measure what users get
    timers = {name: Timer(stmt="fn()", globals={"fn": fn}, num_threads=threads, label=name) for name, fn in calls.items()}
    times: dict[str, list[float]] = {name: [] for name in calls}
    names = list(calls)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name] += timers[name].blocked_autorange(min_run_time=min_run_time).times
    return {name: (statistics.median(t), len(t)) for name, t in times.items()}
