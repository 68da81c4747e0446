"""The benchmarked calls of the VIB classifier: one `Case` per benchmark, implementation, precision and size.

Two front ends time the same cases:
- `benchmarks/` (pytest-benchmark): a regression suite, saved and compared across commits;
- `vibbench bench` (`vibbench.bench.command.run_bench`): one process, implementations measured
  interleaved with torch.utils.benchmark.Timer, medians written to throughput.csv / .md / .png / .pdf.

What is timed (the model is `create_model("mlp_vib")`: 784-1024-1024 MLP, K = 256, 10 classes):
- `forward`:    `model(x)` in eval() with `eval_samples = n`: encoder -> (mu, std) -> n samples of
                z -> decoder -> log of the sample-averaged softmax. Autograd is on (the parameters
                require grad, so the graph is recorded, as when an attack library calls the model).
- `loss`:       `training_loss(model.forward_details(x, n), y, beta)` (cross-entropy + beta * KL),
                forward AND backward, in train().
- `train_step`: `loss` plus the trainers' Adam step (`make_optimizer`) and their fused in-place EMA
                update (`vibbench.training.loop.ema_update`).
- `eval`:       the 12-sample predictor under torch.no_grad in eval(), argmax and the count of
                correct predictions kept on the device (the inner loop of the clean evaluation).
- `vib_head`:   the VIB head alone on a (B, 2K) tensor of encoder outputs: softplus, n samples of
                z, the per-row KL; no autograd. This is the row with a memory roofline.

Implementations: `eager`; `compile` (torch.compile, inductor; the forward and loss are compiled
together with their AOT backward, the optimizer step and the EMA stay eager; the first call,
which compiles, is timed separately as `compile_seconds`); `fused` (the Triton VIB head of
`vibbench.models.fused_head`, only where `vibbench.models.fused_head.available(device)` says so).
The model cases set `Classifier.head_impl` to the head their row names ("eager" for `eager` and
`compile`, "fused" for `fused`): left at "auto", the classifier would take the fused head on
every CUDA device and the rows would all time it. They also set `Classifier.check_inputs = False`: the
network is timed, not the input check (one aminmax pass, and a sync on CUDA, which torch.compile would split the graph at).
Precisions: `fp32`; `bf16` via torch.autocast (the head benchmark runs on bf16 tensors directly,
since autocast leaves elementwise ops alone). TF32 stays at torch's default (off for matmuls).

Every call synchronizes the GPU before it returns (`timing.synchronized`).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vibbench.bench.roofline import head_bytes, head_flops, model_flops
from vibbench.bench.timing import synchronized, warm_up
from vibbench.core.errors import VibbenchError, check_positive_int, unknown_name_message
from vibbench.core.precision import autocast, check_precision

BENCHMARKS = ("forward", "loss", "train_step", "eval")
HEAD_BENCHMARK = "vib_head"
IMPLEMENTATIONS = ("eager", "compile", "fused")
EVAL_SAMPLES = 12  # the paper's predictor
HEAD_LATENT_DIM = 256
HEAD_SAMPLES = 12
MODEL_NAME = "mlp_vib"


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


def unavailable_reason(implementation: str, device: torch.device | str, *, allow_interpreter: bool = False) -> str | None:
    """Why `implementation` cannot run on `device`, or None when it can.

    `fused` needs `vibbench.models.fused_head.available(device)`. On the CPU that means Triton's
    interpreter (TRITON_INTERPRET=1), which checks correctness at a snail's pace: it is refused
    for timing unless `allow_interpreter` (the tests use it to exercise the wiring)."""
    device = torch.device(device)
    if implementation not in IMPLEMENTATIONS:
        raise VibbenchError(unknown_name_message("implementation", implementation, IMPLEMENTATIONS))
    if implementation != "fused":
        return None
    from vibbench.models import fused_head

    if not fused_head.available(device):
        return f"vibbench.models.fused_head.available({str(device)!r}) is False: {fused_head.why_unavailable(device)}"
    if device.type == "cpu" and not allow_interpreter:
        return "on the CPU the fused head runs only in Triton's interpreter (TRITON_INTERPRET=1), which is for correctness, not speed"
    return None


def _check(benchmark: str, implementation: str, device: torch.device, batch: int, n_samples: int, allow_interpreter: bool) -> None:
    if benchmark not in BENCHMARKS + (HEAD_BENCHMARK,):
        raise VibbenchError(unknown_name_message("benchmark", benchmark, BENCHMARKS + (HEAD_BENCHMARK,)))
    check_positive_int("batch", batch)
    check_positive_int("n_samples", n_samples)
    reason = unavailable_reason(implementation, device, allow_interpreter=allow_interpreter)
    if reason:
        raise VibbenchError(f"implementation {implementation!r} is unavailable: {reason}")


def _compiler(implementation: str) -> Callable:
    """torch.compile for `compile` (after a fresh dynamo cache: no recompile limit hit across cases,
    an honest compile time), the identity otherwise."""
    if implementation != "compile":
        return lambda f: f
    torch._dynamo.reset()
    return torch.compile


# ---------------------------------------------------------------------------------------------
# the model benchmarks


@dataclass
class _Setup:
    """What a model benchmark's call closes over: the model with its head chosen, one batch, the conditions."""

    model: torch.nn.Module
    x: torch.Tensor
    y: torch.Tensor
    device: torch.device
    precision: str
    n_samples: int
    wrap: Callable  # torch.compile or the identity


def _forward_call(s: _Setup) -> tuple[Callable[[], object], list]:
    s.model.eval()
    s.model.eval_samples = s.n_samples

    def body(inputs: torch.Tensor) -> torch.Tensor:
        with autocast(s.device, s.precision):
            return s.model(inputs)

    body = s.wrap(body)
    return (lambda: body(s.x)), [s.model]


def _eval_call(s: _Setup) -> tuple[Callable[[], object], list]:
    s.model.eval()
    s.model.eval_samples = s.n_samples

    @torch.no_grad()
    def body(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with autocast(s.device, s.precision):
            return (s.model(inputs).argmax(-1) == targets).sum()

    body = s.wrap(body)
    return (lambda: body(s.x, s.y)), [s.model]


def _loss_function(s: _Setup) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """The training loss of one batch (cross-entropy + beta * KL), compiled for `compile`."""
    from vibbench.training.losses import training_loss

    s.model.train()
    beta = s.model.method.beta

    def loss_of(inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        with autocast(s.device, s.precision):
            return training_loss(s.model.forward_details(inputs, num_samples=s.n_samples), targets, beta=beta).loss

    return s.wrap(loss_of)


def _loss_call(s: _Setup) -> tuple[Callable[[], object], list]:
    loss_fn = _loss_function(s)

    def fn():
        s.model.zero_grad(set_to_none=True)
        loss = loss_fn(s.x, s.y)
        loss.backward()
        return loss

    return fn, [s.model]


def _train_step_call(s: _Setup) -> tuple[Callable[[], object], list]:
    from vibbench.training.config import TrainConfig
    from vibbench.training.loop import ema_update, make_optimizer

    loss_fn = _loss_function(s)
    cfg = TrainConfig()
    params = list(s.model.parameters())
    opt = make_optimizer(params, cfg)
    ema = [p.detach().clone() for p in params]
    steps = itertools.count()

    def fn():
        loss = loss_fn(s.x, s.y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        ema_update(ema, params, next(steps), cfg.ema_decay)
        return loss

    return fn, [s.model, opt, ema]


_MODEL_CALLS = {"forward": _forward_call, "loss": _loss_call, "train_step": _train_step_call, "eval": _eval_call}


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
    from vibbench.models.registry import create_model

    device = torch.device(device)
    if benchmark == "eval":
        n_samples = EVAL_SAMPLES
    _check(benchmark, implementation, device, batch, n_samples, allow_interpreter)
    if benchmark == HEAD_BENCHMARK:
        raise VibbenchError("use make_head_case for the VIB head alone")
    torch.manual_seed(seed)
    model = create_model(MODEL_NAME).to(device)
    model.head_impl = "fused" if implementation == "fused" else "eager"
    # the network is timed, not the input check (x below is in [0, 1]): on CUDA the check syncs, and under
    # torch.compile it would split the graph, which would tilt eager against compiled
    model.check_inputs = False
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.rand(batch, 1, 28, 28, generator=g, device=device)
    y = torch.randint(0, model.num_classes, (batch,), generator=g, device=device)
    setup = _Setup(model, x, y, device, check_precision(precision), n_samples, _compiler(implementation))
    fn, keep = _MODEL_CALLS[benchmark](setup)
    fn = synchronized(fn, device)
    compile_seconds = warm_up(fn, implementation, warmup)
    return Case(
        benchmark, implementation, precision, device.type, batch, n_samples, fn,
        compile_seconds=compile_seconds, flops=model_flops(benchmark, batch, n_samples, model.latent_dim, model.num_classes), keep=keep,
    )  # fmt: skip


# ---------------------------------------------------------------------------------------------
# the VIB head alone


def eager_vib_head(h: torch.Tensor, latent_dim: int, num_samples: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The head as the classifier computes it, op by op: (z (n, B, K), kl (B,))."""
    from vibbench.models.head import kl_divergence, reparameterize, std_from_preactivation

    mu, s = h.split(latent_dim, dim=-1)
    std, log_std = std_from_preactivation(s)
    return reparameterize(mu, std, num_samples), kl_divergence(mu, std, log_std, validate=False)


def _head_function(implementation: str, latent_dim: int, n_samples: int, seed: int) -> Callable[[torch.Tensor], tuple]:
    """h (B, 2K) -> (z, kl) by `implementation`; the fused head draws from a fresh Philox stream per call."""
    if implementation == "fused":
        from vibbench.models import fused_head

        seeds = itertools.count(seed + 1)

        def fused(h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            out = fused_head.fused_vib_head(h, n_samples, next(seeds))
            return out.z, out.kl

        return fused
    head = _compiler(implementation)(eager_vib_head)
    return lambda h: head(h, latent_dim, n_samples)


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
    head = _head_function(implementation, latent_dim, n_samples, seed)

    def fn():
        with torch.no_grad():
            return head(h)

    fn = synchronized(fn, device)
    compile_seconds = warm_up(fn, implementation, warmup)
    return Case(
        HEAD_BENCHMARK, implementation, precision, device.type, batch, n_samples, fn,
        compile_seconds=compile_seconds, flops=head_flops(batch, latent_dim, n_samples),
        bytes=head_bytes(batch, latent_dim, n_samples, torch.finfo(dtype).bits // 8), keep=[h],
    )  # fmt: skip
