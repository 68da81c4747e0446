"""The training loop users run today: the baseline our trainers are compared with (`vibbench.bench.compare`).

`train_conventional` is written the way public VIB reproductions are (e.g. PyTorch ports of the
authors' vib_demo), with four costs ours avoids:
1. a torchvision-style Dataset over the uint8 MNIST arrays that turns every image, per item, into
   a PIL image and back through `torchvision.transforms.ToTensor` (what `torchvision.datasets.MNIST`
   does); our models take pixels in [0, 1] and rescale inside, so ToTensor is the whole transform
   and the model contract is unchanged (a Normalize here would have to be undone);
2. a `torch.utils.data.DataLoader` (batch 100, shuffle from a seeded generator, last partial batch
   dropped like ours); num_workers=0, the default and what a 2-core box can afford (worker
   processes would compete with the training threads for the same two cores);
3. one model at a time, with the EMA kept as a state_dict: every step
   `ema = {k: d * ema[k] + (1 - d) * v for k, v in model.state_dict().items()}`, loaded into a
   copy of the model (`ema_model.load_state_dict(ema)`);
4. an extra forward of the 12-sample predictor (the EMA copy in eval()) on every training batch,
   for the logged training accuracy, and `.item()` on the loss and the accuracy every step.
Everything else is ours, so that only the pipeline differs: the model (`create_model`), the loss
(`losses.training_loss`: every method's regularizer), Adam(lr 1e-4, betas (0.5, 0.999)), the
learning-rate staircase (as a StepLR), the EMA decay rule, the number of steps.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from vibbench.core.errors import VibbenchError
from vibbench.models.classifier import Classifier
from vibbench.training.config import TrainConfig
from vibbench.training.loop import ema_decay_at
from vibbench.training.losses import training_loss
from vibbench.core.precision import autocast as precision_autocast


class TorchvisionStyleMNIST(torch.utils.data.Dataset):
    """What `torchvision.datasets.MNIST` does per item: uint8 array -> PIL image -> transform.

    images: (N, 28, 28) uint8; labels: (N,) integers. The default transform is ToTensor, which
    gives (1, 28, 28) float32 pixels in [0, 1], bit-identical to vibbench's own tensors."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, transform: Callable | None = None):
        from torchvision import transforms

        if images.dtype != torch.uint8 or images.dim() != 3:
            raise VibbenchError(f"expected (N, 28, 28) uint8 images, got {images.dtype} {tuple(images.shape)}")
        self.images = images.cpu()
        self.labels = labels.cpu()
        self.transform = transform if transform is not None else transforms.ToTensor()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, index: int):
        from PIL import Image

        img = Image.fromarray(self.images[index].numpy())  # a 2-D uint8 array is mode "L"
        return self.transform(img), int(self.labels[index])


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """vibbench's float pixels k / 255 (N, 1, 28, 28) back to the original (N, 28, 28) bytes, exactly."""
    return (images.detach().cpu() * 255.0).round_().to(torch.uint8).reshape(images.shape[0], *images.shape[-2:])


@dataclass
class ConventionalResult:
    batch_size: int
    steps: int = 0  # optimizer steps taken (= batches drawn from the DataLoader)
    seconds: float = 0.0  # wall time of the loop, set-up included
    losses: list[float] = field(default_factory=list)  # per step, as logged
    train_accuracy: list[float] = field(default_factory=list)  # per step, of the 12-sample EMA predictor

    @property
    def examples_per_second(self) -> float:
        return self.steps * self.batch_size / self.seconds if self.seconds else math.nan


def train_conventional(
    model: Classifier,
    images: torch.Tensor,
    labels: torch.Tensor,
    cfg: TrainConfig,
    *,
    seed: int = 0,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    log_samples: int = 12,
) -> ConventionalResult:
    """Train `model` in place for `cfg.epochs` epochs over `images` (uint8 (N, 28, 28), on the CPU,
    as a Dataset holds them) the conventional way (module docstring). On return the model holds
    the EMA weights, like `train_model`. `precision="bf16"` wraps the forward passes in autocast."""
    device = torch.device(device)
    t0 = time.perf_counter()
    dataset = TorchvisionStyleMNIST(images, labels)
    if len(dataset) < cfg.batch_size:
        raise VibbenchError(f"{len(dataset)} training images is fewer than one batch of {cfg.batch_size}")
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=cfg.batch_size, shuffle=True, drop_last=True, num_workers=0,
        generator=torch.Generator().manual_seed(seed),
    )  # fmt: skip
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, betas=cfg.adam_betas)
    scheduler = torch.optim.lr_scheduler.StepLR(opt, step_size=cfg.lr_decay_every, gamma=cfg.lr_decay)
    ema_model = copy.deepcopy(model)
    ema_model.eval_samples = log_samples
    ema_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    result = ConventionalResult(cfg.batch_size)
    autocast = precision_autocast(device, precision)
    method = model.method
    for _epoch in range(cfg.epochs):
        model.train()
        for x, y in loader:
            x, y = x.to(device), y.to(device)
            with autocast:
                out = model.forward_details(x, num_samples=cfg.train_samples)
                terms = training_loss(
                    out, y, beta=method.beta, label_smoothing=method.label_smoothing, confidence_penalty=method.confidence_penalty
                )
            opt.zero_grad()
            terms.loss.backward()
            opt.step()
            d = ema_decay_at(result.steps, cfg.ema_decay)
            with torch.no_grad():
                ema_state = {k: d * ema_state[k] + (1.0 - d) * v for k, v in model.state_dict().items()}
                ema_model.load_state_dict(ema_state)
                ema_model.eval()
                with autocast:
                    accuracy = (ema_model(x).argmax(dim=1) == y).float().mean()
            result.losses.append(terms.loss.item())
            result.train_accuracy.append(accuracy.item())
            result.steps += 1
        scheduler.step()
    model.load_state_dict(ema_state)
    model.eval()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    result.seconds = time.perf_counter() - t0
    return result
