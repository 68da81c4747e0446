"""The classifier every registry entry builds: backbone -> encoder head -> z -> linear decoder.

Contract (shared with attack libraries such as torchattacks):
- `model(x)` takes images in [0, 1], shaped (B, 1, 28, 28), (B, 28, 28) or (B, 784), and returns ONE (B, C)
  tensor usable as logits. For a stochastic (VIB) model it is the log of the softmax averaged
  over `num_samples` draws of z (12 in eval(), 1 in train()); otherwise the decoder's logits.
- Inputs (`as_images`): a torch tensor (anything else is a TypeError: convert with torch.as_tensor).
  uint8 pixels (0..255, as torchvision's MNIST.data) are divided by 255. Floating-point pixels of any
  dtype (float16, bfloat16, float32, float64) are cast to the model's parameter dtype (float32 unless
  the model was converted), also under torch.autocast, which then casts for its matmuls as usual;
  the cast is differentiable, so gradients w.r.t. x (attacks) reach the caller's tensor. Refused
  with a VibbenchError (a ValueError) naming the problem and the fix: other dtypes (int64, bool, ...),
  other shapes, float pixels outside [0, 1] beyond PIXEL_TOLERANCE (the message gives the min and max:
  0..255 floats must be divided by 255, [-1, 1] or mean/std-normalized images un-normalized, since the
  model rescales inside; an attack's step left unclipped, clip it), and NaN or infinite pixels (their count).
- The value check is one aminmax pass over a detached view of x (no effect on autograd), about 0.1% of
  an eval forward of mlp_vib on 1,000 images on the CPU; on CUDA it waits for the GPU (one sync per call).
  `model.check_inputs = False` skips it (dtype and shape checks stay), for hot loops whose inputs were
  checked once: the trainers check the training images once (`check_pixels`) and then skip it per step.
  Under torch.func.vmap over the images the check cannot run (it reads the values): turn it off there.
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

from vibbench.core.errors import VibbenchError, check_positive_int
from vibbench.models.layers import Backbone
from vibbench.models.head import kl_divergence, log_mean_softmax, reparameterize, std_from_preactivation, std_of
from vibbench.models.methods import Method


PIXEL_TOLERANCE = 1e-6
"""How far outside [0, 1] a float pixel may lie (rounding) before `check_pixels` refuses it; such pixels are passed
on unchanged, not clamped (clamping would change gradients)."""


def check_pixels(x: torch.Tensor, name: str = "the model") -> None:
    """Raise a VibbenchError unless every value of the floating-point tensor `x` is finite and in [0, 1] (up to
    PIXEL_TOLERANCE). One aminmax pass over a detached view (on CUDA one sync); the counts of the message only
    when it fails."""
    if x.numel() == 0:
        return
    lo, hi = torch.stack(torch.aminmax(x.detach())).tolist()
    if -PIXEL_TOLERANCE <= lo and hi <= 1.0 + PIXEL_TOLERANCE:  # False for NaN
        return
    flat = x.detach()
    bad = int((~torch.isfinite(flat)).sum())
    if bad:
        nan = int(torch.isnan(flat).sum())
        raise VibbenchError(
            f"{name}: {bad} of {flat.numel()} pixel values are not finite ({nan} NaN, {bad - nan} infinite); "
            "pixels must be in [0, 1]: check how the images were made"
        )
    if lo >= -PIXEL_TOLERANCE and 2.0 < hi <= 255.0 + PIXEL_TOLERANCE:
        fix = "these look like 0..255 pixels: divide them by 255 (or pass them as uint8, which the model divides itself)"
    elif -1.0 - PIXEL_TOLERANCE <= lo < -0.05 and hi <= 1.0 + PIXEL_TOLERANCE:
        fix = "these look normalized to [-1, 1]: undo that with (x + 1) / 2, the model rescales inside"
    elif lo >= -0.05 and hi <= 1.05:
        fix = "slightly outside: if that is a perturbation left unclipped, clip it with x.clamp(0, 1)"
    else:
        fix = "these look normalized (by a mean and std?): undo that and pass pixels in [0, 1], the model rescales inside"
    raise VibbenchError(f"{name}: pixels must be in [0, 1], got values from {lo:.6g} to {hi:.6g}; {fix}")


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
        if num_classes < 2:
            raise VibbenchError(f"num_classes must be an integer >= 2, got {num_classes!r} (model {name!r})")
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
        self.check_inputs = True  # the value check of as_images (one aminmax pass); see the module docstring
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
        """`x` as the network takes it: shaped (B, C, H, W), pixels in [0, 1] in the parameters' dtype; see the
        module docstring for what is accepted, converted and refused."""
        if not isinstance(x, torch.Tensor):
            kind = type(x)
            raise TypeError(
                f"{self.name} takes a torch tensor of images, got {kind.__module__}.{kind.__qualname__}: "
                "convert it with torch.as_tensor(x) (uint8 pixels 0..255, or floats in [0, 1])"
            )
        c, h, w = self.input_shape
        if x.dim() == 2 and x.shape[1] == c * h * w:
            x = x.reshape(x.shape[0], c, h, w)
        elif x.dim() == 3 and c == 1 and tuple(x.shape[1:]) == (h, w):
            x = x.unsqueeze(1)
        elif not (x.dim() == 4 and tuple(x.shape[1:]) == self.input_shape):
            also = f", (B, {h}, {w})" if c == 1 else ""
            raise VibbenchError(f"{self.name} expects images shaped (B, {c}, {h}, {w}){also} or (B, {c * h * w}), got {tuple(x.shape)}")
        dtype = self.encoder_head.weight.dtype
        if x.dtype == torch.uint8:
            return x.to(dtype) / 255.0  # always in range: no value check
        if not x.is_floating_point():
            raise VibbenchError(
                f"{self.name} takes uint8 pixels (0..255) or floating-point pixels in [0, 1], got dtype {x.dtype}: "
                "convert with x.to(torch.uint8) for 0..255 integers, or x.float() for 0/1 values"
            )
        if x.dtype != dtype:
            x = x.to(dtype)
        if self.check_inputs:
            check_pixels(x, self.name)
        return x

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
        kl = kl_divergence(mu, std, log_std, validate=False)  # consistent by construction; the hot path
        z = mu[None] if self.mean_mode else reparameterize(mu, std, n, eps=eps)
        return ForwardDetails(mu, std, log_std, z, self.decoder(z), kl)

    def shared_noise_logits(self, x: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Every sample's logits (n, B, C) of a stochastic model when the B images share the n draws `eps` (n, 1, K).

        With the linear decoder (W, b), W (mu + eps_r * std) + b = (W mu + b) + (W diag(eps_r)) std: the n draws'
        logits are one product of std (B, K) with the stacked noise-scaled weights (K, n x C), after one forward
        pass at z = mu, and the samples z (n, B, K) are never formed, nor the KL and the log std, which the logits do
        not need. The same quantity as `forward_details` with eps expanded over the batch (a test compares values and
        input gradients). A decoder that is not an nn.Linear gets the samples."""
        if eps.dim() != 3 or eps.shape[1] != 1 or eps.shape[2] != self.latent_dim:
            raise VibbenchError(f"shared noise must have shape (n, 1, {self.latent_dim}), got {tuple(eps.shape)}")
        b, (n, _, k) = x.shape[0], eps.shape
        if not self.stochastic or self.mean_mode:  # no noise to apply: every sample's logits are the one forward's
            return self.forward_details(x).logits[:1].expand(n, -1, -1)
        if not isinstance(self.decoder, nn.Linear):
            return self.forward_details(x, num_samples=n, eps=eps.expand(-1, b, -1)).logits
        mu, s = self.encoder_head(self.backbone(self.as_images(x))).float().split(k, dim=-1)
        std = std_of(s)  # without its log and the KL, which the logits do not need
        scaled = (eps[:, 0, :, None] * self.decoder.weight.t()[None]).permute(1, 0, 2).reshape(k, -1)  # (K, n x C)
        return (self.decoder(mu)[:, None, :] + (std @ scaled).view(b, n, -1)).transpose(0, 1)

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
        if self.stochastic and self.mean_mode:  # z = mu: the std, its log and the KL (a third of an attack step's
            # elementwise work) are not needed for the prediction, which is forward_details(x).prediction() exactly
            h = self.encoder_head(self.backbone(self.as_images(x))).float()
            return log_mean_softmax(self.decoder(h[..., : self.latent_dim][None]))
        return self.forward_details(x).prediction()

    def extra_repr(self) -> str:
        return f"name={self.name!r}, method={self.method}, stochastic={self.stochastic}, K={self.latent_dim}"
