"""The throughput grid: its row groups and the rows of throughput.csv."""

import math

import pytest

from vibbench.bench.cases import Case
from vibbench.bench.roofline import device_peak
from vibbench.bench.throughput import BenchConfig, throughput_row


def test_roofline_fraction_is_minimum_time_over_measured():
    case = Case("vib_head", "eager", "fp32", "cuda", 100, 12, fn=lambda: None, flops=1.0, bytes=3.35e6)
    row = throughput_row(case, 2e-6, 5, 4e-6, "NVIDIA H100 80GB HBM3", device_peak("NVIDIA H100 80GB HBM3"))
    assert row["roofline_seconds"] == pytest.approx(1e-6)
    assert row["roofline_fraction"] == pytest.approx(0.5)
    assert row["speedup_vs_eager"] == pytest.approx(2.0)
    model_row = throughput_row(Case("forward", "eager", "fp32", "cuda", 100, 1, fn=lambda: None, flops=1e9), 1e-3, 5, 1e-3, "x", None)
    assert math.isnan(model_row["roofline_fraction"]) and model_row["flops_per_second"] == pytest.approx(1e12)


def test_the_grid_has_one_group_per_condition_and_eval_always_12_samples():
    cfg = BenchConfig(batch_sizes=(4, 8), n_samples=(1, 3), benchmarks=("forward", "eval"), precisions=("fp32",), head_batch_sizes=(16,))
    assert cfg.groups() == [
        ("forward", "fp32", 4, 1), ("forward", "fp32", 4, 3), ("forward", "fp32", 8, 1), ("forward", "fp32", 8, 3),
        ("eval", "fp32", 4, 12), ("eval", "fp32", 8, 12), ("vib_head", "fp32", 16, 12),
    ]  # fmt: skip
