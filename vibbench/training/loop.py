"""The training loop's core, shared by the single-model and the population trainer."""

from __future__ import annotations

import torch


def ema_decay_at(step: int, decay: float) -> float:
    """TensorFlow's ExponentialMovingAverage with num_updates: min(decay, (1 + t) / (10 + t))."""
    return min(decay, (1.0 + step) / (10.0 + step))


@torch.no_grad()
def ema_update(ema: list[torch.Tensor], params: list[torch.Tensor], step: int, decay: float) -> None:
    """Polyak averaging after optimizer step `step`: ema <- ema + (1 - d) (param - ema), d = ema_decay_at(step, decay),
    as one fused in-place update over all tensors."""
    torch._foreach_lerp_(ema, [p.detach() for p in params], 1.0 - ema_decay_at(step, decay))
