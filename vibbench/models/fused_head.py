"""A fused Triton kernel for the VIB head: std, log std, n reparameterized samples and the KL in one pass.

What it computes (the same maths as `vibbench.models.head`, see that module): the encoder emits
h = [mu | s] of shape (B, 2K); with t = s - 5,

    std     = softplus(t)
    log_std = log softplus(t)                          (= t for t < -20, like head.log_softplus)
    z[i]    = mu + eps[i] * std,   i = 0 .. n-1,  eps ~ N(0, I)       -> z of shape (n, B, K)
    kl      = 0.5 * sum_k (mu^2 + std^2 - 2 log_std - 1)              -> shape (B,), nats

all in one pass over h: h is read once, z, std, log_std and kl are written once, and the noise
never touches memory.

Noise: eps is drawn inside the kernel from Triton's counter-based Philox generator,
``eps = tl.randn(seed, offset)`` with

    offset = (sample * B + row) * K + col          (64-bit; the flat index of z[sample, row, col])

so every element of every sample of every row has its own counter: no two (sample, row, col)
share a stream, and the draw does not depend on the block sizes or the launch grid. tl.randn
uses the first two 32-bit Philox outputs of the counter (offset_lo, offset_hi, 0, 0) under the
key (seed_lo, seed_hi) and a Box-Muller transform. An eager reference cannot reproduce these
numbers with torch's generators, so `fused_vib_head(..., return_eps=True)` /
`fused_vib_head_eps` run a variant of the kernel that also writes the eps it drew: tests feed
that eps to `head.reparameterize` to compare both paths on identical noise.

Backward: the autograd function saves only h (B, 2K), the seed and n. The backward kernel
regenerates eps from the same seed and offsets instead of reading a stored copy: the n*B*K
floats of eps are never kept (for n = 12, B = 100, K = 256 that is 1.2 MiB per head call held
until backward, more than h itself by a factor of n/2); Philox is a pure function of
(seed, offset), so the regenerated numbers are bit-identical to the forward's. With
g_z (n, B, K), g_kl (B,), g_std and g_log_std (B, K) the incoming gradients (any may be absent)
and sig = sigmoid(t) = d softplus(t)/dt:

    d z[i]/d mu = 1,        d z[i]/d s = eps[i] * sig
    d kl/d mu   = mu,       d kl/d s   = std * sig - d log_std/d s
    d std/d s   = sig,      d log_std/d s = sig / softplus(t) =: r(t)

    grad_mu = sum_i g_z[i] + g_kl * mu
    grad_s  = sig * (sum_i g_z[i] * eps[i] + g_kl * std + g_std) + r * (g_log_std - g_kl)

Numerical notes (float32 arithmetic whatever the input dtype; bf16/fp16 are read and
converted, outputs are stored in h's dtype):
- softplus(t) = max(t, 0) + log1p(exp(-|t|)): exp never overflows; log1p(x) on x in (0, 1] uses
  the exact-rounding identity log1p(x) = log(u) * x / (u - 1), u = fl(1 + x) (x when u == 1),
  because tl has no log1p; std is as accurate as exp and log themselves (a few ulps; on GPUs
  tl.exp / tl.log are the fast hardware approximations) down to t = -87, below which it goes
  through the denormals (GPUs may flush them to 0) and reaches 0 near t = -104, like torch.
- log_std = t for t < -20 (log softplus(t) = t + log(1 - e^t/2 + ...) = t to float32 precision),
  otherwise log(std), where std >= softplus(-20) = 2e-9 is far from underflow: finite
  wherever std underflows.
- r(t) = sigmoid(t) / softplus(t) tends to 1 as t -> -inf, but both factors underflow (0/0) near
  t = -104. For t < -20 r = 1 - e^t/2 + O(e^2t) equals 1 in float32 (e^-20/2 = 1e-9 < 2^-24), so
  r = 1 there; for t >= -20 softplus(t) >= 2e-9 and the quotient is computed directly (for large
  t, r -> 1/t). This matches the gradient of head.log_softplus, which is the identity below -20.
- sigmoid(t) = 1/(1+e) for t >= 0 and e/(1+e) for t < 0, e = exp(-|t|): no overflow.
- kl is accumulated per row in float32 over K tiles inside one program (a loop, no atomics), so
  it is deterministic run to run.

Grid and blocks: one program per block of BLOCK_B rows, looping over K in tiles of BLOCK_K
columns and, inside each tile, over the n samples. BLOCK_K = min(128, next_pow2(K)) (at least
16), BLOCK_B = min(next_pow2(B), max(1, 512 // BLOCK_K)); grid = (cdiv(B, BLOCK_B),).

Where it runs: a CUDA device with a working triton, or the CPU under Triton's interpreter
(TRITON_INTERPRET=1, slow: for tests). Importing this module never imports triton; the kernels
are jitted on first use. Triton fixes the mode of its own library functions (tl.randn, tl.sum)
when triton is first imported, so TRITON_INTERPRET=1 must be set before anything imports
triton (torchvision does); a process where it was not cannot interpret these kernels, and
`available("cpu")` says so. `available(device)` says whether a call would run; a call that
cannot run raises VibbenchError with the reason.

Seeds: `seed` is any Python int, reduced mod 2**63. Use a fresh seed per training step (see
`step_seed`): two calls with the same seed and shape draw the same noise.
"""

from __future__ import annotations

import contextlib
import operator
import os
import threading
from typing import NamedTuple

import torch
from torch.autograd.function import once_differentiable

from vibbench.core.errors import VibbenchError, check_positive_int
from vibbench.models.head import LOG_SOFTPLUS_LINEAR_BELOW, STD_SHIFT

_SHIFT = float(STD_SHIFT)
_LIN = float(LOG_SOFTPLUS_LINEAR_BELOW)
"""Below t = -20, log softplus(t) = t and sigmoid(t) / softplus(t) = 1 in float32 (see head.py)."""

_MAX_BLOCK_K = 128
_MIN_BLOCK_K = 16
_TILE = 512
"""Elements per (BLOCK_B, BLOCK_K) tile: 4 per thread with 4 warps."""

_SEED_MOD = 1 << 63

# Filled by _triton(): the triton modules. The kernel bodies below refer to the global `tl`,
# resolved only when a kernel is compiled or interpreted, never at import.
triton = None
tl = None
_import_error: BaseException | None = None
_lock = threading.Lock()
_kernels: dict[bool, tuple] = {}


class VIBHeadOutput(NamedTuple):
    """What the fused head returns. Shapes: B examples, K latent dims, n samples."""

    mu: torch.Tensor  # (B, K), a view of h
    std: torch.Tensor  # (B, K)
    log_std: torch.Tensor  # (B, K), computed stably
    z: torch.Tensor  # (n, B, K)
    kl: torch.Tensor  # (B,) nats


# --------------------------------------------------------------------------------------------
# availability
# --------------------------------------------------------------------------------------------


def _triton():
    """Import triton on first use; return the module or None (the error kept for the message)."""
    global triton, tl, _import_error
    if triton is None and _import_error is None:
        try:
            import triton as _t
            import triton.language as _tl
        except Exception as e:  # a broken install can raise more than ImportError
            _import_error = e
        else:
            triton, tl = _t, _tl
    return triton


def _interpret_mode() -> bool:
    """Whether @triton.jit builds interpreted functions right now (TRITON_INTERPRET)."""
    knobs = getattr(triton, "knobs", None)
    if knobs is not None:
        return bool(knobs.runtime.interpret)
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def why_unavailable(device: torch.device | str) -> str | None:
    """Why the fused kernel cannot run on `device` (a sentence), or None when it can."""
    device = torch.device(device)
    if _triton() is None:
        return f"triton cannot be imported ({type(_import_error).__name__}: {_import_error})"
    interpret = _interpret_mode()
    if device.type == "cuda":
        if not torch.cuda.is_available():
            return "CUDA is not available to torch"
    elif device.type == "cpu":
        if not interpret:
            return "the fused head runs on the CPU only under Triton's interpreter: set TRITON_INTERPRET=1"
    else:
        return f"the fused head runs on CUDA devices (or the CPU under TRITON_INTERPRET=1), not on {device.type!r}"
    if _lang_interpreted() != interpret:
        return (
            f"TRITON_INTERPRET is {'set' if interpret else 'unset'} now but was "
            f"{'set' if not interpret else 'unset'} when triton was first imported in this process "
            "(triton.language is built for one mode at that import; torchvision imports triton): "
            "set or unset TRITON_INTERPRET before anything imports triton"
        )
    return None


def available(device: torch.device | str | None = None) -> bool:
    """True when the fused kernel can run on `device`: a CUDA device with a working triton, or
    the CPU with TRITON_INTERPRET=1 set. `device=None` means cuda if torch sees one, else cpu.
    Never raises."""
    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        return why_unavailable(device) is None
    except Exception:
        return False


def _require(device: torch.device) -> tuple:
    """The (forward, backward) kernels for the current mode, built on first use; VibbenchError if none can run."""
    why = why_unavailable(device)
    if why is not None:
        raise VibbenchError(f"the fused VIB head cannot run: {why}. Use the eager head (vibbench.models.head) instead.")
    interpret = _interpret_mode()
    with _lock:
        if interpret not in _kernels:
            jit = triton.jit(do_not_specialize=["seed"])
            _kernels[interpret] = (jit(_vib_head_fwd_kernel), jit(_vib_head_bwd_kernel))
    return _kernels[interpret]


def _lang_interpreted() -> bool:
    """Whether triton.language's own @jit functions (tl.randn, tl.sum, ...) were built for the interpreter.

    @triton.jit reads TRITON_INTERPRET when it decorates, and triton.language is decorated when
    triton is first imported (torchvision, for one, imports triton). Kernels of the other mode
    cannot call them, so the mode at that import decides which mode works in this process.
    """
    return type(tl.randn).__name__ == "InterpretedFunction"  # triton.runtime.interpreter's class


# --------------------------------------------------------------------------------------------
# kernels (plain functions, turned into triton kernels by _require)
# --------------------------------------------------------------------------------------------


def _vib_head_fwd_kernel(
    h_ptr,  # (B, 2K) contiguous, any float dtype
    z_ptr,  # (n, B, K) out, h's dtype
    std_ptr,  # (B, K) out
    log_std_ptr,  # (B, K) out
    kl_ptr,  # (B,) out
    eps_ptr,  # (n, B, K) float32 out, written only when WRITE_EPS
    seed,
    B,
    K,
    num_samples,
    sample_stride,  # B * K
    SHIFT: tl.constexpr,  # head.STD_SHIFT = 5
    LIN: tl.constexpr,  # head.LOG_SOFTPLUS_LINEAR_BELOW = -20
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    WRITE_EPS: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_ok = rows < B
    kl_acc = tl.zeros((BLOCK_B,), dtype=tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols < K)[None, :]
        h_off = rows[:, None] * (2 * K) + cols[None, :]
        mu = tl.load(h_ptr + h_off, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(h_ptr + h_off + K, mask=mask, other=0.0).to(tl.float32)
        t = s - SHIFT

        # std = softplus(t) = max(t, 0) + log1p(e), e = exp(-|t|) in (0, 1]
        e = tl.exp(-tl.abs(t))
        u = 1.0 + e
        d = u - 1.0
        log1p_e = tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))
        std = tl.maximum(t, 0.0) + log1p_e
        # log std: t below -20; above, std >= 2e-9 and its log is finite (the floor only keeps
        # the discarded branch finite where std underflows)
        log_std = tl.where(t < LIN, t, tl.log(tl.maximum(std, 1e-30)))

        bk_off = rows[:, None] * K + cols[None, :]
        tl.store(std_ptr + bk_off, std.to(std_ptr.dtype.element_ty), mask=mask)
        tl.store(log_std_ptr + bk_off, log_std.to(log_std_ptr.dtype.element_ty), mask=mask)
        term = mu * mu + std * std - 2.0 * log_std - 1.0
        kl_acc += tl.sum(tl.where(mask, term, 0.0), axis=1)

        # offset = (sample * B + row) * K + col, advanced by B * K per sample (64-bit)
        off = bk_off
        for _ in range(0, num_samples):
            eps = tl.randn(seed, off)
            z = mu + eps * std
            tl.store(z_ptr + off, z.to(z_ptr.dtype.element_ty), mask=mask)
            if WRITE_EPS:
                tl.store(eps_ptr + off, eps, mask=mask)
            off += sample_stride
    tl.store(kl_ptr + rows, (0.5 * kl_acc).to(kl_ptr.dtype.element_ty), mask=row_ok)


def _vib_head_bwd_kernel(
    h_ptr,  # (B, 2K) the forward's input
    gz_ptr,  # (n, B, K) grad of z (read when HAS_GZ)
    gkl_ptr,  # (B,) grad of kl (read when HAS_GKL)
    gstd_ptr,  # (B, K) grad of std (read when HAS_GSTD)
    glog_ptr,  # (B, K) grad of log_std (read when HAS_GLOG)
    gh_ptr,  # (B, 2K) out: [grad_mu | grad_s]
    seed,
    B,
    K,
    num_samples,
    sample_stride,
    SHIFT: tl.constexpr,
    LIN: tl.constexpr,
    BLOCK_B: tl.constexpr,
    BLOCK_K: tl.constexpr,
    HAS_GZ: tl.constexpr,
    HAS_GKL: tl.constexpr,
    HAS_GSTD: tl.constexpr,
    HAS_GLOG: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = (pid * BLOCK_B + tl.arange(0, BLOCK_B)).to(tl.int64)
    row_ok = rows < B
    gkl = tl.zeros((BLOCK_B,), dtype=tl.float32)
    if HAS_GKL:
        gkl = tl.load(gkl_ptr + rows, mask=row_ok, other=0.0).to(tl.float32)
    for k0 in range(0, K, BLOCK_K):
        cols = k0 + tl.arange(0, BLOCK_K)
        mask = row_ok[:, None] & (cols < K)[None, :]
        h_off = rows[:, None] * (2 * K) + cols[None, :]
        bk_off = rows[:, None] * K + cols[None, :]
        mu = tl.load(h_ptr + h_off, mask=mask, other=0.0).to(tl.float32)
        s = tl.load(h_ptr + h_off + K, mask=mask, other=0.0).to(tl.float32)
        t = s - SHIFT

        e = tl.exp(-tl.abs(t))
        u = 1.0 + e
        d = u - 1.0
        std = tl.maximum(t, 0.0) + tl.where(d == 0.0, e, tl.log(u) * (e / tl.where(d == 0.0, 1.0, d)))
        sig = tl.where(t >= 0.0, 1.0 / u, e / u)
        # r = sigmoid(t) / softplus(t) = d log_std / ds; 1 below -20 (see the module docstring)
        r = tl.where(t < LIN, 1.0, sig / tl.maximum(std, 1e-30))

        g_mu = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)
        a = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)  # multiplies sig in grad_s
        b = tl.zeros((BLOCK_B, BLOCK_K), dtype=tl.float32)  # multiplies r in grad_s
        if HAS_GZ:
            off = bk_off
            for _ in range(0, num_samples):
                eps = tl.randn(seed, off)  # the forward's eps, regenerated
                gz = tl.load(gz_ptr + off, mask=mask, other=0.0).to(tl.float32)
                g_mu += gz
                a += gz * eps
                off += sample_stride
        if HAS_GKL:
            g_mu += gkl[:, None] * mu
            a += gkl[:, None] * std
            b -= gkl[:, None]
        if HAS_GSTD:
            a += tl.load(gstd_ptr + bk_off, mask=mask, other=0.0).to(tl.float32)
        if HAS_GLOG:
            b += tl.load(glog_ptr + bk_off, mask=mask, other=0.0).to(tl.float32)
        g_s = sig * a + r * b
        tl.store(gh_ptr + h_off, g_mu.to(gh_ptr.dtype.element_ty), mask=mask)
        tl.store(gh_ptr + h_off + K, g_s.to(gh_ptr.dtype.element_ty), mask=mask)


# --------------------------------------------------------------------------------------------
# launchers
# --------------------------------------------------------------------------------------------


def _next_pow2(x: int) -> int:
    return 1 << max(0, int(x) - 1).bit_length()


def block_sizes(B: int, K: int) -> tuple[int, int]:
    """(BLOCK_B, BLOCK_K) for a (B, K) head: K tiles of up to 128 columns (at least 16), rows
    filling a tile of about 512 elements; the grid is cdiv(B, BLOCK_B) programs."""
    block_k = min(_MAX_BLOCK_K, max(_MIN_BLOCK_K, _next_pow2(K)))
    block_b = min(_next_pow2(B), max(1, _TILE // block_k))
    return block_b, block_k


def _check(h: torch.Tensor, num_samples: int) -> tuple[int, int]:
    if not isinstance(h, torch.Tensor) or h.dim() != 2 or h.shape[1] % 2 != 0 or h.shape[1] == 0:
        shape = tuple(h.shape) if isinstance(h, torch.Tensor) else type(h).__name__
        raise ValueError(f"h must be a (B, 2K) tensor [mu | s] with K >= 1, got {shape}")
    if not h.is_floating_point():
        raise ValueError(f"h must be floating point, got {h.dtype}")
    check_positive_int("num_samples", num_samples)
    return h.shape[0], h.shape[1] // 2


def _on(device: torch.device):
    """Launch on the tensors' GPU (triton launches on the current device), nothing for the CPU."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def _forward(h: torch.Tensor, num_samples: int, seed: int, write_eps: bool):
    """Launch the forward kernel on contiguous h: (z, kl, std, log_std, eps or None)."""
    fwd, _ = _require(h.device)
    B, K = h.shape[0], h.shape[1] // 2
    z = h.new_empty((num_samples, B, K))
    std = h.new_empty((B, K))
    log_std = h.new_empty((B, K))
    kl = h.new_empty((B,))
    eps = h.new_empty((num_samples, B, K), dtype=torch.float32) if write_eps else z
    if B > 0:
        block_b, block_k = block_sizes(B, K)
        with _on(h.device):
            fwd[(triton.cdiv(B, block_b),)](
                h, z, std, log_std, kl, eps, seed, B, K, num_samples, B * K,
                SHIFT=_SHIFT, LIN=_LIN, BLOCK_B=block_b, BLOCK_K=block_k, WRITE_EPS=write_eps,
            )  # fmt: skip
    return z, kl, std, log_std, (eps if write_eps else None)


def _backward(h, num_samples, seed, g_z, g_kl, g_std, g_log):
    _, bwd = _require(h.device)
    B, K = h.shape[0], h.shape[1] // 2
    grad_h = torch.empty_like(h)
    if B == 0:
        return grad_h

    def prep(g):  # contiguous, or h as a never-read placeholder
        return h if g is None else g.contiguous()

    block_b, block_k = block_sizes(B, K)
    with _on(h.device):
        bwd[(triton.cdiv(B, block_b),)](
            h, prep(g_z), prep(g_kl), prep(g_std), prep(g_log), grad_h, seed, B, K, num_samples, B * K,
            SHIFT=_SHIFT, LIN=_LIN, BLOCK_B=block_b, BLOCK_K=block_k,
            HAS_GZ=g_z is not None, HAS_GKL=g_kl is not None, HAS_GSTD=g_std is not None, HAS_GLOG=g_log is not None,
        )  # fmt: skip
    return grad_h


class FusedVIBHead(torch.autograd.Function):
    """(h, num_samples, seed, write_eps) -> (z, kl, std, log_std, eps), differentiable w.r.t. h.

    eps is the (n, B, K) float32 noise when write_eps (the testing hook), else an empty tensor;
    it is not differentiable. Saves only h: the backward regenerates eps from (seed, offset).
    Not twice differentiable. Call through `fused_vib_head`, which validates the arguments and
    makes h contiguous.
    """

    @staticmethod
    def forward(ctx, h: torch.Tensor, num_samples: int, seed: int, write_eps: bool = False):
        z, kl, std, log_std, eps = _forward(h, num_samples, seed, write_eps)
        if eps is None:
            eps = h.new_empty(0, dtype=torch.float32)
        ctx.mark_non_differentiable(eps)
        ctx.save_for_backward(h)
        ctx.num_samples = num_samples
        ctx.seed = seed
        ctx.set_materialize_grads(False)  # absent gradients stay None: the kernel skips them
        return z, kl, std, log_std, eps

    @staticmethod
    @once_differentiable
    def backward(ctx, g_z, g_kl, g_std, g_log, _g_eps):
        if g_z is None and g_kl is None and g_std is None and g_log is None:
            return None, None, None, None
        (h,) = ctx.saved_tensors
        return _backward(h, ctx.num_samples, ctx.seed, g_z, g_kl, g_std, g_log), None, None, None


def _normalize_seed(seed) -> int:
    if isinstance(seed, torch.Tensor):
        seed = seed.item()
    if isinstance(seed, bool):
        raise ValueError("seed must be an int, got bool")
    try:
        seed = operator.index(seed)
    except TypeError:
        raise ValueError(f"seed must be an int, got {type(seed).__name__}") from None
    return seed % _SEED_MOD


def fused_vib_head(h: torch.Tensor, num_samples: int, seed: int, return_eps: bool = False):
    """The VIB head in one fused kernel: returns VIBHeadOutput(mu, std, log_std, z, kl).

    h: (B, 2K) [mu | s] on a CUDA device (or the CPU under TRITON_INTERPRET=1), float32, bf16
    or fp16 (computed in float32, outputs in h's dtype). num_samples: n >= 1 draws of z, shape
    (n, B, K). seed: int (taken mod 2**63) keying the Philox stream; use a new one every step.
    Gradients flow to h through z, kl, std, log_std (custom backward) and mu (a view of h).

    With `return_eps=True` returns (VIBHeadOutput, eps): eps (n, B, K) float32 is the noise the
    kernel drew for this very z (the same launch, with a flag that also writes eps out; for
    tests, so that z = mu + eps * std can be checked against the eager head on identical
    noise). Raises VibbenchError when the kernel cannot run on h's device (see `available`).
    """
    B, K = _check(h, num_samples)
    num_samples, seed = int(num_samples), _normalize_seed(seed)
    _require(h.device)
    h = h.contiguous()
    z, kl, std, log_std, eps = FusedVIBHead.apply(h, num_samples, seed, bool(return_eps))
    out = VIBHeadOutput(h[:, :K], std, log_std, z, kl)
    return (out, eps) if return_eps else out


def fused_vib_head_eps(h: torch.Tensor, num_samples: int, seed: int) -> torch.Tensor:
    """The (n, B, K) float32 noise `fused_vib_head(h, num_samples, seed)` draws (testing hook).

    Runs the forward kernel with eps written out; eps depends only on (seed, n, B, K), not on
    the values of h. Not differentiable.
    """
    _check(h, num_samples)
    with torch.no_grad():
        return _forward(h.detach().contiguous(), int(num_samples), _normalize_seed(seed), write_eps=True)[4]


_MASK64 = (1 << 64) - 1


def step_seed(base_seed: int, step: int) -> int:
    """A per-step Philox seed in [0, 2**63) from a run's base seed and a step counter (splitmix64).

    Deterministic (resuming at step k gives step k's noise again) and decorrelated across steps
    and base seeds. E.g. base_seed = vibbench.training.noise.noise_seed(seed, model.name).
    """
    x = (int(base_seed) * 0x9E3779B97F4A7C15 + int(step) + 1) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (x ^ (x >> 31)) % _SEED_MOD


__all__ = [
    "FusedVIBHead",
    "VIBHeadOutput",
    "available",
    "block_sizes",
    "fused_vib_head",
    "fused_vib_head_eps",
    "step_seed",
    "why_unavailable",
]
