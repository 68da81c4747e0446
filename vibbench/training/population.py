"""Population training: many models of one architecture trained at once, as one vectorized step.

The members' parameters are stacked (torch.func.stack_module_state) and one training step is
vmapped over the population with independent randomness per member (randomness="different"):
every member sees the same batch (identical settings by construction) and carries its own
method hyperparameters (beta, dropout rate, label smoothing, confidence penalty) as tensors.
Adam, the learning-rate schedule and the weight EMA are elementwise, so applying them to the
stacked parameters is exactly applying them to each member. The per-step overhead (Python,
kernel launches, small matrix products) is paid once for the whole population.

Members must share the seed (hence the batch order) and the parameter shapes; `population_key`
groups a run's jobs accordingly. What differs from training the members one by one is only the
noise stream (each member's samples of z and dropout masks come from the batched generator)
and floating-point summation order in batched matrix products.
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from vibbench.models.backbones import Dropout
from vibbench.training.checkpoints import load_checkpoint, save_checkpoint
from vibbench.models.classifier import Classifier
from vibbench.training.config import TrainConfig
from vibbench.core.errors import VibbenchError
from vibbench.training.loop import ema_update
from vibbench.training.losses import training_loss
from vibbench.training.noise import ModelNoise
from vibbench.training.precision import autocast
from vibbench.core.progress import bar, log
from vibbench.training.single import TrainResult, batch_order, diverged, epoch_record, lr_at, make_optimizer, order_generator

LOSS_HYPERPARAMETERS = ("beta", "label_smoothing", "confidence_penalty")


def population_key(model: Classifier) -> tuple:
    """Models with equal keys can be stacked: same class layout and parameter shapes."""
    return (type(model.backbone.body[0]).__name__, model.stochastic, tuple((n, tuple(p.shape)) for n, p in model.named_parameters()))


class _MemberStep(nn.Module):
    """One member's training loss on a batch, as a module so that functional_call can swap its weights."""

    def __init__(self, model: Classifier, train_samples: int):
        super().__init__()
        self.model = model
        self.train_samples = train_samples

    def forward(self, x, y, eps, beta, label_smoothing, confidence_penalty):
        out = self.model.forward_details(x, num_samples=self.train_samples, eps=eps)
        t = training_loss(out, y, beta=beta, label_smoothing=label_smoothing, confidence_penalty=confidence_penalty)
        return torch.stack([t.loss, t.ce, t.kl])


def train_population(
    models: list[Classifier],
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    labels_of_members: list[str],
    noise_keys: list[str] | None = None,
    checkpoint_path=None,
    config_hash: str = "",
) -> list[TrainResult]:
    """Train `models` (same architecture, same seed) together; on return each holds its EMA weights.
    Member i draws its noise from the generator `train_model` would give it (seed, noise_keys[i])."""
    if len({population_key(m) for m in models}) != 1:
        raise VibbenchError("a population needs models of one architecture; group them with population_key()")
    if images.shape[0] < cfg.batch_size:
        raise VibbenchError(f"{images.shape[0]} training images is fewer than one batch of {cfg.batch_size}")
    m = len(models)
    steps_mods = [_MemberStep(model, cfg.train_samples) for model in models]
    for mod in steps_mods:
        mod.train()
    params, buffers = stack_module_state(steps_mods)
    base = copy.deepcopy(steps_mods[0]).to("meta")
    for layer in base.modules():
        if isinstance(layer, Dropout):
            layer.max_rate = max(mm.method.dropout for mm in models)
    base.train()
    hp = {k: torch.tensor([getattr(mm.method, k) for mm in models], dtype=torch.float32, device=images.device) for k in LOSS_HYPERPARAMETERS}
    names = list(params)
    leaves = [params[n] for n in names]
    opt = make_optimizer(leaves, cfg)
    ema = [p.detach().clone() for p in leaves]
    gen = order_generator(seed)
    noises = [ModelNoise(mm, seed, key, images.device) for mm, key in zip(models, noise_keys or [mm.name for mm in models])]
    dropout_names = [n for n, layer in base.named_modules() if isinstance(layer, Dropout) and layer.max_rate > 0]
    stochastic = models[0].stochastic
    results = [TrainResult() for _ in models]
    start_epoch = 0
    if checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path, config_hash, map_location=images.device)
        with torch.no_grad():
            for p, saved in zip(leaves, state["params"]):
                p.copy_(saved)
            for e, saved in zip(ema, state["ema"]):
                e.copy_(saved)
        opt.load_state_dict(state["optimizer"])
        gen.set_state(state["order_rng"])
        for noise, saved in zip(noises, state["noise_rng"]):
            noise.set_state(saved)
        results = [TrainResult(h, state["seconds"], state["epoch"]) for h in state["histories"]]
        start_epoch = state["epoch"]
        log(f"population of {m}: resuming after epoch {start_epoch}")

    def member(p, b, eps, beta, ls, cp, x, y):
        return functional_call(base, (p, b), (x, y, eps, beta, ls, cp))

    # all randomness arrives as inputs (eps, dropout uniforms), so vmap itself draws nothing
    step_fn = vmap(member, in_dims=(0, 0, 0 if stochastic else None, 0, 0, 0, None, None), randomness="error")
    steps_per_epoch = images.shape[0] // cfg.batch_size
    step = start_epoch * steps_per_epoch
    progress = bar(cfg.epochs * steps_per_epoch, f"population of {m}", initial=step)
    bad = torch.full((m,), -1, dtype=torch.long, device=images.device)
    try:
        for epoch in range(start_epoch, cfg.epochs):
            for group in opt.param_groups:
                group["lr"] = lr_at(cfg, epoch)
            t0 = time.perf_counter()
            sums = torch.zeros(m, 3, device=images.device)
            for i, idx in enumerate(batch_order(images.shape[0], cfg.batch_size, gen)):
                idx = idx.to(images.device, non_blocking=True)
                eps, masks = _draw(noises, cfg, dropout_names, images.device)
                step_buffers = buffers | {f"{n}.noise": u for n, u in zip(dropout_names, masks)}
                with autocast(images.device, cfg.precision):
                    terms = step_fn(
                        dict(zip(names, leaves)), step_buffers, eps, hp["beta"], hp["label_smoothing"], hp["confidence_penalty"], images[idx], labels[idx]
                    )
                opt.zero_grad(set_to_none=True)
                terms[:, 0].sum().backward()  # members' parameters are disjoint: each gets its own gradient
                opt.step()
                ema_update(ema, leaves, step, cfg.ema_decay)
                with torch.no_grad():
                    sums += terms.detach()
                    bad = torch.where((bad < 0) & ~torch.isfinite(terms[:, 0].detach()), step, bad)
                step += 1
                if i % 50 == 0 or i == steps_per_epoch - 1:
                    _raise_if_member_diverged(bad, steps_per_epoch, labels_of_members)
                progress.update(1)
            if images.is_cuda:
                torch.cuda.synchronize()
            seconds = time.perf_counter() - t0
            mean = (sums / steps_per_epoch).tolist()
            for r, means in zip(results, mean):
                r.history.append(epoch_record(cfg, epoch, means, seconds, steps_per_epoch))  # examples/s per member
                r.seconds += seconds
            if checkpoint_path is not None:
                save_checkpoint(
                    checkpoint_path,
                    {
                        "epoch": epoch + 1,
                        "params": [p.detach() for p in leaves],
                        "ema": ema,
                        "optimizer": opt.state_dict(),
                        "order_rng": gen.get_state(),
                        "noise_rng": [noise.get_state() for noise in noises],
                        "histories": [r.history for r in results],
                        "seconds": results[0].seconds,
                    },
                    config_hash,
                )
    finally:
        progress.close()
    with torch.no_grad():
        for i, model in enumerate(models):
            for name, e in zip(names, ema):
                model.get_parameter(name.removeprefix("model.")).copy_(e[i])
            model.eval()
    return results


def _draw(noises: list[ModelNoise], cfg: TrainConfig, dropout_names: list[str], device) -> tuple[torch.Tensor | None, list[torch.Tensor]]:
    """Stack the members' noise: eps (M, n, B, K) or None; per active dropout layer (M, B, F) uniforms
    (zeros for members without dropout: with rate 0 every unit is kept whatever the uniform)."""
    draws = [noise.draw(cfg.batch_size, cfg.train_samples) for noise in noises]
    eps = torch.stack([e for e, _ in draws]) if draws[0][0] is not None else None
    masks = []
    for layer in range(len(dropout_names)):
        per_member = [m[layer] if m else None for _, m in draws]
        shape = next(u.shape for u in per_member if u is not None)
        masks.append(torch.stack([u if u is not None else torch.zeros(shape, device=device) for u in per_member]))
    return eps, masks


def _raise_if_member_diverged(bad: torch.Tensor, steps_per_epoch: int, labels: list[str]) -> None:
    for i, step in enumerate(bad.tolist()):
        if step >= 0:
            raise diverged(labels[i], step, steps_per_epoch)
