"""Throughput regression benchmarks of the VIB classifier (pytest-benchmark); see README.md.

The callables come from `vibbench.bench.cases` (shared with `vibbench bench`): each is built and warmed
up before timing (for torch.compile the first, compiling call is reported as compile_seconds in
extra_info) and synchronizes the GPU before returning. Nothing here asserts a speed.
"""

from __future__ import annotations

import pytest

from vibbench.bench.cases import make_case, make_head_case, unavailable_reason


def skip_if_unavailable(impl: str, device: str) -> None:
    reason = unavailable_reason(impl, device)
    if reason:
        pytest.skip(f"{impl} on {device}: {reason}")


def test_forward(measure, device, precision, impl, batch, n_samples):
    """model(x) in eval() with eval_samples = n: encoder, n samples of z, decoder, averaged softmax."""
    skip_if_unavailable(impl, device)
    measure(make_case("forward", impl, device=device, precision=precision, batch=batch, n_samples=n_samples))


def test_loss_forward_backward(measure, device, precision, impl, batch, n_samples):
    """Cross-entropy + beta * KL (losses.training_loss) on forward_details with n samples, forward and backward."""
    skip_if_unavailable(impl, device)
    measure(make_case("loss", impl, device=device, precision=precision, batch=batch, n_samples=n_samples))


def test_train_step(measure, device, precision, impl, batch, n_samples):
    """Forward, loss, backward, Adam step and the in-place EMA update, as in the trainers (training/loop.py)."""
    skip_if_unavailable(impl, device)
    measure(make_case("train_step", impl, device=device, precision=precision, batch=batch, n_samples=n_samples))


def test_eval_predictor(measure, device, precision, impl, batch):
    """The 12-sample predictor under no_grad in eval(), with argmax and the count of correct predictions."""
    skip_if_unavailable(impl, device)
    measure(make_case("eval", impl, device=device, precision=precision, batch=batch))


def test_vib_head(measure, device, precision, impl, head_batch):
    """The VIB head alone (softplus, 12 samples of z, KL) on (B, 512) encoder outputs, K = 256; no autograd."""
    skip_if_unavailable(impl, device)
    measure(make_head_case(impl, device=device, precision=precision, batch=head_batch))
