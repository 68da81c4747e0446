"""The judge: which images a model's own predictor classifies correctly, over several independent noise draws.

A stochastic model (VIB) samples z at test time, so one forward pass is one noisy judgement. The judge
evaluates its predictor (the softmax averaged over its `eval_samples` draws of z) under R independent
draws of that noise. Each draw's noise is indexed by the example, not by its position in a batch: image i
of the test split gets the same noise eps[r, i] (`eval_samples` x K numbers from a generator seeded by
(seed, r, i)) wherever it appears, clean or attacked, alone or in any batch or subset. So the clean and
the adversarial judgement of an image share their noise (common random numbers), and no result depends on
how the images were batched.

A deterministic model is judged once (R = 1), as is any model on its mean path. The judge computes in fp32 always,
also when it is asked from inside an attack that computes in bf16 (an early stop).
"""

from __future__ import annotations

import torch
from torch import nn

from vibbench.core.errors import check_positive_int
from vibbench.evaluation.inference import eval_mode, seeded_noise
from vibbench.models.head import log_mean_softmax

_MIX = (0x9E3779B97F4A7C15, 0xBF58476D1CE4E5B9)  # odd 64-bit constants (splitmix64's) that spread (seed, draw, index)


def example_seed(seed: int, draw: int, index: int) -> int:
    """The generator seed of one example's noise in one draw: a fixed mix of (seed, draw, test-set index)."""
    h = (seed * _MIX[0] + (draw + 1) * _MIX[1] + index) & 0xFFFFFFFFFFFFFFFF
    h ^= h >> 31
    h = (h * _MIX[1]) & 0xFFFFFFFFFFFFFFFF
    return (h ^ (h >> 29)) & 0x7FFFFFFFFFFFFFFF


def example_noise(index: torch.Tensor, seed: int, draw: int, samples: int, dim: int) -> torch.Tensor:
    """(samples, len(index), dim) standard normal noise; column i depends only on (seed, draw, index[i])."""
    gen = torch.Generator()
    cols = []
    for i in index.tolist():
        gen.manual_seed(example_seed(seed, draw, int(i)))
        cols.append(torch.randn(samples, dim, generator=gen))
    return torch.stack(cols, dim=1) if cols else torch.empty(samples, 0, dim)


class Judge:
    """Per example and draw: does the model's predictor classify the image correctly?

    `index` are the test-set indices of the images the judge will see (position p of every tensor given to
    `correct` is image index[p]); the noise of every draw is drawn once for them here.
    """

    def __init__(self, model: nn.Module, labels: torch.Tensor, index: torch.Tensor, *, draws: int, seed: int, batch_size: int = 1000):
        check_positive_int("judge draws", draws)
        self.model = model
        self.labels = labels
        self.seed = seed
        self.batch_size = batch_size
        self.fixed_noise = (  # a vibbench model's latent noise; any other module is seeded per draw and batch
            bool(getattr(model, "stochastic", False)) and hasattr(model, "forward_details") and hasattr(model, "latent_dim") and not getattr(model, "mean_mode", False)
        )
        self.stochastic = bool(getattr(model, "stochastic", False)) and not getattr(model, "mean_mode", False)
        self.draws = draws if self.stochastic else 1
        self.noise = None
        if self.fixed_noise:
            samples, dim = model.eval_samples, model.latent_dim
            self.noise = torch.stack([example_noise(index.cpu(), seed, r, samples, dim) for r in range(self.draws)])  # (R, S, N, K)

    @torch.no_grad()
    def correct(self, images: torch.Tensor, positions: torch.Tensor | None = None) -> torch.Tensor:
        """(R, len(images)) booleans: draw r's predictor is right on image k, which is the judge's image `positions[k]`
        (default: positions 0..len(images)-1)."""
        n = images.shape[0]
        pos = torch.arange(n) if positions is None else positions.cpu()
        y = self.labels[pos.to(self.labels.device)]
        out = torch.empty(self.draws, n, dtype=torch.bool, device=images.device)
        with eval_mode(self.model), torch.autocast(images.device.type, enabled=False):  # fp32, also inside a bf16 attack
            for i in range(0, n, self.batch_size):
                batch = slice(i, i + self.batch_size)
                if self.noise is not None:
                    out[:, batch] = self._predict_all(images[batch], pos[batch]) == y[batch]
                    continue
                for r in range(self.draws):
                    out[r, batch] = self._predict(images[batch], r) == y[batch]
        return out

    def _predict_all(self, x: torch.Tensor, pos: torch.Tensor) -> torch.Tensor:
        """(R, B) predicted classes of every draw from one encoder pass: the R draws' S samples each go through the
        head together (the encoder is deterministic given x), each group of S averaged as the predictor does."""
        r, s = self.noise.shape[:2]
        eps = self.noise[:, :, pos].flatten(0, 1).to(device=x.device)  # (R * S, B, K)
        logits = self.model.forward_details(x, num_samples=r * s, eps=eps).logits
        return log_mean_softmax(logits.view(r, s, *logits.shape[1:]), dim=1).argmax(-1)

    def _predict(self, x: torch.Tensor, draw: int) -> torch.Tensor:
        # a deterministic model, or a stochastic one without fixed-noise support: seeded per draw and batch
        with seeded_noise(self.seed * 1_000_003 + draw, x.device):
            return self.model(x).argmax(-1)
