"""`make gpu-check` (benchmarks/gpu_check.sh): refuses in one line without CUDA; its dry run writes every step."""

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"


def _run(tmp_path, **env):
    return subprocess.run(
        ["bash", str(SCRIPT)],
        cwd=ROOT,
        env={**os.environ, "PYTHON": sys.executable, "GPU_CHECK_OUT": str(tmp_path / "out"), **env},
        capture_output=True,
        text=True,
        timeout=900,
    )


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is here: the script would run for real")
def test_refuses_without_cuda_in_one_line(tmp_path):
    proc = _run(tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "needs a CUDA device" in lines[0] and "GPU_CHECK_DRY_RUN=1" in lines[0]
    assert not (tmp_path / "out").exists()  # nothing written


@pytest.mark.slow
def test_dry_run_records_every_step(tmp_path):
    proc = _run(tmp_path, GPU_CHECK_DRY_RUN="1", GPU_CHECK_DATASET="synthetic")
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    out = tmp_path / "out"
    steps = list(csv.DictReader(open(out / "steps.tsv"), delimiter="\t"))
    assert [s["step"] for s in steps] == ["gpu-tests", "head", "model", "compare", "paper-epoch"]
    assert all(s["exit_status"] == "0" for s in steps), steps
    for folder, name in [("head", "throughput.csv"), ("model", "throughput.csv"), ("compare", "compare.csv"), ("paper-epoch", "timing.csv")]:
        assert (out / folder / name).exists(), (folder, name)
    summary = (out / "summary.md").read_text()
    assert "dry run" in summary and "200 epochs, 3 seeds" in summary
    assert not (out / "cache").exists()  # checkpoints are not results
