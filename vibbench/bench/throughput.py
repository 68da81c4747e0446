"""The throughput grid of `vibbench bench`: every case of a `BenchConfig`, timed interleaved, as rows of throughput.csv."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from vibbench.bench.cases import (
    BENCHMARKS, EVAL_SAMPLES, HEAD_BENCHMARK, HEAD_SAMPLES, IMPLEMENTATIONS, Case, make_case, make_head_case, unavailable_reason,
)  # fmt: skip
from vibbench.bench.roofline import Peak, device_peak, roofline_seconds
from vibbench.bench.timing import interleaved_medians
from vibbench.core.errors import VibbenchError
from vibbench.core.precision import PRECISIONS

BATCH_SIZES = (100, 1000, 10000)
SAMPLE_COUNTS = (1, 12)
HEAD_BATCH_SIZES = (100, 1000, 10000, 100000)

CSV_COLUMNS = (
    "device", "device_name", "torch", "benchmark", "implementation", "precision", "batch", "n_samples",
    "median_seconds", "samples_per_second", "speedup_vs_eager", "compile_seconds", "runs",
    "flops", "flops_per_second", "bytes", "bytes_per_second",
    "peak_bytes_per_second", "peak_flops_per_second", "peak_source", "roofline_seconds", "roofline_fraction",
)  # fmt: skip
"""The tidy schema of throughput.csv, one row per (benchmark, implementation, precision, batch, n).
Units: seconds per call, samples = examples (rows) per second, FLOP and bytes per call, per second.
The peak and roofline columns are empty where the device's peak is unknown."""


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"  # resolved: cpu or cuda
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    n_samples: tuple[int, ...] = SAMPLE_COUNTS
    benchmarks: tuple[str, ...] = BENCHMARKS
    implementations: tuple[str, ...] = IMPLEMENTATIONS
    precisions: tuple[str, ...] = PRECISIONS
    head_batch_sizes: tuple[int, ...] = HEAD_BATCH_SIZES
    min_run_time: float = 0.2  # seconds per blocked_autorange call
    repeats: int = 3  # interleaved rounds per group
    warmup: int = 2
    peak_bandwidth_gbs: float | None = None
    peak_tflops: float | None = None

    @classmethod
    def quick(cls, **changes) -> "BenchConfig":
        """Minutes on 2 CPU cores: batch 100, eager only, short timing."""
        base = cls(batch_sizes=(100,), implementations=("eager",), head_batch_sizes=(100, 1000), min_run_time=0.05, repeats=1, warmup=1)
        return dataclasses.replace(base, **changes)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def groups(self) -> list[tuple[str, str, int, int]]:
        """(benchmark, precision, batch, n_samples) of every row group, the VIB head's last."""
        groups = [
            (kind, precision, batch, n)
            for kind in self.benchmarks
            for precision in self.precisions
            for batch in self.batch_sizes
            for n in ((EVAL_SAMPLES,) if kind == "eval" else self.n_samples)
        ]
        return groups + [(HEAD_BENCHMARK, p, b, HEAD_SAMPLES) for p in self.precisions for b in self.head_batch_sizes]


def _group_cases(kind: str, precision: str, batch: int, n: int, impls: list[str], device: torch.device, warmup: int) -> dict[str, Case]:
    if kind == HEAD_BENCHMARK:
        return {impl: make_head_case(impl, device=device, precision=precision, batch=batch, n_samples=n, warmup=warmup) for impl in impls}
    return {impl: make_case(kind, impl, device=device, precision=precision, batch=batch, n_samples=n, warmup=warmup) for impl in impls}


def throughput_rows(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, str]]:
    """Measure the grid of `cfg`; return (rows in CSV_COLUMNS, {implementation: why skipped})."""
    from vibbench.runs.provenance import device_name

    device = torch.device(cfg.device)
    name = device_name(cfg.device)
    peak = device_peak(name, bandwidth_gbs=cfg.peak_bandwidth_gbs, flops_tflops=cfg.peak_tflops) if (cfg.device == "cuda" or cfg.peak_bandwidth_gbs) else None
    skipped = {impl: r for impl in cfg.implementations if (r := unavailable_reason(impl, device))}
    impls = [impl for impl in cfg.implementations if impl not in skipped]
    if not impls:  # an empty table would be measured and drawn
        reasons = "; ".join(f"{impl}: {why}" for impl, why in skipped.items())
        raise VibbenchError(f"no implementation of {', '.join(cfg.implementations)} can be measured on {cfg.device} ({reasons})")
    groups = cfg.groups()
    rows = []
    for i, (kind, precision, batch, n) in enumerate(groups):
        if progress:
            progress(f"[{i + 1}/{len(groups)}] {kind} {precision} batch {batch} n {n}: {', '.join(impls)}")
        cases = _group_cases(kind, precision, batch, n, impls, device, cfg.warmup)
        medians = interleaved_medians({impl: case.fn for impl, case in cases.items()}, min_run_time=cfg.min_run_time, repeats=cfg.repeats)
        eager = medians.get("eager", (None,))[0]
        for impl, case in cases.items():
            median, runs = medians[impl]
            rows.append(throughput_row(case, median, runs, eager, name, peak))
        del cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, skipped


def throughput_row(case: Case, median: float, runs: int, eager_median: float | None, name: str, peak: Peak | None) -> dict:
    """One row of throughput.csv: the case's conditions, its median and what follows from it
    (rates, the ratio to eager, and the roofline where `peak` is known and the case's traffic is)."""
    nan = math.nan
    row = {
        "device": case.device,
        "device_name": name,
        "torch": torch.__version__,
        "benchmark": case.benchmark,
        "implementation": case.implementation,
        "precision": case.precision,
        "batch": case.batch,
        "n_samples": case.n_samples,
        "median_seconds": median,
        "samples_per_second": case.batch / median,
        "speedup_vs_eager": eager_median / median if eager_median else nan,
        "compile_seconds": case.compile_seconds if case.compile_seconds is not None else nan,
        "runs": runs,
        "flops": case.flops if case.flops is not None else nan,
        "flops_per_second": case.flops / median if case.flops is not None else nan,
        "bytes": case.bytes if case.bytes is not None else nan,
        "bytes_per_second": case.bytes / median if case.bytes is not None else nan,
        "peak_bytes_per_second": nan,
        "peak_flops_per_second": nan,
        "peak_source": "",
        "roofline_seconds": nan,
        "roofline_fraction": nan,
    }
    if peak is not None:
        peak_flops = peak.flops(case.precision)
        row.update(peak_source=peak.source, peak_bytes_per_second=peak.bytes_per_second, peak_flops_per_second=peak_flops if peak_flops is not None else nan)
        if case.bytes is not None:  # the roofline is defined for the head, whose traffic is known
            bound = roofline_seconds(peak, case.precision, case.bytes, case.flops)
            row.update(roofline_seconds=bound, roofline_fraction=bound / median)
    return row
