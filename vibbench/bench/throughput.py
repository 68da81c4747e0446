"""Throughput of the VIB classifier: what one call costs, per implementation, precision and size.

Two front ends share the cases built here:
- `benchmarks/` (pytest-benchmark): a regression suite, saved and compared across commits;
- `vibbench bench` (`run_bench`): one process, implementations measured interleaved with
  torch.utils.benchmark.Timer, medians written to throughput.csv / .md / .png / .pdf.

What is timed (the model is `create_model("mlp_vib")`: 784-1024-1024 MLP, K = 256, 10 classes):
- `forward`:    `model(x)` in eval() with `eval_samples = n`: encoder -> (mu, std) -> n samples of
                z -> decoder -> log of the sample-averaged softmax. Autograd is on (the parameters
                require grad, so the graph is recorded, as when an attack library calls the model).
- `loss`:       `training_loss(model.forward_details(x, n), y, beta)` (cross-entropy + beta * KL),
                forward AND backward, in train().
- `train_step`: `loss` plus Adam(lr 1e-4, betas (0.5, 0.999)).step() and the fused in-place EMA
                update of train.py (`torch._foreach_lerp_`).
- `eval`:       the 12-sample predictor under torch.no_grad in eval(), argmax and the count of
                correct predictions kept on the device (the inner loop of evaluate.clean_metrics).
- `vib_head`:   the VIB head alone on a (B, 2K) tensor of encoder outputs: softplus, n samples of
                z, the per-row KL; no autograd. This is the row with a memory roofline.

Implementations: `eager`; `compile` (torch.compile, inductor; the forward and loss are compiled
together with their AOT backward, the optimizer step and the EMA stay eager; the first call,
which compiles, is timed separately as `compile_seconds`); `fused` (the Triton VIB head of
`vibbench.models.fused_head`, only where `vibbench.models.fused_head.available(device)` says so).
Precisions: `fp32`; `bf16` via torch.autocast (the head benchmark runs on bf16 tensors directly,
since autocast leaves elementwise ops alone). TF32 stays at torch's default (off for matmuls).

Every timed callable synchronizes the GPU before it returns (pytest-benchmark's perf_counter does
not), so a time is the latency of one call, launch overhead included.

FLOPs are nominal: 2 per multiply-add of the matrix products (forward 4.75 MFLOP per example and
sample-independent, plus 2 * n * K * 10 for the decoder), 3x the forward for forward + backward;
the VIB head counts `HEAD_FLOPS_PER_ELEMENT` per (row, latent) plus 2 per sample. The head's
`bytes` are the minimum any implementation must move (read 2K values per row, write n * K samples
and one KL per row), so `roofline_fraction` = max(bytes / peak bandwidth, flops / peak FLOP/s)
divided by the measured median: 1.0 would be a kernel at the memory roofline.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vibbench.core.errors import VibbenchError
from vibbench.training.precision import PRECISIONS, autocast, check_precision

BENCHMARKS = ("forward", "loss", "train_step", "eval")
HEAD_BENCHMARK = "vib_head"
IMPLEMENTATIONS = ("eager", "compile", "fused")
BATCH_SIZES = (100, 1000, 10000)
SAMPLE_COUNTS = (1, 12)
EVAL_SAMPLES = 12  # the paper's predictor
HEAD_BATCH_SIZES = (100, 1000, 10000, 100000)
HEAD_LATENT_DIM = 256
HEAD_SAMPLES = 12
MODEL_NAME = "mlp_vib"

MLP_LAYERS = ((784, 1024), (1024, 1024), (1024, 2 * 256))  # backbone and encoder head of mlp_vib
HEAD_FLOPS_PER_ELEMENT = 10
"""Nominal FLOPs per (row, latent) of the head besides sampling: shift, softplus (exp, add, log),
log std, and the KL terms (mu^2, std^2, -2 log std, -1, sum). Only the order of magnitude matters:
at well under 1 FLOP per byte the head is memory-bound on every device."""

CSV_COLUMNS = (
    "device", "device_name", "torch", "benchmark", "implementation", "precision", "batch", "n_samples",
    "median_seconds", "samples_per_second", "speedup_vs_eager", "compile_seconds", "runs",
    "flops", "flops_per_second", "bytes", "bytes_per_second",
    "peak_bytes_per_second", "peak_flops_per_second", "peak_source", "roofline_seconds", "roofline_fraction",
)  # fmt: skip
"""The tidy schema of throughput.csv, one row per (benchmark, implementation, precision, batch, n).
Units: seconds per call, samples = examples (rows) per second, FLOP and bytes per call, per second.
The peak and roofline columns are empty where the device's peak is unknown."""


# ---------------------------------------------------------------------------------------------
# device peaks (vendor spec sheets, dense)


@dataclass(frozen=True)
class Peak:
    bytes_per_second: float
    fp32_flops: float | None  # non-tensor-core fp32 (matmuls stay fp32 with TF32 off)
    bf16_flops: float | None  # dense tensor-core bf16
    source: str

    def flops(self, precision: str) -> float | None:
        return self.bf16_flops if precision == "bf16" else self.fp32_flops


PEAKS: tuple[tuple[str, Peak], ...] = (
    # more specific names first: "H100" also matches "H100 PCIe", "A10" matches "A100", "L4" "L40S"
    ("H200", Peak(4.8e12, 67e12, 989e12, "H200 SXM spec: HBM3e 4.8 TB/s, bf16 989 TFLOP/s dense")),
    ("H100 NVL", Peak(3.9e12, 60e12, 835e12, "H100 NVL spec: HBM3 3.9 TB/s, bf16 835 TFLOP/s dense")),
    ("H100 PCIe", Peak(2.0e12, 51e12, 756e12, "H100 PCIe spec: HBM2e 2.0 TB/s, bf16 756 TFLOP/s dense")),
    ("H100", Peak(3.35e12, 67e12, 989e12, "H100 SXM spec: HBM3 3.35 TB/s, bf16 989 TFLOP/s dense")),
    ("A100-SXM4-80GB", Peak(2.039e12, 19.5e12, 312e12, "A100 SXM 80GB spec: HBM2e 2.04 TB/s")),
    ("A100 80GB PCIe", Peak(1.935e12, 19.5e12, 312e12, "A100 PCIe 80GB spec: HBM2e 1.94 TB/s")),
    ("A100", Peak(1.555e12, 19.5e12, 312e12, "A100 40GB spec: HBM2 1.56 TB/s")),
    ("A10G", Peak(0.6e12, 31.2e12, 125e12, "A10G spec: GDDR6 600 GB/s")),
    ("A10", Peak(0.6e12, 31.2e12, 125e12, "A10 spec: GDDR6 600 GB/s")),
    ("L40S", Peak(0.864e12, 91.6e12, 362e12, "L40S spec: GDDR6 864 GB/s")),
    ("L4", Peak(0.3e12, 30.3e12, 121e12, "L4 spec: GDDR6 300 GB/s")),
    ("V100", Peak(0.9e12, 15.7e12, None, "V100 SXM2 spec: HBM2 900 GB/s, no bf16")),
    ("T4", Peak(0.32e12, 8.1e12, None, "T4 spec: GDDR6 320 GB/s, no bf16")),
    ("RTX 4090", Peak(1.008e12, 82.6e12, 165e12, "RTX 4090 spec: GDDR6X 1.01 TB/s")),
)


def device_peak(device_name: str, *, bandwidth_gbs: float | None = None, flops_tflops: float | None = None) -> Peak | None:
    """The device's peak from `PEAKS` (first substring match of its name), or the values given.

    Given values win (they are the user's measurement, e.g. a STREAM run on a CPU); a CPU has
    no table entry, so without them its roofline columns stay empty."""
    if bandwidth_gbs is not None:
        flops = flops_tflops * 1e12 if flops_tflops is not None else None
        return Peak(bandwidth_gbs * 1e9, flops, flops, f"given: {bandwidth_gbs:g} GB/s" + (f", {flops_tflops:g} TFLOP/s" if flops else ""))
    for key, peak in PEAKS:
        if key.lower() in device_name.lower():
            return peak
    return None


# ---------------------------------------------------------------------------------------------
# nominal work per call


def model_flops(benchmark: str, batch: int, n_samples: int, latent_dim: int = 256, num_classes: int = 10) -> float:
    """Nominal FLOPs of one call of a model benchmark (matrix products only; see the module docstring)."""
    forward = 2.0 * batch * (sum(i * o for i, o in MLP_LAYERS) + n_samples * latent_dim * num_classes)
    return forward * (3.0 if benchmark in ("loss", "train_step") else 1.0)


def head_bytes(batch: int, latent_dim: int, n_samples: int, element_size: int) -> float:
    """Minimum traffic of the VIB head: read 2K statistics per row, write n * K samples and one KL."""
    return float(batch * (2 * latent_dim + n_samples * latent_dim + 1) * element_size)


def head_flops(batch: int, latent_dim: int, n_samples: int) -> float:
    return float(batch * latent_dim * (HEAD_FLOPS_PER_ELEMENT + 2 * n_samples))


# ---------------------------------------------------------------------------------------------
# the fused head (written elsewhere; imported lazily)


def unavailable_reason(implementation: str, device: torch.device | str, *, allow_interpreter: bool = False) -> str | None:
    """Why `implementation` cannot run on `device`, or None when it can.

    `fused` needs `vibbench.models.fused_head.available(device)`. On the CPU that means Triton's
    interpreter (TRITON_INTERPRET=1), which checks correctness at a snail's pace: it is refused
    for timing unless `allow_interpreter` (the tests use it to exercise the wiring)."""
    device = torch.device(device)
    if implementation not in IMPLEMENTATIONS:
        raise VibbenchError(f"unknown implementation {implementation!r}; choose from {', '.join(IMPLEMENTATIONS)}")
    if implementation != "fused":
        return None
    try:
        from vibbench.models import fused_head as fused_head
    except Exception as exc:  # the module may be absent or fail to import: a reason to skip, not a crash
        return f"vibbench.models.fused_head cannot be imported ({type(exc).__name__}: {exc})"
    if not fused_head.available(device):
        why = getattr(fused_head, "_why_unavailable", None)
        detail = f": {why(device)}" if why else ""
        return f"vibbench.models.fused_head.available({str(device)!r}) is False{detail}"
    if device.type == "cpu" and not allow_interpreter:
        return "on the CPU the fused head runs only in Triton's interpreter (TRITON_INTERPRET=1), which is for correctness, not speed"
    return None


def fused_head_call(h: torch.Tensor, num_samples: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(z (n, B, K), kl (B,)) from the fused Triton head on h = [mu | s] (B, 2K); differentiable."""
    from vibbench.models.fused_head import fused_vib_head

    out = fused_vib_head(h, num_samples, seed)
    return out.z, out.kl


# ---------------------------------------------------------------------------------------------
# cases: one benchmarked callable each


@dataclass
class Case:
    """One benchmarked callable: `fn()` runs one call (synchronized on CUDA) and is warmed up."""

    benchmark: str
    implementation: str
    precision: str
    device: str
    batch: int
    n_samples: int
    fn: Callable[[], object]
    compile_seconds: float | None = None
    flops: float | None = None
    bytes: float | None = None
    keep: list = field(default_factory=list, repr=False)  # objects the closure needs alive (model, optimizer)

    def extra_info(self, median_seconds: float | None = None) -> dict:
        """What pytest-benchmark stores in `benchmark.extra_info` (and throughput.csv in its columns)."""
        from vibbench.runs.provenance import device_name

        info = {
            "benchmark": self.benchmark,
            "implementation": self.implementation,
            "precision": self.precision,
            "batch": self.batch,
            "n_samples": self.n_samples,
            "device": self.device,
            "device_name": device_name(self.device),
            "torch": torch.__version__,
            "cpu_threads": torch.get_num_threads(),
            "flops": self.flops,
        }
        if self.compile_seconds is not None:
            info["compile_seconds"] = self.compile_seconds
        if self.bytes is not None:
            info["bytes"] = self.bytes
        if median_seconds:
            info["median_seconds"] = median_seconds
            info["samples_per_second"] = self.batch / median_seconds
        return info


def _synchronized(fn: Callable[[], object], device: torch.device) -> Callable[[], object]:
    if device.type != "cuda":
        return fn

    def run():
        out = fn()
        torch.cuda.synchronize(device)
        return out

    return run


def _warm(fn: Callable[[], object], implementation: str, warmup: int) -> float | None:
    """Run the warm-up calls; for `compile`, the first call (compilation plus one run) is timed."""
    compile_seconds = None
    if implementation == "compile":
        t0 = time.perf_counter()
        fn()
        compile_seconds = time.perf_counter() - t0
    for _ in range(warmup):
        fn()
    return compile_seconds


def eager_vib_head(h: torch.Tensor, latent_dim: int, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The head as the classifier computes it, op by op: (z (n, B, K), kl (B,))."""
    from vibbench.models.head import kl_divergence, reparameterize, std_from_preactivation

    mu, s = h.split(latent_dim, dim=-1)
    std, log_std = std_from_preactivation(s)
    return reparameterize(mu, std, num_samples), kl_divergence(mu, std, log_std)


def _check(benchmark: str, implementation: str, device: torch.device, batch: int, n_samples: int, allow_interpreter: bool) -> None:
    if benchmark not in BENCHMARKS + (HEAD_BENCHMARK,):
        raise VibbenchError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS + (HEAD_BENCHMARK,))}")
    if batch < 1 or n_samples < 1:
        raise VibbenchError(f"batch and n_samples must be positive, got {batch} and {n_samples}")
    reason = unavailable_reason(implementation, device, allow_interpreter=allow_interpreter)
    if reason:
        raise VibbenchError(f"implementation {implementation!r} is unavailable: {reason}")


def make_case(
    benchmark: str,
    implementation: str = "eager",
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    batch: int = 100,
    n_samples: int = 1,
    seed: int = 0,
    warmup: int = 2,
    allow_interpreter: bool = False,
) -> Case:
    """Build, warm up and return one model benchmark (`BENCHMARKS`); `eval` always uses 12 samples.

    Raises VibbenchError for an unavailable implementation (check `unavailable_reason` first)."""
    device = torch.device(device)
    if benchmark == "eval":
        n_samples = EVAL_SAMPLES
    _check(benchmark, implementation, device, batch, n_samples, allow_interpreter)
    if benchmark == HEAD_BENCHMARK:
        raise VibbenchError("use make_head_case for the VIB head alone")
    from vibbench.models.classifier import ForwardDetails
    from vibbench.models.head import log_mean_softmax
    from vibbench.training.losses import training_loss
    from vibbench.models.registry import create_model

    torch.manual_seed(seed)
    model = create_model(MODEL_NAME).to(device)
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(batch, 1, 28, 28, generator=g, device=device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g, device=device)
    beta = model.method.beta
    fused_seed = [seed]

    def details(inputs: torch.Tensor, n: int) -> ForwardDetails:
        """One forward pass through the chosen head (training_loss reads its logits and kl)."""
        if implementation != "fused":
            return model.forward_details(inputs, num_samples=n)
        fused_seed[0] += 1  # a fresh Philox stream per call
        h = model.encoder_head(model.backbone(model.as_images(inputs)))
        z, kl = fused_head_call(h, n, fused_seed[0])
        return ForwardDetails(h[:, : model.latent_dim], None, None, z, model.decoder(z), kl)

    def predict(inputs: torch.Tensor, n: int) -> torch.Tensor:
        if implementation != "fused":
            return model(inputs)  # the public contract: eval() draws model.eval_samples samples
        return log_mean_softmax(details(inputs, n).logits)

    def loss_of(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return training_loss(details(inputs, n_samples), targets, beta=beta).loss

    def forward_body(inputs: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return predict(inputs, n_samples)

    @torch.no_grad()
    def eval_body(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with autocast(device, precision):
            return (predict(inputs, EVAL_SAMPLES).argmax(-1) == targets).sum()

    compiled = implementation == "compile"
    if compiled:
        torch._dynamo.reset()  # a fresh cache: no recompile limit hit across cases, an honest compile time
    wrap = torch.compile if compiled else (lambda f: f)
    keep: list = [model]

    if benchmark in ("forward", "eval"):
        model.eval()
        model.eval_samples = n_samples
        body = wrap(forward_body if benchmark == "forward" else eval_body)
        fn = (lambda: body(x)) if benchmark == "forward" else (lambda: body(x, y))
    else:
        model.train()
        loss_fn = wrap(loss_of)
        if benchmark == "loss":

            def fn():
                model.zero_grad(set_to_none=True)
                loss = loss_fn(x, y)
                loss.backward()
                return loss

        else:
            from vibbench.training.config import TrainConfig
            from vibbench.training.single import make_optimizer

            cfg = TrainConfig()
            params = list(model.parameters())
            opt = make_optimizer(params, cfg)
            ema = [p.detach().clone() for p in params]
            keep += [opt, ema]

            def fn():
                loss = loss_fn(x, y)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                with torch.no_grad():
                    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - cfg.ema_decay)
                return loss

    fn = _synchronized(fn, device)
    compile_seconds = _warm(fn, implementation, warmup)
    return Case(
        benchmark, implementation, precision, device.type, batch, n_samples, fn,
        compile_seconds=compile_seconds, flops=model_flops(benchmark, batch, n_samples, model.latent_dim, model.num_classes), keep=keep,
    )  # fmt: skip


def make_head_case(
    implementation: str = "eager",
    *,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    batch: int = 1000,
    latent_dim: int = HEAD_LATENT_DIM,
    n_samples: int = HEAD_SAMPLES,
    seed: int = 0,
    warmup: int = 2,
    allow_interpreter: bool = False,
) -> Case:
    """The VIB head alone on (B, 2K) encoder outputs in fp32 or bf16, without autograd."""
    device = torch.device(device)
    _check(HEAD_BENCHMARK, implementation, device, batch, n_samples, allow_interpreter)
    dtype = torch.bfloat16 if check_precision(precision) == "bf16" else torch.float32
    g = torch.Generator(device=device).manual_seed(seed)
    h = torch.randn(batch, 2 * latent_dim, generator=g, device=device).to(dtype)
    counter = [seed]

    if implementation == "fused":

        def head(stats):
            counter[0] += 1
            return fused_head_call(stats, n_samples, counter[0])

    else:
        if implementation == "compile":
            torch._dynamo.reset()
        head = torch.compile(eager_vib_head) if implementation == "compile" else eager_vib_head
        head = _bind_head(head, latent_dim, n_samples)

    def fn():
        with torch.no_grad():
            return head(h)

    fn = _synchronized(fn, device)
    compile_seconds = _warm(fn, implementation, warmup)
    return Case(
        HEAD_BENCHMARK, implementation, precision, device.type, batch, n_samples, fn,
        compile_seconds=compile_seconds, flops=head_flops(batch, latent_dim, n_samples),
        bytes=head_bytes(batch, latent_dim, n_samples, torch.finfo(dtype).bits // 8), keep=[h],
    )  # fmt: skip


def _bind_head(head, latent_dim: int, n_samples: int):
    return lambda stats: head(stats, latent_dim, n_samples)


# ---------------------------------------------------------------------------------------------
# timing: interleaved medians with torch.utils.benchmark


def interleaved_medians(cases: dict[str, Case], *, min_run_time: float = 0.2, repeats: int = 3) -> dict[str, tuple[float, int]]:
    """{name: (median seconds per call, number of timed runs)}, measuring the cases in turn
    (A B C, C B A, A B C, ...) with Timer.blocked_autorange, so that drift on a shared machine
    hits every implementation alike; the median is over every block of every repeat."""
    from torch.utils.benchmark import Timer

    threads = torch.get_num_threads()  # Timer defaults to 1 thread; measure what users get
    timers = {name: Timer(stmt="fn()", globals={"fn": case.fn}, num_threads=threads, label=name) for name, case in cases.items()}
    times: dict[str, list[float]] = {name: [] for name in cases}
    names = list(cases)
    for r in range(repeats):
        for name in names if r % 2 == 0 else reversed(names):
            times[name] += timers[name].blocked_autorange(min_run_time=min_run_time).times
    return {name: (statistics.median(t), len(t)) for name, t in times.items()}


# ---------------------------------------------------------------------------------------------
# vibbench bench


@dataclass(frozen=True)
class BenchConfig:
    device: str = "cpu"  # resolved: cpu or cuda
    batch_sizes: tuple[int, ...] = BATCH_SIZES
    n_samples: tuple[int, ...] = SAMPLE_COUNTS
    benchmarks: tuple[str, ...] = BENCHMARKS
    implementations: tuple[str, ...] = ("eager", "compile", "fused")
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


def throughput_rows(cfg: BenchConfig, progress: Callable[[str], None] | None = None) -> tuple[list[dict], dict[str, str]]:
    """Measure the grid of `cfg`; return (rows in CSV_COLUMNS, {implementation: why skipped})."""
    from vibbench.runs.provenance import device_name

    device = torch.device(cfg.device)
    name = device_name(cfg.device)
    peak = device_peak(name, bandwidth_gbs=cfg.peak_bandwidth_gbs, flops_tflops=cfg.peak_tflops) if (cfg.device == "cuda" or cfg.peak_bandwidth_gbs) else None
    skipped = {impl: r for impl in cfg.implementations if (r := unavailable_reason(impl, device))}
    impls = [impl for impl in cfg.implementations if impl not in skipped]
    groups: list[tuple[str, str, int, int]] = []
    for kind in cfg.benchmarks:
        for precision in cfg.precisions:
            for batch in cfg.batch_sizes:
                for n in (EVAL_SAMPLES,) if kind == "eval" else cfg.n_samples:
                    groups.append((kind, precision, batch, n))
    groups += [(HEAD_BENCHMARK, p, b, HEAD_SAMPLES) for p in cfg.precisions for b in cfg.head_batch_sizes]
    rows = []
    for i, (kind, precision, batch, n) in enumerate(groups):
        if progress:
            progress(f"[{i + 1}/{len(groups)}] {kind} {precision} batch {batch} n {n}: {', '.join(impls)}")
        cases = {}
        for impl in impls:
            if kind == HEAD_BENCHMARK:
                cases[impl] = make_head_case(impl, device=device, precision=precision, batch=batch, n_samples=n, warmup=cfg.warmup)
            else:
                cases[impl] = make_case(kind, impl, device=device, precision=precision, batch=batch, n_samples=n, warmup=cfg.warmup)
        medians = interleaved_medians(cases, min_run_time=cfg.min_run_time, repeats=cfg.repeats)
        eager = medians.get("eager", (None,))[0]
        for impl, case in cases.items():
            median, runs = medians[impl]
            rows.append(_row(case, median, runs, eager, name, peak))
        del cases
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows, skipped


def _row(case: Case, median: float, runs: int, eager_median: float | None, name: str, peak: Peak | None) -> dict:
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
        row["peak_source"] = peak.source
        row["peak_bytes_per_second"] = peak.bytes_per_second
        pf = peak.flops(case.precision)
        row["peak_flops_per_second"] = pf if pf is not None else nan
        if case.bytes is not None:  # the roofline is defined for the head, whose traffic is known
            bound = case.bytes / peak.bytes_per_second
            if pf is not None and case.flops is not None:
                bound = max(bound, case.flops / pf)
            row["roofline_seconds"] = bound
            row["roofline_fraction"] = bound / median
    return row


def _fmt_time(seconds: float) -> str:
    if seconds < 1e-3:
        return f"{seconds * 1e6:.1f} µs"
    if seconds < 1:
        return f"{seconds * 1e3:.2f} ms"
    return f"{seconds:.2f} s"


def _fmt(value, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    return format(value, spec)


def throughput_markdown(df, cfg: BenchConfig, skipped: dict[str, str], prov: dict) -> str:
    """The Markdown table of throughput.csv with the conditions a reader needs to trust it."""
    peak_known = df["peak_bytes_per_second"].notna().any()
    lines = [
        "# Throughput",
        "",
        f"Device: `{prov['device_name']}` ({cfg.device}, {prov['cpu_threads']} CPU threads); torch {torch.__version__}; "
        f"model `{MODEL_NAME}` (784-1024-1024 MLP, K = 256).",
        f"Medians of every `torch.utils.benchmark.Timer.blocked_autorange` block (min_run_time {cfg.min_run_time:g} s), "
        f"{cfg.repeats} round(s) with the implementations of one row group measured in turn, in one process. "
        "On CUDA every call synchronizes the GPU. Samples = examples (rows) per second. Ratios between implementations "
        "measured side by side are more trustworthy than absolute numbers on a shared machine.",
        "",
    ]
    for impl, reason in skipped.items():
        lines.append(f"- `{impl}` skipped: {reason}.")
    if not peak_known:
        lines.append(
            f"- Roofline columns are empty: the peak bandwidth of `{prov['device_name']}` is unknown "
            "(only GPUs in vibbench.bench.throughput.PEAKS are known; pass `--peak-bandwidth GB/s`, e.g. from a STREAM run)."
        )
    else:
        lines.append(
            f"- Peak: {df['peak_source'].dropna().iloc[0]}. Roofline fraction (VIB head rows) = minimum traffic "
            "(read 2K values, write n·K samples and 1 KL per row) / peak bandwidth / median. The fused head also "
            "writes std and log std (2K more per row), so its fraction cannot exceed (2K + nK + 1) / (4K + nK + 1) "
            "(0.88 at K = 256, n = 12)."
        )
    lines.append(
        "- FLOP/s are nominal (matrix products; 3x forward for forward + backward; see vibbench/bench.py)."
    )
    header = ["benchmark", "impl.", "precision", "batch", "n", "median", "samples/s", "vs eager", "compile (s)", "GFLOP/s", "GB/s", "roofline"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in df.itertuples(index=False):
        lines.append(
            "| "
            + " | ".join(
                [
                    r.benchmark,
                    r.implementation,
                    r.precision,
                    str(r.batch),
                    str(r.n_samples),
                    _fmt_time(r.median_seconds),
                    f"{r.samples_per_second:,.0f}",
                    _fmt(r.speedup_vs_eager, ".2f") + ("x" if r.speedup_vs_eager == r.speedup_vs_eager else ""),
                    _fmt(r.compile_seconds, ".1f"),
                    _fmt(r.flops_per_second / 1e9, ",.1f"),
                    _fmt(r.bytes_per_second / 1e9, ".1f"),
                    _fmt(r.roofline_fraction * 100, ".1f") + ("%" if r.roofline_fraction == r.roofline_fraction else ""),
                ]
            )
            + " |"
        )
    return "\n".join(lines) + "\n"


def throughput_figure(df):
    """Samples per second against batch size: one panel per benchmark (columns) and sample count
    (rows), colour = implementation, line style = precision; log-log."""
    import matplotlib.ticker
    import seaborn as sns

    from vibbench.reporting.figures import _figure, _log_scale, _styled

    @_styled
    def draw():
        benches = [b for b in BENCHMARKS + (HEAD_BENCHMARK,) if b in set(df.benchmark)]
        counts = sorted(set(df.n_samples))
        impls = [i for i in IMPLEMENTATIONS if i in set(df.implementation)]
        precisions = [p for p in PRECISIONS if p in set(df.precision)]
        fig = _figure(3.0 * len(benches) + 1.5, 2.6 * len(counts))
        axes = fig.subplots(len(counts), len(benches), squeeze=False)
        palette = dict(zip(IMPLEMENTATIONS, sns.color_palette("deep", len(IMPLEMENTATIONS))))
        for i, n in enumerate(counts):
            for j, bench in enumerate(benches):
                ax = axes[i][j]
                d = df[(df.benchmark == bench) & (df.n_samples == n)]
                if d.empty:
                    ax.set_visible(False)
                    continue
                sns.lineplot(
                    data=d, x="batch", y="samples_per_second", hue="implementation", hue_order=impls, palette=palette,
                    style="precision", style_order=precisions, markers=True, dashes=True, ax=ax, legend=(i == 0 and j == 0),
                )  # fmt: skip
                batches = sorted(set(d.batch))
                ax.set_xscale("log")
                ax.set_xticks(batches, [f"{b:,}" for b in batches])
                ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
                ax.set_xlim(batches[0] / 2, batches[-1] * 2)
                _log_scale(ax, "y", d.samples_per_second)
                ax.set_title(f"{bench}, n = {n}")
                ax.set_xlabel("batch size")
                ax.set_ylabel("samples / s" if j == 0 else "")
        first = axes[0][0]
        if first.get_legend() is not None:
            handles, labels = first.get_legend_handles_labels()
            first.get_legend().remove()
            fig.legend(handles, labels, loc="outside right center", fontsize="small")
        name = df.device_name.iloc[0]
        fig.suptitle(f"VIB throughput on {name} (torch {torch.__version__})")
        return fig

    return draw()


@dataclass
class BenchOutput:
    out_dir: Path
    throughput: object | None = None  # pandas DataFrame
    compare: object | None = None  # conventional.CompareResult
    files: list[Path] = field(default_factory=list)


def run_bench(
    out_dir: str | Path,
    cfg: BenchConfig,
    *,
    throughput: bool = True,
    compare: bool = False,
    compare_kwargs: dict | None = None,
    progress: Callable[[str], None] | None = None,
) -> BenchOutput:
    """Measure and write throughput.csv / .md / .png / .pdf (and compare.* with `compare`) plus
    provenance.json into `out_dir`, every file atomically."""
    import pandas as pd

    from vibbench.core.atomic import atomic_write_text
    from vibbench.core.hashing import stable_hash
    from vibbench.reporting.figures import save_figure
    from vibbench.runs.provenance import provenance
    from vibbench.reporting.metrics import write_json

    out = Path(out_dir)
    result = BenchOutput(out)
    t0 = time.perf_counter()
    config = {"bench": cfg.to_dict(), "throughput": throughput, "compare": compare, "compare_options": dict(compare_kwargs or {})}
    prov = provenance(config_hash=stable_hash(config), run_id=f"bench-{cfg.device}", seeds=[0], device=cfg.device, extra={"config": config})
    if throughput:
        rows, skipped = throughput_rows(cfg, progress)
        df = pd.DataFrame(rows, columns=list(CSV_COLUMNS))
        atomic_write_text(out / "throughput.csv", df.to_csv(index=False, float_format="%.10g"))
        atomic_write_text(out / "throughput.md", throughput_markdown(df, cfg, skipped, prov))
        result.files += [out / "throughput.csv", out / "throughput.md", *save_figure(throughput_figure(df), out, "throughput")]
        result.throughput = df
        prov["skipped_implementations"] = skipped
    if compare:
        from vibbench.bench.conventional import compare_training, concat_compare, write_compare

        kwargs = dict(compare_kwargs or {})
        precisions = kwargs.pop("precisions", ("fp32",))
        result.compare = concat_compare([compare_training(device=cfg.device, progress=progress, precision=p, **kwargs) for p in precisions])
        result.files += write_compare(result.compare, out)
    prov["wall_seconds"] = time.perf_counter() - t0
    prov["files"] = [p.name for p in result.files]
    write_json(out / "provenance.json", prov)
    result.files.append(out / "provenance.json")
    return result


# ---------------------------------------------------------------------------------------------
# command line: `vibbench bench` (wired in cli.py)


def _int_list(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(v) for v in text.replace(",", " ").split())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}") from None
    if not values or any(v < 1 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers separated by commas, got {text!r}")
    return values


def _choice_list(choices: Iterable[str]):
    choices = tuple(choices)

    def parse(text: str) -> tuple[str, ...]:
        values = tuple(v for v in text.replace(",", " ").split())
        bad = [v for v in values if v not in choices]
        if not values or bad:
            raise argparse.ArgumentTypeError(f"expected some of {', '.join(choices)} separated by commas, got {text!r}")
        return values

    return parse


def add_bench_parser(subparsers) -> argparse.ArgumentParser:
    """Add `vibbench bench` to the CLI's subparsers; dispatch to `cmd_bench(args)`."""
    p = subparsers.add_parser(
        "bench",
        help="measure throughput (forward, loss, training step, 12-sample eval, VIB head) and optionally compare trainers",
        description="Throughput of the VIB classifier per implementation, precision and batch size, measured interleaved "
        "in one process; writes throughput.csv/.md/.png/.pdf and provenance.json (and compare.* with --compare).",
    )
    p.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--out", type=Path, help="output folder (default: results/bench-<device>)")
    p.add_argument("--quick", action="store_true", help="batch 100, eager only, short timing: minutes on 2 CPU cores")
    p.add_argument("--batch-sizes", type=_int_list, metavar="N,N", help=f"model batch sizes (default: {','.join(map(str, BATCH_SIZES))}; --quick: 100)")
    p.add_argument("--head-batch-sizes", type=_int_list, metavar="N,N", help=f"VIB head batch sizes (default: {','.join(map(str, HEAD_BATCH_SIZES))})")
    p.add_argument("--n-samples", type=_int_list, metavar="N,N", help="samples of z (default: 1,12; eval always uses 12)")
    p.add_argument("--benchmarks", type=_choice_list(BENCHMARKS), metavar="B,B", help=f"subset of {','.join(BENCHMARKS)} (the VIB head always runs)")
    p.add_argument("--implementations", type=_choice_list(IMPLEMENTATIONS), metavar="I,I", help="subset of eager,compile,fused (default: all available; --quick: eager)")
    p.add_argument("--precisions", type=_choice_list(PRECISIONS), metavar="P,P", help="subset of fp32,bf16 (default: both)")
    p.add_argument("--min-run-time", type=float, metavar="S", help="seconds per timed block (default 0.2; --quick 0.05)")
    p.add_argument("--repeats", type=int, metavar="R", help="interleaved rounds (default 3; --quick 1)")
    p.add_argument("--peak-bandwidth", type=float, metavar="GB/S", help="the device's peak memory bandwidth, for the roofline where the table lacks it")
    p.add_argument("--peak-tflops", type=float, metavar="TFLOP/S", help="the device's peak FLOP/s (with --peak-bandwidth)")
    p.add_argument("--no-throughput", action="store_true", help="skip the throughput grid (with --compare: comparisons only)")
    p.add_argument("--compare", action="store_true", help="also compare our trainers with a conventional loop and populations with one-by-one training")
    p.add_argument("--compare-steps", type=int, default=200, metavar="N", help="training steps per comparison run (default 200)")
    p.add_argument("--compare-repeats", type=int, default=2, metavar="R", help="interleaved repeats of each comparison (default 2)")
    p.add_argument(
        "--compare-precisions", default=PRECISIONS, type=_choice_list(PRECISIONS), metavar="P,P",
        help="our trainers' precisions in the comparison (default fp32,bf16; the conventional loop stays fp32, as public reproductions train)",
    )  # fmt: skip
    p.add_argument("--compare-models", nargs="+", metavar="PATTERN", help="registry patterns of the population comparison (default: the quick profile's models)")
    p.add_argument("--dataset", default="mnist", help="dataset of the comparison (default mnist; synthetic needs no files)")
    p.add_argument("--data-dir", type=Path, help="datasets (default: $VIBBENCH_DATA_DIR or ~/.cache/vibbench/data)")
    p.set_defaults(func=cmd_bench)
    return p


def bench_config_from_args(args) -> BenchConfig:
    from vibbench.runs.config import resolve_device

    device = resolve_device(args.device)
    changes = {
        "device": device,
        "batch_sizes": args.batch_sizes,
        "head_batch_sizes": args.head_batch_sizes,
        "n_samples": args.n_samples,
        "benchmarks": args.benchmarks,
        "implementations": args.implementations,
        "precisions": args.precisions,
        "min_run_time": args.min_run_time,
        "repeats": args.repeats,
        "peak_bandwidth_gbs": args.peak_bandwidth,
        "peak_tflops": args.peak_tflops,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if args.peak_tflops is not None and args.peak_bandwidth is None:
        raise VibbenchError("--peak-tflops needs --peak-bandwidth too (the roofline is memory-bound first)")
    for name in ("min_run_time", "repeats"):
        if name in changes and changes[name] <= 0:
            raise VibbenchError(f"--{name.replace('_', '-')} must be positive, got {changes[name]}")
    return BenchConfig.quick(**changes) if args.quick else BenchConfig(**changes)


def cmd_bench(args) -> None:
    """`vibbench bench`: measure, write the files, print the folder (and the comparison ratios)."""
    from vibbench.core.progress import log

    cfg = bench_config_from_args(args)
    if args.no_throughput and not args.compare:
        raise VibbenchError("--no-throughput leaves nothing to do without --compare")
    if args.compare_steps < 1 or args.compare_repeats < 1:
        raise VibbenchError("--compare-steps and --compare-repeats must be positive")
    out = args.out or Path("results") / f"bench-{cfg.device}"
    compare_kwargs = {
        "steps": args.compare_steps, "repeats": args.compare_repeats, "dataset": args.dataset, "data_dir": args.data_dir,
        "precisions": args.compare_precisions,
        "models": tuple(args.compare_models) if args.compare_models else None,
    }  # fmt: skip
    result = run_bench(out, cfg, throughput=not args.no_throughput, compare=args.compare, compare_kwargs=compare_kwargs, progress=log)
    if result.compare is not None:
        from vibbench.bench.conventional import compare_markdown

        print(compare_markdown(result.compare), end="")
    print(result.out_dir)
