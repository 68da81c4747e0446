"""Seeded inference: a model in eval mode, optionally on its mean path, drawing its noise from a fixed seed.

Stochastic models (VIB) sample z at test time. Every evaluation runs them on a forked random state
seeded from the run's seed, so their numbers are reproducible and the caller's random stream is left
as it was; the model's train/eval flag and mean mode are restored afterwards, also after an error.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import nn

from vibbench.models.classifier import Classifier


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[None]:
    """`model.eval()` for the block; the train/eval flag it had is restored on exit."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


@contextmanager
def mean_mode(model: nn.Module, on: bool) -> Iterator[None]:
    """`model.mean_mode = on` for the block (on: the deterministic z = mu path); the mode it had is restored on exit."""
    saved = model.mean_mode
    model.mean_mode = on
    try:
        yield
    finally:
        model.mean_mode = saved


@contextmanager
def seeded_noise(seed: int, device: torch.device) -> Iterator[None]:
    """The block draws from `torch.manual_seed(seed)` on a fork of the CPU's random state (and of `device`'s,
    when it is a CUDA device); the random state from before the block is restored on exit."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


@torch.no_grad()
def predict(model: nn.Module, images: torch.Tensor, batch_size: int = 1000, seed: int = 0) -> torch.Tensor:
    """The classes `model(x).argmax(-1)` in eval mode under the noise seed `seed`, computed in chunks."""
    with eval_mode(model), seeded_noise(seed, images.device):
        return torch.cat([model(images[i : i + batch_size]).argmax(-1) for i in range(0, images.shape[0], batch_size)])


@torch.no_grad()
def predictions(model: Classifier, images: torch.Tensor, mode: str, *, batch_size: int = 1000, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """(log-probabilities (N, C) on the CPU in float64, per-example KL (N,)) in eval mode under the noise seed `seed`.

    `mode` "mean" evaluates the z = mu path, any other the model's predictor."""
    n = images.shape[0]
    logps = torch.empty(n, model.num_classes, dtype=torch.float64)  # filled chunk by chunk: memory is the output plus one chunk
    kls = torch.empty(n, dtype=torch.float64)
    with eval_mode(model), mean_mode(model, mode == "mean"), seeded_noise(seed, images.device):
        for i in range(0, n, batch_size):
            out = model.forward_details(images[i : i + batch_size])
            logps[i : i + batch_size] = F.log_softmax(out.prediction().double(), -1).cpu()
            kls[i : i + batch_size] = out.kl.double().cpu()
    return logps, kls
