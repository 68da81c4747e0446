"""`vibbench bench`: its options and the files it writes. Tiny sizes only, and no assertion about speed."""

import json

import pandas as pd
import pytest
import torch

from vibbench.bench.command import cmd_bench, run_bench
from vibbench.cli import build_parser
from vibbench.bench.throughput import CSV_COLUMNS, BenchConfig
from vibbench.core.errors import VibbenchError


def bench_args(*argv):
    """The arguments as the command line parses them (its lazy parser adds bench's options on first use)."""
    return build_parser().parse_args(["bench", *argv])


def test_bench_command_writes_tidy_csv_markdown_figure_and_provenance(tmp_path):
    args = bench_args(
        "--quick", "--device", "cpu", "--out", str(tmp_path), "--batch-sizes", "4", "--head-batch-sizes", "8,16",
        "--min-run-time", "0.001", "--benchmarks", "forward,eval",
    )  # fmt: skip
    cmd_bench(args)
    df = pd.read_csv(tmp_path / "throughput.csv")
    assert tuple(df.columns) == CSV_COLUMNS
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
    cfg = BenchConfig.quick(batch_sizes=(4,), benchmarks=("forward",), n_samples=(1,), precisions=("fp32",), head_batch_sizes=(8,), min_run_time=0.001, peak_bandwidth_gbs=10.0)
    df = run_bench(tmp_path, cfg).throughput
    head = df[df.benchmark == "vib_head"].iloc[0]
    assert head.roofline_fraction > 0 and head.peak_bytes_per_second == 10e9
    assert "given: 10 GB/s" in (tmp_path / "throughput.md").read_text()


def test_bench_rejects_bad_options():
    with pytest.raises(SystemExit):
        bench_args("--implementations", "eager,turbo")
    with pytest.raises(SystemExit):
        bench_args("--batch-sizes", "0")
    with pytest.raises(VibbenchError, match="nothing to do"):
        cmd_bench(bench_args("--no-throughput", "--device", "cpu"))
    with pytest.raises(VibbenchError, match="--peak-tflops needs --peak-bandwidth"):
        cmd_bench(bench_args("--device", "cpu", "--peak-tflops", "1"))
    with pytest.raises(VibbenchError, match="^--compare-steps must be a positive integer, got 0$"):
        cmd_bench(bench_args("--device", "cpu", "--compare", "--compare-steps", "0"))


def test_bench_compare_writes_one_row_per_comparison_and_precision(tmp_path):
    args = bench_args(
        "--no-throughput", "--compare", "--device", "cpu", "--dataset", "synthetic", "--out", str(tmp_path),
        "--compare-steps", "2", "--compare-repeats", "1", "--compare-precisions", "fp32,bf16",
        "--compare-models", "mlp_vib", "mlp_vib:beta=1e-2",
    )  # fmt: skip
    cmd_bench(args)
    summary = pd.read_csv(tmp_path / "compare_summary.csv")
    assert sorted(zip(summary.comparison, summary.candidate_precision)) == [
        ("pipeline", "bf16"), ("pipeline", "fp32"), ("population", "bf16"), ("population", "fp32"),
        ("processes", "bf16"), ("processes", "fp32"),
        ("products", "bf16"), ("products", "fp32"), ("products_update", "bf16"), ("products_update", "fp32"),
    ]  # fmt: skip
    assert (summary[summary.comparison == "pipeline"].baseline_precision == "fp32").all()
    md = (tmp_path / "compare.md").read_text()
    assert "vibbench.train_model (bf16)" in md
    assert "MFLOP of matrix products per example" in md and "- fp32: products " in md and "- bf16: products " in md
    assert md.count("  - a sweep's models, train_model in ") == 2 and "of `products` on every core of this machine" in md
    prov = json.loads((tmp_path / "provenance.json").read_text())
    assert [c["precision"] for c in prov["config"]["compare"]] == ["fp32", "bf16"]
    assert prov["files"] == ["compare.csv", "compare_summary.csv", "compare.md"]
    with pytest.raises(SystemExit):
        bench_args("--compare", "--compare-precisions", "fp16")


@pytest.mark.parametrize("native", [True, False])
def test_the_default_comparison_measures_bf16_only_where_it_is_native(native, monkeypatch, capsys):
    import vibbench.core.precision as precision
    from vibbench.bench.command import compare_configs_from_args

    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)  # simulated: the CPU has it or lacks it
    configs = compare_configs_from_args(bench_args("--compare", "--device", "cpu"), "cpu")
    assert [c.precision for c in configs] == (["fp32", "bf16"] if native else ["fp32"])
    said = capsys.readouterr().err
    assert ("no native bf16" in said and "--compare-precisions fp32,bf16" in said) != native
    # asked for by name, bf16 is measured anyway (where it is emulated, that is the trap the numbers show)
    asked = compare_configs_from_args(bench_args("--compare", "--device", "cpu", "--compare-precisions", "fp32,bf16"), "cpu")
    assert [c.precision for c in asked] == ["fp32", "bf16"]


def test_cpu_headers_state_the_capability_and_bf16(tmp_path):
    cfg = BenchConfig.quick(batch_sizes=(4,), benchmarks=("forward",), n_samples=(1,), precisions=("fp32",), head_batch_sizes=(8,), min_run_time=0.001)
    out = run_bench(tmp_path, cfg)
    capability = torch.backends.cpu.get_cpu_capability()
    line = next(x for x in (tmp_path / "throughput.md").read_text().splitlines() if x.startswith("Device:"))
    assert f"torch CPU capability {capability}, " in line and "bf16" in line
    assert out.provenance["cpu_capability"] == capability
