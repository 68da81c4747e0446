"""The Markdown of throughput.md and compare.md."""

import math

import pandas as pd

from vibbench.bench.compare import RUN_COLUMNS, SUMMARY_COLUMNS, CompareResult
from vibbench.bench.output import compare_markdown, throughput_markdown
from vibbench.bench.throughput import CSV_COLUMNS, BenchConfig


def _throughput_frame() -> pd.DataFrame:
    row = dict.fromkeys(CSV_COLUMNS, math.nan)
    row.update(device="cpu", device_name="cpu-x", benchmark="forward", implementation="eager", precision="fp32", batch=100, n_samples=1)
    row.update(median_seconds=2e-3, samples_per_second=50_000.0, speedup_vs_eager=1.0, flops_per_second=3e9, peak_source="")
    return pd.DataFrame([row], columns=list(CSV_COLUMNS))


def test_the_throughput_table_has_a_row_per_measurement_and_dashes_for_what_is_unknown():
    md = throughput_markdown(_throughput_frame(), BenchConfig(), {"fused": "no GPU"}, {"device_name": "cpu-x", "cpu_threads": 2})
    lines = md.splitlines()
    header = lines.index(next(line for line in lines if line.startswith("| benchmark |")))
    assert lines[header + 1] == "|" + "---|" * 12
    assert lines[header + 2] == "| forward | eager | fp32 | 100 | 1 | 2.00 ms | 50,000 | 1.00x | — | 3.0 | — | — |"
    assert "- `fused` skipped: no GPU." in lines and "Roofline columns are empty" in md


def test_the_compare_table_names_each_side_with_its_precision():
    runs = pd.DataFrame([dict(zip(RUN_COLUMNS, ["pipeline", "a", "baseline", 0, "cpu", "cpu-x", "2", "fp32", "synthetic", 1, 2, 20, 1.0, 40.0]))])
    summary = pd.DataFrame(
        [dict(zip(SUMMARY_COLUMNS, ["pipeline", "conv | loop", "ours", "fp32", "bf16", 1, 2, 20, 1, 40.0, 100.0, 2.5, 2.0, 3.0]))]
    )
    md = compare_markdown(CompareResult(runs, summary, {"images": 40, "epochs": 1, "steps_per_epoch": 2}))
    assert md.splitlines()[-1] == r"| pipeline | conv \| loop (fp32) | ours (bf16) | 1 | 2 | 40 | 100 | 2.50x [2.00-3.00] |"


def test_the_compare_header_states_a_cpus_capability():
    runs = pd.DataFrame([dict(zip(RUN_COLUMNS, ["pipeline", "a", "baseline", 0, "cpu", "cpu-x", "2", "fp32", "synthetic", 1, 2, 20, 1.0, 40.0]))])
    summary = pd.DataFrame(
        [dict(zip(SUMMARY_COLUMNS, ["pipeline", "conv", "ours", "fp32", "fp32", 1, 2, 20, 1, 40.0, 100.0, 2.5, 2.0, 3.0]))]
    )
    result = CompareResult(runs, summary, {"images": 40, "epochs": 1, "steps_per_epoch": 2})
    md = compare_markdown(result, {"device": "cpu", "cpu_capability": "AVX2", "cpu_native_bf16": False})
    assert "Device: `cpu-x` (cpu; torch CPU capability AVX2, no native bf16 (bf16 emulated: far slower than fp32))" in md
    assert "capability" not in compare_markdown(result)  # without a provenance record, nothing is claimed
