"""Your own classifier seen through the harness's model contract, and the checks it must pass first.

The evaluation harness reads a few things off a model besides `model(x)`: `stochastic` (does it sample at test time),
`mean_mode` (its deterministic path, if it has one), `num_classes` and `forward_details(x)`. vibbench's own
`Classifier` has them; `ExternalModel` gives them to any `torch.nn.Module` that maps images in [0, 1] shaped
(B, 1, 28, 28) to one (B, C) tensor of logits or log-probabilities:

- `stochastic`: declared by the module's own `stochastic` attribute, or by the caller. A stochastic module is
  judged over several noise draws and attacked with EOT (gradients averaged over draws), as VIB is.
- the mean path: a stochastic module exposes one if it has a boolean attribute `mean_mode` (True: deterministic),
  as vibbench's classifier does; only then is it also attacked and measured on that path (`has_mean_path`).
- `forward_details(x)`: the module's output as the prediction (no latent code: no rate, no KL). One call of a
  stochastic module is one sample (`num_samples` 1); `forward_details(x, num_samples=k)` holds k calls' outputs
  (`logits` (k, B, C)), whose `prediction()` is the log of their softmax averaged, as for a VIB model's samples.
  Having no `latent_dim`, its noise cannot be fixed from outside: the judge seeds each draw and batch instead.

`check_classifier` runs the module once on a few test images and refuses, in one line each, what would otherwise
fail deep inside an attack or give a silently wrong number.
"""

from __future__ import annotations

import torch
from torch import nn

from vibbench.core.errors import VibbenchError
from vibbench.models.classifier import ForwardDetails


class ExternalModel(nn.Module):
    """A (B, 1, 28, 28) -> (B, C) classifier `module` with what the harness reads (see the module docstring)."""

    def __init__(self, module: nn.Module, *, name: str, num_classes: int, stochastic: bool):
        super().__init__()
        self.module = module
        self.name = name
        self.num_classes = num_classes
        self.stochastic = bool(stochastic)
        self.has_mean_path = self.stochastic and isinstance(getattr(module, "mean_mode", None), bool)
        self.eval_samples = 1  # one call of the module is one draw of its predictor
        self.num_samples = 1

    @property
    def mean_mode(self) -> bool:
        return bool(self.module.mean_mode) if self.has_mean_path else False

    @mean_mode.setter
    def mean_mode(self, on: bool) -> None:
        if self.has_mean_path:  # without a mean path there is nothing to switch (its "mean" rows are not kept)
            self.module.mean_mode = bool(on)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(x)

    def forward_details(self, x: torch.Tensor, num_samples: int | None = None, eps: torch.Tensor | None = None) -> ForwardDetails:
        """The module's outputs as `logits` (k, B, C): k = `num_samples` calls of a stochastic module off its mean path,
        else one; `prediction()` is the one output, or the log of the k outputs' softmax averaged."""
        if eps is not None:
            raise VibbenchError(f"{self.name} is not a vibbench model: its noise cannot be fixed from outside (eps)")
        sampled = self.stochastic and not self.mean_mode
        out = torch.stack([self.module(x).float() for _ in range((num_samples or 1) if sampled else 1)])
        none = out.new_zeros(out.shape[1], 0)  # no latent code
        return ForwardDetails(none, none if sampled else None, None, none[None], out, out.new_zeros(out.shape[1]))

    def extra_repr(self) -> str:
        return f"name={self.name!r}, stochastic={self.stochastic}, mean path={self.has_mean_path}"


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def check_classifier(
    module, images: torch.Tensor, num_classes: int, *, name: str, dataset: str, stochastic: bool, gradients: bool = True
) -> None:
    """Refuse, in one VibbenchError line, a `module` the harness cannot evaluate: not an nn.Module; one that fails on
    `images` (a few test images of `dataset`, in [0, 1]); an output that is not one floating-point (B, C) tensor with
    C = `num_classes`; non-finite values; probabilities (rows in [0, 1] summing to 1) where logits or log-probabilities
    are due; with `gradients` an output that does not depend differentiably on the input (white-box attacks need it);
    and an undeclared stochastic module (two calls on the same images differ while `stochastic` is False)."""
    if not isinstance(module, nn.Module):
        kind = type(module)
        raise VibbenchError(f"{name} is a {kind.__module__}.{kind.__qualname__}, not a torch.nn.Module: pass the model itself")
    b = images.shape[0]
    what = f"{b} {dataset} test images shaped {tuple(images.shape)} in [0, 1]"
    was_training = module.training
    module.eval()
    try:
        try:
            with torch.no_grad():
                out = module(images)
        except Exception as exc:
            raise VibbenchError(f"{name}(x) failed on {what}: {_first_line(exc)}") from exc
        if not isinstance(out, torch.Tensor):
            kind = type(out)
            raise VibbenchError(
                f"{name}(x) returned a {kind.__module__}.{kind.__qualname__}, not a tensor: it must return one (B, C) tensor of "
                "logits or log-probabilities (wrap it to return only that tensor)"
            )
        if out.dim() != 2 or out.shape[0] != b:
            raise VibbenchError(
                f"{name}(x) returned shape {tuple(out.shape)} for {what}: it must return ({b}, C), one row of C class logits or "
                "log-probabilities per image"
            )
        if out.shape[1] != num_classes:
            raise VibbenchError(f"{name}(x) returns {out.shape[1]} classes but {dataset} has {num_classes}: its last layer must have {num_classes} outputs")
        if not out.is_floating_point():
            raise VibbenchError(f"{name}(x) returned {out.dtype} values: it must return floating-point logits or log-probabilities")
        bad = int((~torch.isfinite(out)).sum())
        if bad:
            raise VibbenchError(f"{name}(x) returned {bad} non-finite values (NaN or infinite) of {out.numel()} on {what}: check the model and its weights")
        o = out.double()
        if o.min() >= 0 and o.max() <= 1 and torch.allclose(o.sum(1), torch.ones(b, dtype=o.dtype), atol=1e-4):
            raise VibbenchError(
                f"{name}(x) returns probabilities (each row in [0, 1] summing to 1): return logits or log-probabilities instead "
                "(drop the final softmax, or return torch.log_softmax of its input)"
            )
        if gradients:
            x = images.clone().requires_grad_(True)
            try:
                y = module(x)
                grad = torch.autograd.grad(y.float().sum(), x, allow_unused=True)[0] if y.requires_grad else None
            except Exception as exc:
                raise VibbenchError(f"{name}(x) cannot be differentiated with respect to x: {_first_line(exc)}") from exc
            if grad is None:
                raise VibbenchError(
                    f"{name}(x) does not depend differentiably on x (its output has no gradient with respect to the images): "
                    "white-box attacks need one; remove torch.no_grad, .detach() or numpy from its forward"
                )
        if not stochastic:
            with torch.no_grad(), torch.random.fork_rng(devices=[images.device] if images.device.type == "cuda" else []):
                torch.manual_seed(1)
                again = module(images)
            if not torch.allclose(again, out, rtol=1e-4, atol=1e-5):  # not bit-equal: some GPU kernels are not deterministic
                raise VibbenchError(
                    f"{name}(x) gives different outputs for the same images in eval mode: it samples at test time. Declare it "
                    "(model.stochastic = True, or stochastic=True), so that it is judged over several noise draws and attacked with EOT"
                )
    finally:
        module.train(was_training)
