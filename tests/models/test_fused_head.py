"""The fused Triton VIB head (vibbench.models.fused_head) against the eager head, on identical noise.

On the CPU the kernels run under Triton's interpreter (TRITON_INTERPRET=1). Triton builds its
own library (tl.randn, tl.sum) for one mode when it is first imported, and in a normal pytest
run triton is imported before this file (conftest imports torchvision, which imports triton),
so the interpreter cannot be switched on here. Then the `interpreter` tests below skip in this
process and `test_interpreted_in_a_subprocess` runs this file again in a fresh Python with
TRITON_INTERPRET=1 set from the start (`TRITON_INTERPRET=1 pytest tests/models/test_fused_head.py`
runs them directly), and fails unless every interpreter test passed there. Shapes are small: the interpreter runs every program in Python.
The `gpu` test runs the compiled kernels on CUDA when there is a device.
"""

from __future__ import annotations

import importlib.util
import inspect
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import torch

from vibbench.models import fused_head as fh
from vibbench.core.errors import VibbenchError
from vibbench.models.head import kl_divergence, reparameterize, std_from_preactivation

_SUBPROCESS_FLAG = "VIBBENCH_FUSED_HEAD_SUBPROCESS"
_IN_SUBPROCESS = os.environ.get(_SUBPROCESS_FLAG) == "1"
_INTERPRET_SET = os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")
_TRITON_INSTALLED = importlib.util.find_spec("triton") is not None
_CPU_OK = fh.available("cpu")
_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def interpreter():
    """The CPU, where the kernels run interpreted; skips where the interpreter cannot run here."""
    if not _TRITON_INSTALLED:
        pytest.skip("triton is not installed")
    if not _CPU_OK:
        why = fh.why_unavailable("cpu")
        if _IN_SUBPROCESS or _INTERPRET_SET:
            pytest.skip(f"Triton's interpreter cannot run: {why}")
        pytest.skip("TRITON_INTERPRET is not set in this process: run by test_interpreted_in_a_subprocess")
    return torch.device("cpu")


def _inputs(B, K, *, seed=0, device="cpu", dtype=torch.float32):
    """h = [mu | s] with s over softplus's regimes: t = s - 5 in [-15, 10]."""
    g = torch.Generator().manual_seed(seed)
    mu = torch.randn(B, K, generator=g) * 2
    s = torch.rand(B, K, generator=g) * 25 - 10
    return torch.cat([mu, s], dim=1).to(device=device, dtype=dtype)


def _eager(h, n, eps):
    K = h.shape[1] // 2
    mu, s = h.split(K, dim=-1)
    std, log_std = std_from_preactivation(s)
    return mu, std, log_std, reparameterize(mu, std, n, eps=eps.to(h.dtype)), kl_divergence(mu, std, log_std)


def _close(actual, expected, atol=1e-5, rtol=1e-5):
    torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol)


SHAPES = [  # (B, K, n): K = 37 and 300 are not multiples of the 128-column block; B = 1, K = 1, n = 1
    (5, 37, 3),
    (1, 1, 1),
    (3, 300, 2),
    (64, 64, 2),
]


# ---------------------------------------------------------------------------------------------
# in any process (no kernel launched)
# ---------------------------------------------------------------------------------------------


def test_block_sizes_and_argument_checks():
    assert fh.block_sizes(100, 256) == (4, 128)
    assert fh.block_sizes(1, 1) == (1, 16)
    assert fh.block_sizes(5, 37) == (8, 64)
    for bad in (torch.zeros(3), torch.zeros(2, 3), torch.zeros(2, 0), torch.zeros(2, 4, dtype=torch.long)):
        with pytest.raises(ValueError):
            fh.fused_vib_head(bad, 1, 0)
    with pytest.raises(ValueError, match="num_samples"):
        fh.fused_vib_head(torch.zeros(2, 4), 0, 0)
    with pytest.raises(ValueError, match="seed"):
        fh.fused_vib_head(torch.zeros(2, 4), 1, 1.5)


def test_step_seeds_differ_and_repeat():
    seeds = [fh.step_seed(7, step) for step in range(1000)]
    assert len(set(seeds)) == 1000 and all(0 <= s < 2**63 for s in seeds)
    assert seeds[10] == fh.step_seed(7, 10) != fh.step_seed(8, 10)


_CPU_NEEDS_INTERPRETER = "the fused head runs on the CPU only under Triton's interpreter: set TRITON_INTERPRET=1"


def _clear_error(why: str) -> str:
    return f"the fused VIB head cannot run: {why}. Use the eager head (vibbench.models.head) instead."


def test_cpu_without_the_interpreter_is_a_clear_error(monkeypatch):
    """A CPU call where the interpreter is off raises VibbenchError naming the cause, the fix and the eager head."""
    if fh._triton() is None:
        pytest.skip("triton cannot be imported: test_import_never_needs_triton covers this case")
    if not _CPU_OK:  # this very process: triton was imported without the interpreter
        why = fh.why_unavailable("cpu")
        assert why is not None and not fh.available("cpu")
        with pytest.raises(VibbenchError) as info:
            fh.fused_vib_head(torch.zeros(2, 4), 1, 0)
        assert str(info.value) == _clear_error(why)
    # the interpreter off (in any process, this one under TRITON_INTERPRET=1 included)
    monkeypatch.setattr(fh, "_interpret_mode", lambda: False)
    assert fh.why_unavailable("cpu") == _CPU_NEEDS_INTERPRETER and not fh.available("cpu")
    with pytest.raises(VibbenchError) as info:
        fh.fused_vib_head(torch.zeros(2, 4), 1, 0)
    assert str(info.value) == _clear_error(_CPU_NEEDS_INTERPRETER)
    with pytest.raises(VibbenchError, match="TRITON_INTERPRET=1"):
        fh.fused_vib_head_eps(torch.zeros(2, 4), 1, 0)
    # the interpreter switched on after triton.language was built compiled (or the reverse)
    monkeypatch.setattr(fh, "_interpret_mode", lambda: True)
    monkeypatch.setattr(fh, "_lang_interpreted", lambda: False)
    with pytest.raises(VibbenchError, match="set or unset TRITON_INTERPRET before anything imports triton"):
        fh.fused_vib_head(torch.zeros(2, 4), 1, 0)
    assert not fh.available("meta") and "not on 'meta'" in fh.why_unavailable("meta")


def test_import_never_needs_triton(monkeypatch):
    """A fresh copy of the module imports, and reports unavailability, where triton cannot be imported."""
    for name in ("triton", "triton.language"):
        monkeypatch.setitem(sys.modules, name, None)  # makes `import triton` raise ImportError
    spec = importlib.util.find_spec("vibbench.models.fused_head")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert not module.available("cpu") and not module.available("cuda")
    with pytest.raises(VibbenchError, match="triton cannot be imported"):
        module.fused_vib_head(torch.zeros(2, 4), 1, 0)


@pytest.mark.skipif(_IN_SUBPROCESS or _CPU_OK, reason="the interpreter runs in this process")
def test_interpreted_in_a_subprocess(tmp_path):
    """Run this file under TRITON_INTERPRET=1 in a fresh Python, where the interpreter tests can run."""
    if not _TRITON_INSTALLED:
        pytest.skip("triton is not installed")
    env = dict(os.environ, TRITON_INTERPRET="1", **{_SUBPROCESS_FLAG: "1"})
    env.pop("PYTEST_ADDOPTS", None)  # the whole file runs there, whatever selects tests here
    report = tmp_path / "interpreted.xml"
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", f"--junitxml={report}",
           str(Path(__file__).resolve())]
    proc = subprocess.run(cmd, cwd=_ROOT, env=env, capture_output=True, text=True, timeout=900)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"{' '.join(cmd)} (TRITON_INTERPRET=1) failed:\n{out[-8000:]}"
    assert report.exists(), f"no report from the interpreted run:\n{out[-4000:]}"
    # every test that needs the interpreter ran and passed there: none skipped, none missing
    outcome: dict[str, list[str]] = {}
    for case in ET.parse(report).getroot().iter("testcase"):
        kinds = [child.tag for child in case if child.tag in ("skipped", "failure", "error")]
        outcome.setdefault(case.get("name").partition("[")[0], []).append(kinds[0] if kinds else "passed")
    needs_interpreter = sorted(
        name for name, fn in globals().items()
        if name.startswith("test_") and callable(fn) and "interpreter" in inspect.signature(fn).parameters
    )
    assert needs_interpreter, "no test uses the interpreter fixture"
    not_passed = {name: outcome.get(name, ["not collected"]) for name in needs_interpreter
                  if not outcome.get(name) or set(outcome[name]) != {"passed"}}
    assert not not_passed, f"interpreter tests that did not pass under TRITON_INTERPRET=1: {not_passed}\n{out[-4000:]}"


# ---------------------------------------------------------------------------------------------
# interpreted on the CPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("B,K,n", SHAPES)
def test_outputs_match_eager_on_the_same_noise(interpreter, B, K, n):
    h = _inputs(B, K, seed=B + K + n)
    out, eps = fh.fused_vib_head(h, n, seed=1234, return_eps=True)
    assert eps.shape == (n, B, K) and eps.dtype == torch.float32
    assert torch.equal(eps, fh.fused_vib_head_eps(h, n, 1234))  # the hook reports the noise z used
    mu, std, log_std, z, kl = _eager(h, n, eps)
    assert out.z.shape == (n, B, K) and out.kl.shape == (B,)
    assert torch.equal(out.mu, mu)
    _close(out.std, std, atol=1e-30)  # relative: std reaches 3e-7 here
    _close(out.log_std, log_std)
    _close(out.z, z)
    _close(out.kl, kl)


@pytest.mark.parametrize(
    "B,K,n,used",
    [(5, 37, 3, "all"), (1, 1, 1, "all"), (3, 300, 2, "all"), (4, 20, 2, "z"), (4, 20, 2, "kl"), (4, 20, 2, "std")],
)
def test_gradients_match_eager_autograd(interpreter, B, K, n, used):
    h = _inputs(B, K, seed=7 * B + K).requires_grad_()
    out, eps = fh.fused_vib_head(h, n, seed=99, return_eps=True)
    ref = _eager(h, n, eps)
    g = torch.Generator().manual_seed(3)
    grads = {
        "z": torch.randn(n, B, K, generator=g),
        "kl": torch.randn(B, generator=g),
        "std": torch.randn(B, K, generator=g),
        "log_std": torch.randn(B, K, generator=g),
        "mu": torch.randn(B, K, generator=g),
    }
    names = {"all": ["mu", "std", "log_std", "z", "kl"], "z": ["z"], "kl": ["kl"], "std": ["std", "log_std"]}[used]
    index = {"mu": 0, "std": 1, "log_std": 2, "z": 3, "kl": 4}
    (fused,) = torch.autograd.grad([out[index[k]] for k in names], h, [grads[k] for k in names])
    (eager,) = torch.autograd.grad([ref[index[k]] for k in names], h, [grads[k] for k in names])
    _close(fused, eager)


def test_noise_has_the_right_moments(interpreter):
    """Fixed mu, s: z = mu + eps std pooled over 200 samples x 16 identical rows has mean mu, std softplus(s - 5)."""
    n, B, K = 200, 16, 8
    mu = torch.linspace(-3, 3, K)
    s = torch.linspace(2, 9, K)  # std from 0.05 to 4.0
    h = torch.cat([mu, s]).expand(B, 2 * K).contiguous()
    z = fh.fused_vib_head(h, n, seed=2024).z.reshape(n * B, K)
    std = torch.nn.functional.softplus(s - 5)
    m = n * B
    # standard errors: std / sqrt(m) for the mean, about std / sqrt(2 m) for the std
    assert ((z.mean(0) - mu).abs() <= 4.5 * std / m**0.5).all()
    assert ((z.std(0) - std).abs() <= 4.5 * std / (2 * m) ** 0.5).all()
    # pooled standardized noise: N(0, 1) by moments, tails and a Kolmogorov-Smirnov test
    eps = ((z - mu) / std).flatten().double()
    N = eps.numel()
    assert abs(eps.mean().item()) < 4 / N**0.5
    assert abs(eps.std().item() - 1) < 4 / (2 * N) ** 0.5
    inside = (eps.abs() < 1).double().mean().item()
    assert abs(inside - 0.682689) < 4 * (0.682689 * 0.317311 / N) ** 0.5
    scipy_stats = pytest.importorskip("scipy.stats")
    assert scipy_stats.kstest(eps.numpy(), "norm").pvalue > 1e-4


def test_seeds_and_streams(interpreter):
    h = _inputs(6, 40, seed=1)
    a = fh.fused_vib_head(h, 3, seed=5).z
    assert torch.equal(a, fh.fused_vib_head(h, 3, seed=5).z)
    assert not torch.equal(a, fh.fused_vib_head(h, 3, seed=6).z)
    assert not torch.isclose(fh.fused_vib_head_eps(h, 3, 5), fh.fused_vib_head_eps(h, 3, 6)).any()
    # 64-bit and negative seeds (taken mod 2**63)
    big = fh.fused_vib_head_eps(h, 1, 2**40 + 3)
    assert not torch.isclose(big, fh.fused_vib_head_eps(h, 1, 3)).any()
    assert torch.equal(fh.fused_vib_head_eps(h, 1, -1), fh.fused_vib_head_eps(h, 1, 2**63 - 1))

    # no repeated streams: every (sample, row) has its own noise, uncorrelated with the others
    eps = fh.fused_vib_head_eps(h, 3, 5).reshape(18, 40)
    corr = torch.corrcoef(eps)
    off_diagonal = corr[~torch.eye(18, dtype=torch.bool)]
    assert off_diagonal.abs().max() < 0.65  # 40-vectors: |r| has sd 0.16; identical streams give 1
    assert torch.unique(eps).numel() == eps.numel()

    # the documented layout: offset = (sample * B + row) * K + col, independent of the values of h
    # and of the block sizes, so (n, B, K) = (2, 3, 5) and (1, 1, 30) draw the same 30 numbers
    flat = fh.fused_vib_head_eps(torch.zeros(1, 60), 1, 77).flatten()
    assert torch.equal(fh.fused_vib_head_eps(torch.ones(3, 10), 2, 77).flatten(), flat)
    assert torch.equal(fh.fused_vib_head_eps(torch.zeros(2, 6), 3, 77)[:2].flatten(), flat[:12])


@pytest.mark.parametrize("scale", [1.0, 1e4])
def test_extreme_inputs_stay_finite(interpreter, scale):
    B, K = 4, 50
    mu = torch.linspace(-scale, scale, B * K).reshape(B, K)
    s = torch.linspace(-100, 100, B * K).flip(0).reshape(B, K)
    h = torch.cat([mu, s], dim=1).requires_grad_()
    out, eps = fh.fused_vib_head(h, 2, seed=3, return_eps=True)
    ref = _eager(h, 2, eps)
    g = torch.Generator().manual_seed(0)
    tensors = [out.std, out.log_std, out.z, out.kl]
    grads = [torch.randn(t.shape, generator=g) for t in tensors]
    (gh,) = torch.autograd.grad(tensors, h, grads)
    (gh_ref,) = torch.autograd.grad([ref[1], ref[2], ref[3], ref[4]], h, grads)
    for t in (*tensors, gh):
        assert torch.isfinite(t).all()
    assert out.std.min() == 0  # std underflows at s = -100 ...
    assert out.log_std.min().item() == pytest.approx(-105.0)  # ... its log does not
    for fused, eager in zip(tensors + [gh], [ref[1], ref[2], ref[3], ref[4], gh_ref]):
        _close(fused, eager)


def test_half_precision_inputs(interpreter):
    """bf16 / fp16 h are read and computed in float32; outputs and gradients come back in h's dtype."""
    for dtype in (torch.bfloat16, torch.float16):
        h = _inputs(3, 20, seed=5, dtype=dtype).requires_grad_()
        out, eps = fh.fused_vib_head(h, 2, seed=11, return_eps=True)
        assert out.z.dtype == out.kl.dtype == out.std.dtype == dtype
        ref = _eager(h.detach().float(), 2, eps)
        tol = {"atol": 1e-2, "rtol": 1e-2}
        for fused, eager in zip((out.std, out.log_std, out.z, out.kl), ref[1:]):
            _close(fused.float(), eager, **tol)
        (gh,) = torch.autograd.grad(out.z.sum() + out.kl.sum(), h)
        assert gh.dtype == dtype and torch.isfinite(gh.float()).all()


# ---------------------------------------------------------------------------------------------
# compiled, on a GPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_compiled_kernel_matches_eager_on_cuda():
    if _INTERPRET_SET:
        pytest.skip("TRITON_INTERPRET is set: this test is for the compiled kernels")
    if not fh.available("cuda"):
        pytest.skip(f"triton cannot run on CUDA here: {fh.why_unavailable('cuda')}")
    for B, K, n in [*SHAPES, (256, 256, 12), (1000, 512, 1)]:
        h = _inputs(B, K, seed=B + K, device="cuda").requires_grad_()
        out, eps = fh.fused_vib_head(h, n, seed=321, return_eps=True)
        ref = _eager(h, n, eps)
        for fused, eager in zip(out, ref):
            _close(fused, eager)
        g = torch.Generator(device="cuda").manual_seed(0)
        grads = [torch.randn(t.shape, generator=g, device="cuda") for t in (out.z, out.kl, out.std, out.log_std)]
        (gh,) = torch.autograd.grad([out.z, out.kl, out.std, out.log_std], h, grads)
        (gh_ref,) = torch.autograd.grad([ref[3], ref[4], ref[1], ref[2]], h, grads)
        _close(gh, gh_ref)
        # the backward regenerates the forward's eps: a second forward with the same seed agrees bit for bit
        assert torch.equal(out.z, fh.fused_vib_head(h, n, seed=321).z)
    h = _inputs(64, 128, device="cuda", dtype=torch.bfloat16)
    out = fh.fused_vib_head(h, 4, seed=1)
    assert out.z.dtype == torch.bfloat16 and torch.isfinite(out.kl.float()).all()
