"""Training under the paper's protocol, one model at a time, on in-memory tensors.

Alemi et al. 2017 (vib_demo): Adam(lr 1e-4, betas (0.5, 0.999)), lr x0.97 every 2 epochs,
batch 100, one sample of z per step, an exponential moving average (0.999) of the weights
used for evaluation. Batches are slices of a permutation drawn from a generator seeded by the
seed alone, so every model of a seed sees the same batches in the same order; the last partial
batch of an epoch is dropped so that every step has the same size. A checkpoint is written
after every epoch; an interrupted run resumes from it.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vibbench.training.checkpoints import load_checkpoint, save_checkpoint
from vibbench.models.classifier import Classifier
from vibbench.training.config import TrainConfig
from vibbench.core.errors import VibbenchError
from vibbench.training.loop import ema_update
from vibbench.training.losses import training_loss
from vibbench.training.noise import ModelNoise, set_dropout_noise
from vibbench.training.precision import autocast
from vibbench.core.progress import bar, log

_NAN_CHECK_EVERY = 50  # steps between host reads of the divergence flag (a read synchronizes a GPU)


class TrainingDiverged(VibbenchError):
    pass


@dataclass
class TrainResult:
    history: list[dict] = field(default_factory=list)  # one record per epoch
    seconds: float = 0.0  # training wall time, summed over resumed sessions
    resumed_from_epoch: int = 0


def batch_order(num_examples: int, batch_size: int, epoch_generator: torch.Generator) -> list[torch.Tensor]:
    """The index batches of one epoch: a permutation cut into full batches (last partial one dropped)."""
    perm = torch.randperm(num_examples, generator=epoch_generator)
    steps = num_examples // batch_size
    return list(perm[: steps * batch_size].view(steps, batch_size))


def order_generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(1_000_003 * seed + 17)


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Adam:
    """The paper's Adam, fused: one kernel pass per tensor, 3.8x faster than torch's default Adam
    on 2 CPU cores at the MLP's 2.4M parameters (the same update rule, not the same rounding)."""
    return torch.optim.Adam(params, lr=cfg.lr, betas=cfg.adam_betas, fused=True)


def lr_at(cfg: TrainConfig, epoch: int) -> float:
    return cfg.lr * cfg.lr_decay ** (epoch // cfg.lr_decay_every)


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
    opt = make_optimizer(params, cfg)
    ema = [p.detach().clone() for p in params]
    gen = order_generator(seed)
    noise = ModelNoise(model, seed, noise_key or model.name, images.device)
    result = TrainResult()
    start_epoch = 0
    if checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, config_hash, map_location=images.device)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        for e, saved in zip(ema, state["ema"]):
            e.copy_(saved)
        gen.set_state(state["order_rng"])
        noise.set_state(state["noise_rng"])
        result = TrainResult(state["history"], state["seconds"], state["epoch"])
        start_epoch = state["epoch"]
        log(f"{label}: resuming from the checkpoint after epoch {start_epoch}")

    method = model.method
    steps_per_epoch = images.shape[0] // cfg.batch_size
    step = start_epoch * steps_per_epoch
    progress = bar(cfg.epochs * steps_per_epoch, label, initial=step)
    bad_step = torch.full((), -1, dtype=torch.long, device=images.device)
    model.train()
    try:
        for epoch in range(start_epoch, cfg.epochs):
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch)
            t0 = time.perf_counter()
            sums = torch.zeros(3, device=images.device)
            for i, idx in enumerate(batch_order(images.shape[0], cfg.batch_size, gen)):
                idx = idx.to(images.device, non_blocking=True)
                eps, masks = noise.draw(cfg.batch_size, cfg.train_samples)
                set_dropout_noise(model, masks)
                with autocast(images.device, cfg.precision):
                    out = model.forward_details(images[idx], num_samples=cfg.train_samples, eps=eps)
                    terms = training_loss(
                        out,
                        labels[idx],
                        beta=method.beta,
                        label_smoothing=method.label_smoothing,
                        confidence_penalty=method.confidence_penalty,
                    )
                opt.zero_grad(set_to_none=True)
                terms.loss.backward()
                opt.step()
                ema_update(ema, params, step, cfg.ema_decay)
                with torch.no_grad():
                    loss = terms.loss.detach()
                    sums += torch.stack([loss, terms.ce, terms.kl])
                    bad_step = torch.where((bad_step < 0) & ~torch.isfinite(loss), step, bad_step)
                step += 1
                if i % _NAN_CHECK_EVERY == 0 or i == steps_per_epoch - 1:
                    _raise_if_diverged(bad_step, steps_per_epoch, label)
                    if progress.n != step and not progress.disable:
                        progress.set_postfix(epoch=epoch + 1, loss=f"{loss.item():.4f}", refresh=False)
                progress.update(1)
            if images.is_cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            mean = (sums / steps_per_epoch).tolist()
            result.history.append(epoch_record(cfg, epoch, mean, seconds, steps_per_epoch))
            result.seconds += seconds
            progress.set_postfix(epoch=epoch + 1, loss=f"{mean[0]:.4f}", ex_s=f"{steps_per_epoch * cfg.batch_size / seconds:.0f}")
            if checkpoint_path is not None:
                save_checkpoint(
                    checkpoint_path,
                    {
                        "epoch": epoch + 1,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "ema": ema,
                        "order_rng": gen.get_state(),
                        "noise_rng": noise.get_state(),
                        "history": result.history,
                        "seconds": result.seconds,
                    },
                    config_hash,
                )
    finally:
        progress.close()
        set_dropout_noise(model, [])
    with torch.no_grad():
        for p, e in zip(params, ema):
            p.copy_(e)
    model.eval()
    return result


def epoch_record(cfg: TrainConfig, epoch: int, means: list[float], seconds: float, steps_per_epoch: int) -> dict:
    """The history entry of one epoch: mean loss, ce, kl (nats), lr, wall time, examples/s per model."""
    loss, ce, kl = means
    return {
        "epoch": epoch + 1,
        "loss": loss,
        "ce": ce,
        "kl": kl,
        "lr": lr_at(cfg, epoch),
        "seconds": seconds,
        "examples_per_second": steps_per_epoch * cfg.batch_size / seconds,
    }


def diverged(label: str, step: int, steps_per_epoch: int) -> TrainingDiverged:
    return TrainingDiverged(
        f"training of {label} diverged: the loss became NaN or inf at epoch {step // steps_per_epoch + 1}, "
        f"step {step % steps_per_epoch + 1} of {steps_per_epoch}. Lower the learning rate or beta; "
        "no result was written for this model."
    )


def _raise_if_diverged(bad_step: torch.Tensor, steps_per_epoch: int, label: str) -> None:
    s = int(bad_step)
    if s >= 0:
        raise diverged(label, s, steps_per_epoch)
