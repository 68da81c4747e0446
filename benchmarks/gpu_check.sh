#!/usr/bin/env bash
# `make gpu-check`: everything GPU-specific, measured in one go (about 8 minutes on one GPU), into one folder.
#
#   1. the GPU-only tests (pytest -m gpu): the fused head compiled on CUDA, training repeatable on CUDA,
#      populations against one-by-one training, the shared-encoder EOT and the fused predictor against eager;
#   2. the VIB head's throughput, eager / torch.compile / the fused Triton kernel, batch 100 to 100,000, fp32 and
#      bf16, with its share of the memory roofline (throughput.* under head/);
#   3. the model's throughput (forward, training step, 12-sample eval) per implementation at batch 100 and 10,000
#      (model/);
#   4. our trainer against a conventional loop, populations against one by one (compare/);
#   5. one epoch of the paper profile (every model of it, one seed, no evaluation; paper-epoch/) and the
#      projection of its training time to 200 epochs x 3 seeds.
#
# Each step has a time limit (together 8 minutes) and its own files; a step that fails or runs out of time is recorded as such in
# steps.tsv and summary.md and the next one runs. Settings (environment variables):
#   GPU_CHECK_OUT      the folder (default: results/bench-<the GPU's name>)
#   GPU_CHECK_DATASET  the dataset of steps 4 and 5 (default mnist; synthetic needs no files)
#   GPU_CHECK_DRY_RUN  1: run every step tiny on the CPU, to check this script (its numbers mean nothing)
#   PYTHON             the interpreter with vibbench installed (default .venv/bin/python)
set -u -o pipefail

PYTHON=${PYTHON:-.venv/bin/python}
DATASET=${GPU_CHECK_DATASET:-mnist}
DRY=${GPU_CHECK_DRY_RUN:-0}

if [ "$DRY" = 1 ]; then
    DEVICE=cpu
    GPU=dry-run-cpu
else
    DEVICE=cuda
    GPU=$("$PYTHON" -c '
import re, sys, torch
if not torch.cuda.is_available():
    sys.exit("make gpu-check needs a CUDA device, and torch sees none here (torch.cuda.is_available() is False); "
             "GPU_CHECK_DRY_RUN=1 checks the script on the CPU")
print(re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(0).lower()).strip("-"))
') || exit 2
fi
OUT=${GPU_CHECK_OUT:-results/bench-$GPU}
mkdir -p "$OUT"
STEPS="$OUT/steps.tsv"
printf 'step\texit_status\tseconds\tlimit_seconds\n' > "$STEPS"
export PYTHONUNBUFFERED=1

step() {  # step NAME LIMIT_SECONDS COMMAND...: run it under the limit, log to NAME.log, record its status and time
    local name=$1 limit=$2
    shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10 "$limit" "$@" > "$OUT/$name.log" 2>&1
    local rc=$?
    printf '%s\t%s\t%s\t%s\n' "$name" "$rc" "$((SECONDS - t0))" "$limit" >> "$STEPS"
    [ $rc = 0 ] || echo "   $name: exit status $rc (124: out of time); see $OUT/$name.log"
    tail -n 3 "$OUT/$name.log"
}

{ command -v nvidia-smi >/dev/null && nvidia-smi; "$PYTHON" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)'; } > "$OUT/device.txt" 2>&1

if [ "$DRY" = 1 ]; then
    step gpu-tests 300 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests --junitxml="$OUT/gpu-tests.xml"
    step head 300 "$PYTHON" -m vibbench bench --device cpu --quick --benchmarks eval --precisions fp32 --head-batch-sizes 100,1000 --out "$OUT/head"
    step model 300 "$PYTHON" -m vibbench bench --device cpu --quick --benchmarks forward --precisions fp32 --head-batch-sizes 100 --out "$OUT/model"
    step compare 300 "$PYTHON" -m vibbench bench --device cpu --no-throughput --compare --compare-steps 5 --compare-repeats 1 \
        --compare-precisions fp32 --compare-models mlp_deterministic mlp_vib --dataset "$DATASET" --out "$OUT/compare"
    step paper-epoch 300 "$PYTHON" -m vibbench run --profile smoke --models mlp_deterministic mlp_vib --no-eval --device cpu \
        --dataset "$DATASET" --cache-dir "$OUT/cache" --out "$OUT/paper-epoch" --overwrite
else
    step gpu-tests 90 "$PYTHON" -m pytest -q -p no:cacheprovider -m gpu tests --junitxml="$OUT/gpu-tests.xml"
    # the head's grid alone: --benchmarks needs one model benchmark, the cheapest (eval, 12 samples) at batch 100
    step head 100 "$PYTHON" -m vibbench bench --device cuda --benchmarks eval --batch-sizes 100 \
        --head-batch-sizes 100,1000,10000,100000 --repeats 2 --min-run-time 0.1 --out "$OUT/head"
    step model 100 "$PYTHON" -m vibbench bench --device cuda --benchmarks forward,train_step,eval --batch-sizes 100,10000 \
        --n-samples 12 --precisions fp32,bf16 --head-batch-sizes 100 --repeats 2 --min-run-time 0.1 --out "$OUT/model"
    step compare 80 "$PYTHON" -m vibbench bench --device cuda --no-throughput --compare --compare-steps 200 --compare-repeats 2 \
        --compare-precisions fp32,bf16 --dataset "$DATASET" --out "$OUT/compare"
    step paper-epoch 110 "$PYTHON" -m vibbench run --profile paper --epochs 1 --seeds 1 --no-eval --device cuda --trainer auto \
        --dataset "$DATASET" --cache-dir "$OUT/cache" --out "$OUT/paper-epoch" --overwrite
fi
rm -rf "$OUT/cache"  # checkpoints: not results

"$PYTHON" - "$OUT" "$DRY" <<'EOF'
"""summary.md: each step's status and time, and the paper profile's training time projected from one epoch."""
import csv, json, sys
from pathlib import Path

out, dry = Path(sys.argv[1]), sys.argv[2] == "1"
steps = list(csv.DictReader(open(out / "steps.tsv"), delimiter="\t"))
lines = ["# GPU check" + (" (dry run on the CPU: the numbers mean nothing)" if dry else ""), ""]
device = (out / "device.txt").read_text().strip().splitlines()
lines += ["```", *device[:12], "```", "", "| step | exit status | seconds | limit |", "| --- | --- | --- | --- |"]
lines += [f"| {s['step']} | {s['exit_status']}{' (out of time)' if s['exit_status'] == '124' else ''} | {s['seconds']} | {s['limit_seconds']} |" for s in steps]
timing = out / "paper-epoch" / "timing.csv"
if timing.exists():
    rows = [r for r in csv.DictReader(open(timing)) if r["eval_mode"] == "training" and r["metric"] == "seconds"]
    seconds = sum(float(r["value"]) for r in rows)
    config = json.loads((out / "paper-epoch" / "config.json").read_text()) if (out / "paper-epoch" / "config.json").exists() else {}
    epochs = config.get("train", {}).get("epochs", 1)
    per_epoch = seconds / max(epochs, 1)
    lines += ["", f"Training {len(rows)} model(s) for {epochs} epoch(s) took {seconds:.1f} s (the sum of their training times); "
              f"the paper profile (200 epochs, 3 seeds, the same models) would train in about {per_epoch * 200 * 3 / 60:.1f} min, "
              "evaluation not included."]
(out / "summary.md").write_text("\n".join(lines) + "\n")
print("\n".join(lines))
EOF
echo "$OUT"
