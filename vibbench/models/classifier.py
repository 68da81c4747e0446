"""The classifier every registry entry builds: backbone -> encoder head -> z -> linear decoder.

Contract (shared with attack libraries such as torchattacks):
- `model(x)` takes images in [0, 1], shaped (B, 1, 28, 28) or (B, 784), and returns ONE (B, C)
  tensor usable as logits. For a stochastic (VIB) model it is the log of the softmax averaged
  over `num_samples` draws of z (12 in eval(), 1 in train()); otherwise the decoder's logits.
- `model.forward_details(x)` is the explicit call for training and analysis: mu, std, the
  samples z, every sample's logits and the per-example KL.
- `model.stochastic` declares whether the model samples at test time; `model.mean_mode = True`
  makes a VIB model deterministic (z = mu).
- `model.head_impl`: "auto" samples z with the fused Triton kernel (`vibbench.models.fused_head`) on CUDA
  and with eager ops elsewhere; "eager" or "fused" force one. Training passes its own eps (from
  the per-model noise generator), which always takes the eager path.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vibbench.core.errors import check_positive_int
from vibbench.models.layers import Backbone
from vibbench.models.head import kl_divergence, log_mean_softmax, reparameterize, std_from_preactivation
from vibbench.models.methods import Method


@dataclass
class ForwardDetails:
    """Everything one forward pass computes. Shapes: B examples, K latent dims, n samples, C classes."""

    mu: torch.Tensor  # (B, K)
    std: torch.Tensor | None  # (B, K); None for deterministic models
    log_std: torch.Tensor | None  # (B, K), computed stably
    z: torch.Tensor  # (n, B, K); n = 1 and z = mu for deterministic models or mean mode
    logits: torch.Tensor  # (n, B, C)
    kl: torch.Tensor  # (B,) nats; zeros for deterministic models

    def prediction(self) -> torch.Tensor:
        """The (B, C) output of `model(x)`: log of the sample-averaged softmax (stochastic models), or the logits."""
        return self.logits[0] if self.std is None else log_mean_softmax(self.logits)


class Classifier(nn.Module):
    """backbone(x) -> Linear -> (mu[, s]) -> z -> Linear -> logits; see the module docstring."""

    def __init__(
        self,
        backbone: Backbone,
        method: Method,
        *,
        name: str,
        backbone_name: str,
        num_classes: int = 10,
        latent_dim: int = 256,
        eval_samples: int = 12,
        train_samples: int = 1,
        input_shape: tuple[int, int, int] = (1, 28, 28),
    ):
        super().__init__()
        for option, value in (("num_classes", num_classes), ("latent_dim", latent_dim), ("eval_samples", eval_samples), ("train_samples", train_samples)):
            check_positive_int(option, value)
        self.name = name
        self.backbone_name = backbone_name
        self.method = method
        self.stochastic = method.stochastic
        self.num_classes = num_classes
        self.latent_dim = latent_dim
        self.eval_samples = eval_samples
        self.train_samples = train_samples
        self.input_shape = input_shape
        self.mean_mode = False
        self.head_impl = "auto"  # "auto": the fused Triton head on CUDA, eager elsewhere; or "eager" / "fused"
        self.backbone = backbone
        self.encoder_head = nn.Linear(backbone.feature_dim, latent_dim * (2 if self.stochastic else 1))
        self.decoder = nn.Linear(latent_dim, num_classes)

    @property
    def num_samples(self) -> int:
        """Draws of z per forward pass: 1 in train(), 12 (by default) in eval(); 1 when deterministic."""
        if not self.stochastic or self.mean_mode:
            return 1
        return self.train_samples if self.training else self.eval_samples

    def as_images(self, x: torch.Tensor) -> torch.Tensor:
        c, h, w = self.input_shape
        if x.dim() == 2 and x.shape[1] == c * h * w:
            return x.reshape(x.shape[0], c, h, w)
        if x.dim() == 4 and tuple(x.shape[1:]) == self.input_shape:
            return x
        raise ValueError(
            f"{self.name} expects images shaped (B, {c}, {h}, {w}) or (B, {c * h * w}) in [0, 1], "
            f"got {tuple(x.shape)}"
        )

    def forward_details(
        self, x: torch.Tensor, num_samples: int | None = None, eps: torch.Tensor | None = None
    ) -> ForwardDetails:
        """One forward pass with every intermediate exposed; `eps` (n, B, K) fixes the noise."""
        h = self.encoder_head(self.backbone(self.as_images(x)))
        if not self.stochastic:
            mu = h
            return ForwardDetails(mu, None, None, mu[None], self.decoder(mu)[None], mu.new_zeros(mu.shape[0]))
        n = num_samples or self.num_samples
        h = h.float()  # the head (std, KL, z) in fp32 under bf16 autocast too; a no-op otherwise
        if eps is None and not self.mean_mode and self._fused_head(h.device):
            from vibbench.models.fused_head import fused_vib_head

            # the kernel draws eps from Philox; its seed comes from torch's CPU generator, so
            # torch.manual_seed still makes the stream reproducible
            out = fused_vib_head(h, n, int(torch.randint(0, 2**62, ())))
            return ForwardDetails(out.mu, out.std, out.log_std, out.z, self.decoder(out.z), out.kl)
        mu, s = h.split(self.latent_dim, dim=-1)
        std, log_std = std_from_preactivation(s)
        kl = kl_divergence(mu, std, log_std)
        z = mu[None] if self.mean_mode else reparameterize(mu, std, n, eps=eps)
        return ForwardDetails(mu, std, log_std, z, self.decoder(z), kl)

    def _fused_head(self, device: torch.device) -> bool:
        if self.head_impl == "eager":
            return False
        if self.head_impl == "fused":
            return True  # fused_vib_head raises a clear error where it cannot run
        if self.head_impl != "auto":
            raise ValueError(f"head_impl must be 'auto', 'eager' or 'fused', got {self.head_impl!r}")
        if device.type != "cuda":
            return False
        from vibbench.models.fused_head import available

        return available(device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_details(x).prediction()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, method={self.method}, stochastic={self.stochastic}, K={self.latent_dim}"
