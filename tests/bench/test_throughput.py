"""Throughput tooling: the benchmarked callables, `vibbench bench`'s files, the conventional loop and
the trainer comparisons. Tiny sizes only, and no assertion about speed (benchmarks report, tests check)."""

import argparse
import json
import math

import pandas as pd
import pytest
import torch

from vibbench import create_model
from vibbench.bench import throughput as bench
from vibbench.training.config import TrainConfig
from vibbench.bench.conventional import TorchvisionStyleMNIST, compare_training, step_plan, to_uint8, train_conventional
from vibbench.core.errors import VibbenchError


def bench_args(*argv):
    parser = argparse.ArgumentParser(prog="vibbench")
    bench.add_bench_parser(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(["bench", *argv])


# ---------------------------------------------------------------------------------------------
# the cases


@pytest.mark.parametrize("name", bench.BENCHMARKS)  # not "benchmark": that is pytest-benchmark's fixture
def test_every_model_case_runs_and_records_its_conditions(name):
    case = bench.make_case(name, "eager", batch=4, n_samples=2, precision="bf16", warmup=0)
    out = case.fn()
    assert torch.isfinite(torch.as_tensor(out).float()).all()
    assert case.n_samples == (12 if name == "eval" else 2)
    info = case.extra_info(median_seconds=0.5)
    assert info["samples_per_second"] == pytest.approx(4 / 0.5)
    for key in ("device", "device_name", "torch", "precision", "batch", "n_samples", "implementation"):
        assert key in info
    assert info["torch"] == torch.__version__ and info["precision"] == "bf16"


def test_the_training_step_moves_the_weights_and_the_ema():
    case = bench.make_case("train_step", "eager", batch=8, n_samples=1, warmup=0)
    model, opt, ema = case.keep
    before = [p.detach().clone() for p in model.parameters()]
    ema_before = [e.clone() for e in ema]
    case.fn()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert any(not torch.equal(b, e) for b, e in zip(ema_before, ema))
    assert opt.state  # Adam took a step


def test_loss_case_computes_gradients():
    case = bench.make_case("loss", "eager", batch=8, n_samples=12, warmup=0)
    model = case.keep[0]
    loss = case.fn()
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert all(p.grad is not None for p in model.parameters())


def test_vib_head_case_shapes_and_minimum_traffic():
    case = bench.make_head_case("eager", batch=16, latent_dim=8, n_samples=3, warmup=0)
    z, kl = case.fn()
    assert z.shape == (3, 16, 8) and kl.shape == (16,)
    assert case.bytes == 16 * (2 * 8 + 3 * 8 + 1) * 4
    # performance.md: the fp32 head at B = 100, K = 256, n = 12 moves about 1.4 MB
    assert bench.head_bytes(100, 256, 12, 4) == pytest.approx(1.43e6, rel=0.01)


def test_unavailable_implementations_say_why():
    assert bench.unavailable_reason("fused", "cpu")  # a sentence for the skip message, whatever the cause
    assert bench.unavailable_reason("eager", "cpu") is None
    with pytest.raises(VibbenchError, match="unknown implementation"):
        bench.unavailable_reason("magic", "cpu")
    with pytest.raises(VibbenchError, match="unavailable"):
        bench.make_case("forward", "fused", device="cpu", warmup=0)


FUSED_SCRIPT = """
import math
from vibbench.bench import throughput as bench
reason = bench.unavailable_reason("fused", "cpu", allow_interpreter=True)
if reason:
    print("SKIP", reason)
else:
    loss = bench.make_case("train_step", "fused", batch=4, n_samples=2, warmup=0, allow_interpreter=True).fn()
    z, kl = bench.make_head_case("fused", batch=4, latent_dim=16, n_samples=2, warmup=0, allow_interpreter=True).fn()
    assert math.isfinite(loss.item()) and z.shape == (2, 4, 16) and kl.shape == (4,)
    print("OK")
"""


def test_fused_wiring_runs_under_the_triton_interpreter():
    """The benchmarks' calls into vibbench.models.fused_head (forward, loss, backward, Adam) work, on the CPU
    through Triton's interpreter; a subprocess, since TRITON_INTERPRET counts only before triton's import."""
    import os
    import subprocess
    import sys

    pytest.importorskip("triton")
    env = dict(os.environ, TRITON_INTERPRET="1")
    proc = subprocess.run([sys.executable, "-c", FUSED_SCRIPT], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    last = proc.stdout.strip().splitlines()[-1]
    if last.startswith("SKIP"):
        pytest.skip(last)
    assert last == "OK"


def test_device_peaks_match_the_most_specific_name():
    assert bench.device_peak("NVIDIA H100 80GB HBM3").bytes_per_second == 3.35e12
    assert bench.device_peak("NVIDIA H100 PCIe").bytes_per_second == 2.0e12
    assert bench.device_peak("NVIDIA H200").bytes_per_second == 4.8e12
    assert bench.device_peak("NVIDIA A100-SXM4-80GB").bytes_per_second == 2.039e12
    assert bench.device_peak("NVIDIA A10").bytes_per_second == 0.6e12
    assert bench.device_peak("NVIDIA L40S").bytes_per_second == 0.864e12
    assert bench.device_peak("Intel(R) Xeon(R) Processor") is None
    assert bench.device_peak("Intel(R) Xeon(R) Processor", bandwidth_gbs=20).bytes_per_second == 20e9


def test_roofline_fraction_is_minimum_time_over_measured():
    case = bench.Case("vib_head", "eager", "fp32", "cuda", 100, 12, fn=lambda: None, flops=1.0, bytes=3.35e6)
    row = bench._row(case, 2e-6, 5, 4e-6, "NVIDIA H100 80GB HBM3", bench.device_peak("NVIDIA H100 80GB HBM3"))
    assert row["roofline_seconds"] == pytest.approx(1e-6)
    assert row["roofline_fraction"] == pytest.approx(0.5)
    assert row["speedup_vs_eager"] == pytest.approx(2.0)
    model_row = bench._row(bench.Case("forward", "eager", "fp32", "cuda", 100, 1, fn=lambda: None, flops=1e9), 1e-3, 5, 1e-3, "x", None)
    assert math.isnan(model_row["roofline_fraction"]) and model_row["flops_per_second"] == pytest.approx(1e12)


# ---------------------------------------------------------------------------------------------
# vibbench bench


def test_bench_command_writes_tidy_csv_markdown_figure_and_provenance(tmp_path):
    args = bench_args(
        "--quick", "--device", "cpu", "--out", str(tmp_path), "--batch-sizes", "4", "--head-batch-sizes", "8,16",
        "--min-run-time", "0.001", "--benchmarks", "forward,eval",
    )  # fmt: skip
    bench.cmd_bench(args)
    df = pd.read_csv(tmp_path / "throughput.csv")
    assert tuple(df.columns) == bench.CSV_COLUMNS
    # forward at n in {1, 12}, eval at 12, the head at 2 sizes; x 2 precisions
    assert len(df) == (2 + 1 + 2) * 2
    assert set(df.benchmark) == {"forward", "eval", "vib_head"}
    assert set(df.precision) == {"fp32", "bf16"} and set(df.implementation) == {"eager"}
    assert (df.samples_per_second > 0).all() and (df.median_seconds > 0).all()
    assert df.samples_per_second.to_numpy() == pytest.approx((df.batch / df.median_seconds).to_numpy())
    head = df[df.benchmark == "vib_head"]
    assert head.bytes.notna().all() and df[df.benchmark != "vib_head"].bytes.isna().all()
    assert df.roofline_fraction.isna().all()  # a CPU's peak is unknown unless given ...
    md = (tmp_path / "throughput.md").read_text()
    assert "| benchmark |" in md and "Roofline columns are empty" in md  # ... and the report says so
    assert "`fused` skipped" not in md  # not asked for in --quick
    for ext in ("png", "pdf"):
        assert (tmp_path / f"throughput.{ext}").stat().st_size > 1000
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert prov["device"] == "cpu" and torch.__version__.startswith(prov["versions"]["torch"])
    assert "throughput.csv" in prov["files"] and prov["config"]["bench"]["batch_sizes"] == [4]
    assert not list(tmp_path.glob(".*.tmp"))  # atomic writes leave no temporary files


def test_bench_with_a_given_peak_fills_the_roofline(tmp_path):
    cfg = bench.BenchConfig.quick(batch_sizes=(4,), benchmarks=("forward",), n_samples=(1,), precisions=("fp32",), head_batch_sizes=(8,), min_run_time=0.001, peak_bandwidth_gbs=10.0)
    df = bench.run_bench(tmp_path, cfg).throughput
    head = df[df.benchmark == "vib_head"].iloc[0]
    assert head.roofline_fraction > 0 and head.peak_bytes_per_second == 10e9
    assert "given: 10 GB/s" in (tmp_path / "throughput.md").read_text()


def test_bench_rejects_bad_options():
    with pytest.raises(SystemExit):
        bench_args("--implementations", "eager,turbo")
    with pytest.raises(SystemExit):
        bench_args("--batch-sizes", "0")
    with pytest.raises(VibbenchError, match="nothing to do"):
        bench.cmd_bench(bench_args("--no-throughput", "--device", "cpu"))


def test_bench_compare_writes_one_row_per_comparison_and_precision(tmp_path):
    args = bench_args(
        "--no-throughput", "--compare", "--device", "cpu", "--dataset", "synthetic", "--out", str(tmp_path),
        "--compare-steps", "2", "--compare-repeats", "1", "--compare-precisions", "fp32,bf16",
        "--compare-models", "mlp_vib", "mlp_vib:beta=1e-2",
    )  # fmt: skip
    bench.cmd_bench(args)
    summary = pd.read_csv(tmp_path / "compare_summary.csv")
    assert sorted(zip(summary.comparison, summary.candidate_precision)) == [
        ("pipeline", "bf16"), ("pipeline", "fp32"), ("population", "bf16"), ("population", "fp32"),
    ]  # fmt: skip
    assert (summary[summary.comparison == "pipeline"].baseline_precision == "fp32").all()
    assert "vibbench.train_model (bf16)" in (tmp_path / "compare.md").read_text()
    with pytest.raises(SystemExit):
        bench_args("--compare", "--compare-precisions", "fp16")


# ---------------------------------------------------------------------------------------------
# the conventional loop and the comparisons


def test_the_torchvision_style_dataset_gives_our_pixels_exactly(synthetic):
    images = synthetic.train.images[:10]
    ds = TorchvisionStyleMNIST(to_uint8(images), synthetic.train.labels[:10])
    x, y = ds[3]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28)
    assert torch.equal(x, images[3]) and y == int(synthetic.train.labels[3])


def test_conventional_loop_trains_on_the_same_number_of_batches(synthetic):
    n, batch = 400, 25
    cfg = TrainConfig(dataset="synthetic", epochs=1, batch_size=batch, lr=1e-3)
    torch.manual_seed(0)
    model = create_model("mlp_vib")
    result = train_conventional(model, to_uint8(synthetic.train.images[:n]), synthetic.train.labels[:n], cfg, seed=0)
    assert result.steps == cfg.epochs * (n // batch)  # what train_model takes on the same data
    assert len(result.losses) == len(result.train_accuracy) == result.steps
    first, last = sum(result.losses[:4]) / 4, sum(result.losses[-4:]) / 4
    assert last < first - 0.3  # it learns
    assert not model.training and result.examples_per_second > 0


def test_step_plan_runs_whole_epochs_of_the_asked_steps():
    assert step_plan(200, 50_000, 100) == (1, 200)
    assert step_plan(1000, 50_000, 100) == (2, 500)
    epochs, per = step_plan(7, 500, 100)
    assert epochs * per == 7 and per <= 5
    with pytest.raises(VibbenchError):
        step_plan(10, 50, 100)


def test_compare_training_returns_positive_ratios_for_both_comparisons():
    result = compare_training(
        steps=2, dataset="synthetic", batch_size=20, repeats=1, warmup=False,
        models=("mlp_deterministic", "mlp_vib", "mlp_vib:beta=1e-2"),  # a singleton group and a population of 2
    )  # fmt: skip
    s = result.summary.set_index("comparison")
    assert set(s.index) == {"pipeline", "population"}
    assert (s.ratio > 0).all() and s.ratio.map(math.isfinite).all()
    assert s.loc["population", "models"] == 3 and s.loc["pipeline", "models"] == 1
    assert (result.runs.steps == 2).all() and len(result.runs) == 4


def test_compare_in_bf16_runs_our_trainers_in_bf16_and_the_conventional_loop_in_fp32():
    result = compare_training(steps=2, dataset="synthetic", batch_size=20, repeats=1, warmup=False, precision="bf16", models=("mlp_vib", "mlp_vib:beta=1e-2"))
    s = result.summary.set_index("comparison")
    assert s.loc["pipeline", "baseline_precision"] == "fp32" and s.loc["pipeline", "candidate_precision"] == "bf16"
    assert (s.loc["population", ["baseline_precision", "candidate_precision"]] == "bf16").all()
    with pytest.raises(VibbenchError, match="precision"):
        compare_training(steps=1, dataset="synthetic", batch_size=20, precision="fp16")
