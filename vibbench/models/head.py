"""The VIB head: std from the encoder's pre-activation, reparameterized samples, closed-form KL.

Alemi, Fischer, Dillon, Murphy, "Deep Variational Information Bottleneck", ICLR 2017.
The encoder emits 2K numbers per example: mu (first K) and s (last K), with
std = softplus(s - 5); z = mu + eps * std, eps ~ N(0, I); the rate is
KL(N(mu, diag std^2) || N(0, I)) = 0.5 * sum_k (mu_k^2 + std_k^2 - 2 log std_k - 1), in nats.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from vibbench.core.errors import check_positive_int

STD_SHIFT = 5.0
"""softplus(s - 5): the paper's shift, so the initial std is about 0.0067."""

LOG_SOFTPLUS_LINEAR_BELOW = -20.0
"""Below this, log(softplus(t)) equals t to float32 precision (softplus(t) = e^t (1 - e^t / 2 ...))."""


def log_softplus(t: torch.Tensor) -> torch.Tensor:
    """log(softplus(t)) without underflow: softplus(t) reaches 0 in float32 near t = -104, its log -inf.

    For t < -20 the identity log(softplus(t)) = t + O(e^t) is exact in float32. The clamp keeps
    the unused branch finite so that torch.where's backward does not produce 0 * inf = NaN.
    """
    safe = F.softplus(t.clamp_min(LOG_SOFTPLUS_LINEAR_BELOW)).log()
    return torch.where(t < LOG_SOFTPLUS_LINEAR_BELOW, t, safe)


def std_from_preactivation(s: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (std, log_std) for std = softplus(s - 5), log_std computed stably."""
    t = s - STD_SHIFT
    return F.softplus(t), log_softplus(t)


def kl_divergence(mu: torch.Tensor, std: torch.Tensor, log_std: torch.Tensor | None = None) -> torch.Tensor:
    """Per-example KL(N(mu, diag std^2) || N(0, I)) in nats, summed over the latent dimension.

    mu, std: (..., K). Returns shape (...), e.g. (B,) for a batch. Pass `log_std` when you have it
    (see `std_from_preactivation`): it stays finite where std itself underflows to 0. Without it,
    std is clamped to the smallest positive float so that the result is finite, if large.
    Summing over K (not averaging) matters: a mean over dimensions silently divides beta by K.
    """
    if mu.shape != std.shape:
        raise ValueError(f"mu and std must have the same shape, got {tuple(mu.shape)} and {tuple(std.shape)}")
    if log_std is None:
        log_std = std.clamp_min(torch.finfo(std.dtype).tiny).log()
    return 0.5 * (mu.square() + std.square() - 2.0 * log_std - 1.0).sum(dim=-1)


def reparameterize(
    mu: torch.Tensor,
    std: torch.Tensor,
    num_samples: int,
    eps: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw `num_samples` samples z = mu + eps * std at once: shape (num_samples, B, K).

    `eps` may be given (shape (num_samples, B, K)) to compare implementations on identical noise.
    """
    check_positive_int("num_samples", num_samples)
    shape = (num_samples, *mu.shape)
    if eps is None:
        eps = torch.randn(shape, dtype=mu.dtype, device=mu.device, generator=generator)
    elif tuple(eps.shape) != shape:
        raise ValueError(f"eps must have shape {shape}, got {tuple(eps.shape)}")
    return torch.addcmul(mu, eps, std)


def log_mean_softmax(logits: torch.Tensor) -> torch.Tensor:
    """log( mean over samples of softmax(logits) ), logits of shape (n, B, C) -> (B, C).

    Averaging probabilities, not logits, is the paper's predictor; averaging logits is a
    known mistake in public reproductions. The result is a valid set of logits (it is a
    normalized log-probability), so it feeds cross-entropy, argmax and attack libraries.
    """
    n = logits.shape[0]
    return torch.logsumexp(F.log_softmax(logits, dim=-1), dim=0) - torch.log(
        torch.tensor(float(n), dtype=logits.dtype, device=logits.device)
    )
