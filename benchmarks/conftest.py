"""Options and parametrization of the throughput benchmarks (run: `pytest benchmarks/`; see README.md).

The grid is device x precision x implementation x batch x n_samples. The default keeps a run short
on 2 CPU cores; `--bench-full` adds batch 10000, the largest VIB-head sizes and torch.compile.
"""

from __future__ import annotations

import pytest
import torch

from vibbench.bench.cases import IMPLEMENTATIONS, Case
from vibbench.bench.throughput import BATCH_SIZES, HEAD_BATCH_SIZES, SAMPLE_COUNTS
from vibbench.core.precision import PRECISIONS

DEFAULT_BATCHES = (100, 1000)
DEFAULT_HEAD_BATCHES = (100, 10000)
DEFAULT_IMPLEMENTATIONS = ("eager", "fused")  # fused skips itself where no Triton device is available


def pytest_addoption(parser):
    group = parser.getgroup("vibbench throughput benchmarks")
    group.addoption("--bench-full", action="store_true", help="the full grid: batch 10000, VIB head up to 100000 rows, and torch.compile")
    group.addoption("--bench-batch", metavar="N,N", help="model batch sizes, e.g. 100,1000 (overrides the default and --bench-full)")
    group.addoption("--bench-head-batch", metavar="N,N", help="VIB-head batch sizes (overrides the default and --bench-full)")
    group.addoption("--bench-impl", metavar="I,I", help="implementations among eager,compile,fused")
    group.addoption("--bench-precision", metavar="P,P", help="precisions among fp32,bf16 (default: both)")
    group.addoption("--bench-device", metavar="D,D", help="devices among cpu,cuda (default: cpu, and cuda when available)")
    group.addoption(
        "--bench-rounds", type=int, metavar="R",
        help="time exactly R rounds of one call with benchmark.pedantic instead of pytest-benchmark's calibration "
        "(then --benchmark-min-rounds / --benchmark-max-time do not apply)",
    )  # fmt: skip


def _list(config, option: str, default: tuple, allowed: tuple | None = None, cast=str) -> tuple:
    text = config.getoption(option)
    if not text:
        return default
    values = tuple(cast(v) for v in text.replace(",", " ").split())
    if allowed is not None and (bad := [v for v in values if v not in allowed]):
        raise pytest.UsageError(f"{option}: unknown value(s) {', '.join(map(str, bad))}; choose from {', '.join(allowed)}")
    return values


def pytest_generate_tests(metafunc):
    config = metafunc.config
    full = config.getoption("--bench-full")
    devices = ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",)
    grid = {
        "device": _list(config, "--bench-device", devices, ("cpu", "cuda")),
        "precision": _list(config, "--bench-precision", PRECISIONS, PRECISIONS),
        "impl": _list(config, "--bench-impl", IMPLEMENTATIONS if full else DEFAULT_IMPLEMENTATIONS, IMPLEMENTATIONS),
        "batch": _list(config, "--bench-batch", BATCH_SIZES if full else DEFAULT_BATCHES, cast=int),
        "head_batch": _list(config, "--bench-head-batch", HEAD_BATCH_SIZES if full else DEFAULT_HEAD_BATCHES, cast=int),
        "n_samples": SAMPLE_COUNTS,
    }
    prefix = {"batch": "b", "head_batch": "B", "n_samples": "n"}
    for name, values in grid.items():
        if name in metafunc.fixturenames:
            metafunc.parametrize(name, values, ids=[f"{prefix.get(name, '')}{v}" for v in values])


@pytest.fixture
def measure(benchmark, request):
    """measure(case): time `case.fn` (already warmed up) and fill `benchmark.extra_info`.

    Cases of one benchmark, device, precision and size share a group, so the table puts the
    implementations side by side. The median (seconds per call) gives samples_per_second."""
    rounds = request.config.getoption("--bench-rounds")

    def run(case: Case):
        benchmark.group = f"{case.benchmark} {case.device} {case.precision} batch={case.batch} n={case.n_samples}"
        if rounds:
            benchmark.pedantic(case.fn, rounds=rounds, warmup_rounds=0, iterations=1)
        else:
            benchmark(case.fn)
        median = benchmark.stats.stats.median if benchmark.stats else None  # None under --benchmark-disable
        benchmark.extra_info.update(case.extra_info(median))

    return run

