"""The benchmarked calls: each runs what its row names. Tiny sizes only, and no assertion about speed."""

import math

import pytest
import torch

from vibbench.bench.cases import BENCHMARKS, IMPLEMENTATIONS, make_case, make_head_case, unavailable_reason
from vibbench.core.errors import VibbenchError
from vibbench.training.config import TrainConfig
from vibbench.training.loop import ema_decay_at


@pytest.mark.parametrize("name", BENCHMARKS)  # not "benchmark": that is pytest-benchmark's fixture
def test_every_model_case_runs_and_records_its_conditions(name):
    case = make_case(name, "eager", batch=4, n_samples=2, precision="bf16", warmup=0)
    out = case.fn()
    assert torch.isfinite(torch.as_tensor(out).float()).all()
    assert case.n_samples == (12 if name == "eval" else 2)
    info = case.extra_info(median_seconds=0.5)
    assert info["samples_per_second"] == pytest.approx(4 / 0.5)
    for key in ("device", "device_name", "torch", "precision", "batch", "n_samples", "implementation"):
        assert key in info
    assert info["torch"] == torch.__version__ and info["precision"] == "bf16"


def test_the_training_step_moves_the_weights_and_the_ema_as_the_trainers_do():
    case = make_case("train_step", "eager", batch=8, n_samples=1, warmup=0)
    model, opt, ema = case.keep
    before = [p.detach().clone() for p in model.parameters()]
    ema_before = [e.clone() for e in ema]
    case.fn()
    assert any(not torch.equal(b, p) for b, p in zip(before, model.parameters()))
    assert any(not torch.equal(b, e) for b, e in zip(ema_before, ema))
    assert opt.state  # Adam took a step
    # the trainers' EMA after their first step: the decay ramps up from (1 + 0) / (10 + 0), not the final 0.999
    d = ema_decay_at(0, TrainConfig().ema_decay)
    for e0, e, p in zip(ema_before, ema, model.parameters()):
        torch.testing.assert_close(e, d * e0 + (1 - d) * p.detach())


def test_loss_case_computes_gradients():
    case = make_case("loss", "eager", batch=8, n_samples=12, warmup=0)
    model = case.keep[0]
    loss = case.fn()
    assert loss.ndim == 0 and math.isfinite(loss.item())
    assert all(p.grad is not None for p in model.parameters())


def test_vib_head_case_shapes_and_minimum_traffic():
    case = make_head_case("eager", batch=16, latent_dim=8, n_samples=3, warmup=0)
    z, kl = case.fn()
    assert z.shape == (3, 16, 8) and kl.shape == (16,)
    assert case.bytes == 16 * (2 * 8 + 3 * 8 + 1) * 4


def test_unavailable_implementations_say_why():
    assert unavailable_reason("fused", "cpu")  # a sentence for the skip message, whatever the cause
    assert unavailable_reason("eager", "cpu") is None
    with pytest.raises(VibbenchError, match="unknown implementation"):
        unavailable_reason("magic", "cpu")
    with pytest.raises(VibbenchError, match="unavailable"):
        make_case("forward", "fused", device="cpu", warmup=0)


def test_each_row_runs_the_head_it_names(monkeypatch):
    """With the fused head available (a recording stand-in that computes the eager head), only the
    `fused` rows call it. The `eager` and `compile` rows pin the eager head: the classifier's default
    ("auto") would take the fused head on every CUDA device, and the ratios to eager would compare
    the fused head with itself."""
    from vibbench.models import fused_head
    from vibbench.models.head import kl_divergence, reparameterize, std_from_preactivation

    calls = []

    def recording_head(h, num_samples, seed, return_eps=False):
        calls.append(tuple(h.shape))
        mu, s = h.split(h.shape[-1] // 2, dim=-1)
        std, log_std = std_from_preactivation(s)
        z = reparameterize(mu, std, num_samples)
        return fused_head.VIBHeadOutput(mu, std, log_std, z, kl_divergence(mu, std, log_std))

    monkeypatch.setattr(fused_head, "available", lambda device=None: True)
    monkeypatch.setattr(fused_head, "fused_vib_head", recording_head)
    monkeypatch.setattr(torch, "compile", lambda fn: fn)  # the head each row picks is under test, not inductor
    for name in BENCHMARKS:
        for impl in IMPLEMENTATIONS:
            case = make_case(name, impl, batch=4, n_samples=2, warmup=0, allow_interpreter=True)
            calls.clear()
            case.fn()
            assert bool(calls) == (impl == "fused"), f"{name} {impl}: fused head called {len(calls)} times"
            assert case.keep[0].head_impl == ("fused" if impl == "fused" else "eager"), f"{name} {impl}"
    for impl in IMPLEMENTATIONS:
        case = make_head_case(impl, batch=4, latent_dim=8, n_samples=2, warmup=0, allow_interpreter=True)
        calls.clear()
        z, kl = case.fn()
        assert z.shape == (2, 4, 8) and bool(calls) == (impl == "fused"), impl


FUSED_SCRIPT = """
import math
from vibbench.bench.cases import make_case, make_head_case, unavailable_reason
reason = unavailable_reason("fused", "cpu", allow_interpreter=True)
if reason:
    print("SKIP", reason)
else:
    loss = make_case("train_step", "fused", batch=4, n_samples=2, warmup=0, allow_interpreter=True).fn()
    z, kl = make_head_case("fused", batch=4, latent_dim=16, n_samples=2, warmup=0, allow_interpreter=True).fn()
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
