"""Training under the paper's protocol, one model at a time, on in-memory tensors.

One sample of z per step (Alemi et al. 2017); the schedule, batch order, EMA and checkpoints
are the shared loop's (`vibbench.training.loop`). The model's checkpoint entries are its
state_dict ("model"), its noise generator ("noise_rng") and its history ("history").
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

import torch

from vibbench.core.errors import VibbenchError
from vibbench.core.progress import log
from vibbench.models.classifier import Classifier, check_pixels
from vibbench.training.config import TrainConfig
from vibbench.training.loop import Checkpointing, LoopState, TrainResult, resume, run_epochs
from vibbench.training.losses import training_loss
from vibbench.training.noise import ModelNoise, set_dropout_noise
from vibbench.core.precision import autocast


def train_model(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    label: str,
    checkpoint_path: Path | None = None,
    config_hash: str = "",
    noise_key: str | None = None,
) -> TrainResult:
    """Train `model` in place on (images, labels), already on the model's device; on return the
    model holds the EMA weights (the ones the paper evaluates). The training noise comes from a
    generator seeded by (seed, noise_key), noise_key defaulting to the model's name."""
    if images.shape[0] < cfg.batch_size:
        raise VibbenchError(f"{images.shape[0]} training images is fewer than one batch of {cfg.batch_size}")
    params = [p for p in model.parameters()]
    noise = ModelNoise(model, seed, noise_key or model.name, images.device)
    state = LoopState.start(params, cfg, seed, members=1)
    checkpoint = None
    if checkpoint_path is not None:
        checkpoint = Checkpointing(checkpoint_path, config_hash, partial(_entries, model, noise), partial(_restore, model, noise))
    if resume(state, checkpoint, images.device):
        log(f"{label}: resuming from the checkpoint after epoch {state.epoch}")
    model.train()
    step = partial(_step, model, images, labels, cfg, noise)
    if images.is_floating_point():
        check_pixels(images, f"the training images of {label}")  # once here, instead of once per step (a sync on CUDA)
    checking, model.check_inputs = model.check_inputs, False
    try:
        run_epochs(state, cfg, images, step, name=label, labels=[label], checkpoint=checkpoint)
    finally:
        set_dropout_noise(model, [])
        model.check_inputs = checking
    with torch.no_grad():
        for p, e in zip(params, state.ema):
            p.copy_(e)
    model.eval()
    return state.results[0]


def _step(
    model: Classifier, images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, noise: ModelNoise, idx: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's loss on batch `idx` with its next noise draw, and its (1, 3) loss, ce, kl."""
    eps, masks = noise.draw(cfg.batch_size, cfg.train_samples)
    set_dropout_noise(model, masks)
    method = model.method
    with autocast(images.device, cfg.precision):
        out = model.forward_details(images[idx], num_samples=cfg.train_samples, eps=eps)
        terms = training_loss(
            out,
            labels[idx],
            beta=method.beta,
            label_smoothing=method.label_smoothing,
            confidence_penalty=method.confidence_penalty,
        )
    return terms.loss, torch.stack([terms.loss.detach(), terms.ce, terms.kl])[None]


def _entries(model: Classifier, noise: ModelNoise, state: LoopState) -> dict:
    return {"model": model.state_dict(), "noise_rng": noise.get_state(), "history": state.results[0].history}


def _restore(model: Classifier, noise: ModelNoise, state: LoopState, saved: dict) -> list[list[dict]]:
    model.load_state_dict(saved["model"])
    noise.set_state(saved["noise_rng"])
    return [saved["history"]]
