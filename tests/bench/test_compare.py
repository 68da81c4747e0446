"""The trainer comparisons: the same work on both sides, one summary row per comparison."""

import math

import pytest

from vibbench.bench.compare import CompareConfig, compare_training, step_plan
from vibbench.core.errors import VibbenchError


def test_step_plan_runs_whole_epochs_of_the_asked_steps():
    assert step_plan(200, 50_000, 100) == (1, 200)
    assert step_plan(1000, 50_000, 100) == (2, 500)
    epochs, per = step_plan(7, 500, 100)
    assert epochs * per == 7 and per <= 5
    with pytest.raises(VibbenchError):
        step_plan(10, 50, 100)


def test_compare_training_returns_positive_ratios_for_every_comparison():
    cfg = CompareConfig(
        steps=2, dataset="synthetic", batch_size=20, repeats=1, warmup=False,
        models=("mlp_deterministic", "mlp_vib", "mlp_vib:beta=1e-2"),  # a singleton group and a population of 2
    )  # fmt: skip
    result = compare_training(cfg)
    s = result.summary.set_index("comparison")
    assert set(s.index) == {"pipeline", "population", "processes", "products", "products_update"}
    assert (s.ratio > 0).all() and s.ratio.map(math.isfinite).all()
    assert s.loc["population", "models"] == 3 and s.loc["pipeline", "models"] == 1 and s.loc["processes", "models"] == 3
    assert (result.runs.steps == 2).all() and len(result.runs) == 10
    assert s.loc["processes", "baseline"] == "train_model one by one" and s.loc["processes", "candidate"].startswith("train_model in ")
    assert s.loc["products", "baseline"] == "the step's matrix products alone"
    assert result.info["step_flops_per_example"] > 0
    assert s.loc["population", "candidate"] == "train_population (2 groups)"


def test_compare_in_bf16_runs_our_trainers_in_bf16_and_the_conventional_loop_in_fp32():
    result = compare_training(CompareConfig(steps=2, dataset="synthetic", batch_size=20, repeats=1, warmup=False, precision="bf16", models=("mlp_vib", "mlp_vib:beta=1e-2"), processes=False))
    s = result.summary.set_index("comparison")
    assert s.loc["pipeline", "baseline_precision"] == "fp32" and s.loc["pipeline", "candidate_precision"] == "bf16"
    assert (s.loc["population", ["baseline_precision", "candidate_precision"]] == "bf16").all()


def test_compare_rejects_what_it_cannot_compare():
    with pytest.raises(VibbenchError, match="precision"):
        compare_training(CompareConfig(steps=1, dataset="synthetic", batch_size=20, precision="fp16"))
    with pytest.raises(VibbenchError, match="repeats"):
        compare_training(CompareConfig(steps=1, dataset="synthetic", batch_size=20, repeats=0))
    with pytest.raises(VibbenchError, match="nothing to compare"):
        compare_training(CompareConfig(steps=1, dataset="synthetic", batch_size=20, pipeline=False, population=False, limits=False, processes=False))
