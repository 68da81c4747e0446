"""Population training: many models of one architecture trained at once, as one vectorized step.

The members' parameters are stacked (torch.func.stack_module_state) and one training step is
vmapped over the population: every member sees the same batch (identical settings by
construction), carries its own method hyperparameters (beta, dropout rate, label smoothing,
confidence penalty) as tensors and gets its noise as an input, drawn from its own generator.
Adam, the learning-rate schedule and the weight EMA are elementwise, so applying them to the
stacked parameters is exactly applying them to each member. The per-step overhead (Python,
kernel launches, small matrix products) is paid once for the whole population.

Members must share the seed (hence the batch order) and the parameter shapes; `population_key`
groups a run's jobs accordingly. Each member draws the samples of z and dropout masks that
`train_model` would draw for it (`vibbench.training.noise`), so what differs from training the
members one by one is only the floating-point summation order in batched matrix products.
The checkpoint's own entries are the stacked parameters ("params", in the layout below), the
members' noise generators ("noise_rng"), histories ("histories") and the layout's name ("layout").

Layout: every stacked matrix (a member's 2-D parameter, such as a linear layer's (out, in)
weight) is stored transposed, as a contiguous (M, in, out) tensor, and the step passes its
transposed view, so each member still sees its (out, in) weight. Under vmap the weight's
gradient comes out of the batched product as (M, in, out); stored the other way, autograd
copied every such gradient through a transpose into the parameter's layout, and those copies
took longer than the matrix products (the population ran at about half the speed of one by
one on a 2-core CPU). Adam and the EMA are elementwise, so the layout changes nothing else.
"""

from __future__ import annotations

import copy
from functools import partial
from pathlib import Path

import torch
from torch import nn
from torch.func import functional_call, stack_module_state, vmap

from vibbench.core.errors import VibbenchError
from vibbench.core.progress import log
from vibbench.models.layers import Dropout
from vibbench.models.classifier import Classifier, check_pixels
from vibbench.training.config import TrainConfig
from vibbench.training.loop import Checkpointing, LoopState, TrainResult, resume, run_epochs
from vibbench.training.losses import training_loss
from vibbench.training.noise import ModelNoise
from vibbench.core.precision import autocast

LOSS_HYPERPARAMETERS = ("beta", "label_smoothing", "confidence_penalty")
LAYOUT = "matrices-transposed"  # how the checkpoint's "params" (and the EMA) hold the stacked parameters


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


class _PopulationStep:
    """The members stacked into one set of (M, ...) parameters, and one vmapped training step of all of them."""

    def __init__(self, models: list[Classifier], images: torch.Tensor, labels: torch.Tensor, cfg: TrainConfig, noises: list[ModelNoise]):
        member_steps = [_MemberStep(model, cfg.train_samples) for model in models]
        for mod in member_steps:
            mod.train()
        params, self.buffers = stack_module_state(member_steps)
        base = copy.deepcopy(member_steps[0]).to("meta")
        if images.is_floating_point():
            check_pixels(images, "the training images")  # once here, instead of once per step (a sync on CUDA)
        base.model.check_inputs = False
        for layer in base.modules():
            if isinstance(layer, Dropout):
                layer.max_rate = max(m.method.dropout for m in models)
        base.train()
        self.hp = {k: torch.tensor([getattr(m.method, k) for m in models], dtype=torch.float32, device=images.device) for k in LOSS_HYPERPARAMETERS}
        self.names = list(params)
        self.transposed = [params[n].dim() == 3 for n in self.names]  # (M, out, in) matrices, stored as (M, in, out)
        self.leaves = [params[n].detach().mT.contiguous().requires_grad_() if t else params[n] for n, t in zip(self.names, self.transposed)]
        self.dropout_names = [n for n, layer in base.named_modules() if isinstance(layer, Dropout) and layer.max_rate > 0]
        self.images, self.labels, self.cfg, self.noises = images, labels, cfg, noises

        def member(p, b, eps, beta, ls, cp, x, y):
            return functional_call(base, (p, b), (x, y, eps, beta, ls, cp))

        # all randomness arrives as inputs (eps, dropout uniforms), so vmap itself draws nothing
        eps_dim = 0 if models[0].stochastic else None
        self.vmapped = vmap(member, in_dims=(0, 0, eps_dim, 0, 0, 0, None, None), randomness="error")

    def __call__(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The summed members' losses on batch `idx` (their parameters are disjoint: each gets its own
        gradient) and the (M, 3) loss, ce, kl."""
        eps, masks = _draw(self.noises, self.cfg, self.dropout_names, self.images.device)
        step_buffers = self.buffers | {f"{n}.noise": u for n, u in zip(self.dropout_names, masks)}
        hp = self.hp
        with autocast(self.images.device, self.cfg.precision):
            terms = self.vmapped(
                dict(zip(self.names, self.member_layout(self.leaves))), step_buffers, eps, hp["beta"], hp["label_smoothing"], hp["confidence_penalty"], self.images[idx], self.labels[idx]
            )
        return terms[:, 0].sum(), terms

    def member_layout(self, stacked: list[torch.Tensor]) -> list[torch.Tensor]:
        """Views of stacked tensors in this layout (the leaves, or their EMA) as the members' parameters have them."""
        return [x.mT if t else x for x, t in zip(stacked, self.transposed)]


def train_population(
    models: list[Classifier],
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int,
    labels_of_members: list[str],
    noise_keys: list[str] | None = None,
    checkpoint_path: Path | None = None,
    config_hash: str = "",
) -> list[TrainResult]:
    """Train `models` (same architecture, same seed) together; on return each holds its EMA weights.
    Member i draws its noise from the generator `train_model` would give it (seed, noise_keys[i])."""
    if len({population_key(m) for m in models}) != 1:
        raise VibbenchError("a population needs models of one architecture; group them with population_key()")
    if images.shape[0] < cfg.batch_size:
        raise VibbenchError(f"{images.shape[0]} training images is fewer than one batch of {cfg.batch_size}")
    noises = [ModelNoise(m, seed, key, images.device) for m, key in zip(models, noise_keys or [m.name for m in models])]
    step = _PopulationStep(models, images, labels, cfg, noises)
    state = LoopState.start(step.leaves, cfg, seed, members=len(models))
    checkpoint = None
    if checkpoint_path is not None:
        checkpoint = Checkpointing(checkpoint_path, config_hash, partial(_entries, noises), partial(_restore, noises, checkpoint_path))
    if resume(state, checkpoint, images.device):
        log(f"population of {len(models)}: resuming after epoch {state.epoch}")
    run_epochs(state, cfg, images, step, name=f"population of {len(models)}", labels=labels_of_members, checkpoint=checkpoint)
    with torch.no_grad():
        for i, model in enumerate(models):
            for name, e in zip(step.names, step.member_layout(state.ema)):
                model.get_parameter(name.removeprefix("model.")).copy_(e[i])
            model.eval()
    return state.results


def _entries(noises: list[ModelNoise], state: LoopState) -> dict:
    return {
        "params": [p.detach() for p in state.params],
        "noise_rng": [noise.get_state() for noise in noises],
        "histories": [r.history for r in state.results],
        "layout": LAYOUT,
    }


def _restore(noises: list[ModelNoise], path: Path, state: LoopState, saved: dict) -> list[list[dict]]:
    if saved.get("layout") != LAYOUT:  # square matrices would load without a shape error, transposed
        raise VibbenchError(
            f"the population checkpoint {path} holds its parameters in another layout (written by an older vibbench); "
            "delete it, or rerun with --retrain, to train the population again"
        )
    with torch.no_grad():
        for p, s in zip(state.params, saved["params"]):
            p.copy_(s)
    for noise, s in zip(noises, saved["noise_rng"]):
        noise.set_state(s)
    return saved["histories"]


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
