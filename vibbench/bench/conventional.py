"""The training loop users run today, and side-by-side comparisons with ours.

`train_conventional` is written the way public VIB reproductions are (e.g. PyTorch ports of the
authors' vib_demo), with the four costs performance.md lists:
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

`compare_training` times, interleaved in one process (A B A B ...), on the same data and the
same number of steps:
- "pipeline": our `train_model` against `train_conventional`, one VIB model each;
- "population": the quick registry (`PROFILES["quick"]`: the five `mlp_*` methods and VIB at four
  more betas, 9 models) trained as populations (grouped by `population.population_key`, one
  `train_population` call per group) against the same 9 models trained one by one with `train_model`.
Throughput is examples per second summed over the models trained (models x steps x batch / wall
seconds); the ratio is candidate / baseline. Timing starts after the models are built and the
data is loaded, and includes each trainer's own set-up; an untimed warm-up of every contestant on
two batches comes first, so that lazy initialisation is not charged to whoever runs first.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from vibbench.models.classifier import Classifier
from vibbench.training.config import TrainConfig
from vibbench.core.errors import VibbenchError
from vibbench.training.losses import training_loss
from vibbench.training.precision import autocast as precision_autocast
from vibbench.training.precision import check_precision
from vibbench.training.loop import ema_decay_at

PIPELINE_MODEL = "mlp_vib"


# ---------------------------------------------------------------------------------------------
# the conventional loop


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


# ---------------------------------------------------------------------------------------------
# comparisons


def step_plan(steps: int, num_images: int, batch_size: int) -> tuple[int, int]:
    """(epochs, steps per epoch) with epochs * steps_per_epoch == steps and steps_per_epoch
    batches fitting in `num_images`: both trainers run whole epochs over the first
    steps_per_epoch * batch_size images."""
    if steps < 1:
        raise VibbenchError(f"steps must be positive, got {steps}")
    fit = num_images // batch_size
    if fit < 1:
        raise VibbenchError(f"{num_images} images is fewer than one batch of {batch_size}")
    per_epoch = max(d for d in range(1, min(steps, fit) + 1) if steps % d == 0)
    return steps // per_epoch, per_epoch


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class CompareResult:
    runs: object  # pandas DataFrame: one row per (comparison, implementation, repeat)
    summary: object  # pandas DataFrame: one row per comparison, medians and the ratio
    info: dict = field(default_factory=dict)


RUN_COLUMNS = (
    "comparison", "implementation", "role", "repeat", "device", "device_name", "torch", "precision",
    "dataset", "models", "steps", "batch", "seconds", "examples_per_second",
)  # fmt: skip
SUMMARY_COLUMNS = (
    "comparison", "baseline", "candidate", "baseline_precision", "candidate_precision", "models", "steps", "batch", "repeats",
    "baseline_examples_per_second", "candidate_examples_per_second", "ratio", "ratio_min", "ratio_max",
)  # fmt: skip


def compare_training(
    steps: int = 200,
    device: str | torch.device = "cpu",
    *,
    dataset: str = "mnist",
    data_dir=None,
    batch_size: int = 100,
    repeats: int = 2,
    precision: str = "fp32",
    baseline_precision: str = "fp32",
    pipeline: bool = True,
    population: bool = True,
    pipeline_model: str = PIPELINE_MODEL,
    models: tuple[str, ...] | None = None,
    seed: int = 0,
    warmup: bool = True,
    progress: Callable[[str], None] | None = None,
) -> CompareResult:
    """Time our trainers against the conventional alternatives (module docstring), interleaved.

    models: registry patterns of the population comparison (default: the quick profile's 9).
    precision: our trainers' (`TrainConfig.precision`); baseline_precision: the conventional loop's,
    fp32 by default because that is how public reproductions train.
    Returns per-repeat runs and a summary whose `ratio` is the median over repeats of
    candidate / baseline examples per second (> 1: the candidate is faster)."""
    import pandas as pd

    from vibbench.runs.config import PROFILES, parse_model_specs
    from vibbench.data.datasets import load_dataset
    from vibbench.training.population import population_key, train_population
    from vibbench.runs.provenance import device_name
    from vibbench.training.single import train_model

    device = torch.device(device)
    check_precision(precision)
    check_precision(baseline_precision)
    if repeats < 1:
        raise VibbenchError(f"repeats must be positive, got {repeats}")
    data = load_dataset(dataset, data_dir)
    epochs, per_epoch = step_plan(steps, data.train.images.shape[0], batch_size)
    n = per_epoch * batch_size
    images, labels = data.train.images[:n].to(device), data.train.labels[:n].to(device)
    images_u8, labels_cpu = to_uint8(data.train.images[:n]), data.train.labels[:n]
    cfg = TrainConfig(dataset=dataset, epochs=epochs, batch_size=batch_size, precision=precision)
    specs = parse_model_specs(list(models) if models else list(PROFILES["quick"].models))
    name = device_name(device.type)
    rows: list[dict] = []

    def build(spec_or_name):
        torch.manual_seed(seed)
        if isinstance(spec_or_name, str):
            from vibbench.models.registry import create_model

            return create_model(spec_or_name).to(device)
        return spec_or_name.build().to(device)

    def record(comparison, implementation, role, repeat, n_models, seconds, run_precision=precision):
        if repeat < 0:
            return
        rows.append(
            {
                "comparison": comparison, "implementation": implementation, "role": role, "repeat": repeat,
                "device": device.type, "device_name": name, "torch": torch.__version__, "precision": run_precision,
                "dataset": dataset, "models": n_models, "steps": epochs * per_epoch, "batch": batch_size,
                "seconds": seconds, "examples_per_second": n_models * epochs * per_epoch * batch_size / seconds,
            }
        )  # fmt: skip

    # repeat -1 is the untimed warm-up on two batches: first calls pay for lazy initialisation
    # (autograd, vmap, allocator, DataLoader), which would otherwise land on whoever runs first
    warm = (dataclasses.replace(cfg, epochs=1), slice(0, 2 * batch_size))

    def setting(repeat):
        return warm if repeat < 0 else (cfg, slice(None))

    def ours_pipeline(repeat):
        c, part = setting(repeat)
        model = build(pipeline_model)
        _sync(device)
        t0 = time.perf_counter()
        train_model(model, images[part], labels[part], c, seed=seed, label=f"{pipeline_model} (vibbench)")
        _sync(device)
        record("pipeline", "vibbench.train_model", "candidate", repeat, 1, time.perf_counter() - t0)

    def conventional_pipeline(repeat):
        c, part = setting(repeat)
        model = build(pipeline_model)
        _sync(device)
        t0 = time.perf_counter()
        result = train_conventional(model, images_u8[part], labels_cpu[part], c, seed=seed, device=device, precision=baseline_precision)
        expected = c.epochs * (images_u8[part].shape[0] // batch_size)
        if result.steps != expected:  # the same work, or the ratio means nothing
            raise VibbenchError(f"the conventional loop took {result.steps} steps, expected {expected}")
        seconds = time.perf_counter() - t0
        record("pipeline", "conventional (DataLoader + PIL + state_dict EMA + logging)", "baseline", repeat, 1, seconds, baseline_precision)

    def populations(repeat):
        c, part = setting(repeat)
        built = [(spec, build(spec)) for spec in specs]
        groups: dict[tuple, list] = {}
        for spec, model in built:
            groups.setdefault(population_key(model), []).append((spec, model))
        _sync(device)
        t0 = time.perf_counter()
        for members in groups.values():
            if len(members) == 1:
                spec, model = members[0]
                train_model(model, images[part], labels[part], c, seed=seed, label=spec.label, noise_key=spec.label)
            else:
                train_population(
                    [m for _, m in members], images[part], labels[part], c, seed=seed,
                    labels_of_members=[s.label for s, _ in members], noise_keys=[s.label for s, _ in members],
                )  # fmt: skip
        _sync(device)
        record("population", f"train_population ({len(groups)} groups)", "candidate", repeat, len(built), time.perf_counter() - t0)

    def one_by_one(repeat):
        c, part = setting(repeat)
        built = [(spec, build(spec)) for spec in specs]
        _sync(device)
        t0 = time.perf_counter()
        for spec, model in built:
            train_model(model, images[part], labels[part], c, seed=seed, label=spec.label, noise_key=spec.label)
        _sync(device)
        record("population", "train_model one by one", "baseline", repeat, len(built), time.perf_counter() - t0)

    pairs = []
    if pipeline:
        pairs.append(("pipeline", ours_pipeline, conventional_pipeline))
    if population:
        pairs.append(("population", populations, one_by_one))
    if not pairs:
        raise VibbenchError("nothing to compare: enable pipeline or population")
    for repeat in range(-1 if warmup else 0, repeats):
        for label, a, b in pairs:
            for run in (a, b) if repeat % 2 == 0 else (b, a):  # ABBA: drift hits both sides alike
                if progress:
                    progress(f"compare {label}, {'warm-up' if repeat < 0 else f'repeat {repeat + 1}/{repeats}'}: {run.__name__}")
                run(repeat)

    runs = pd.DataFrame(rows, columns=list(RUN_COLUMNS))
    summary = pd.DataFrame([_summarize(runs[runs.comparison == c]) for c in runs.comparison.unique()], columns=list(SUMMARY_COLUMNS))
    info = {"epochs": epochs, "steps_per_epoch": per_epoch, "images": n, "models": [s.label for s in specs], "pipeline_model": pipeline_model}
    return CompareResult(runs, summary, info)


def concat_compare(results: list[CompareResult]) -> CompareResult:
    """One result of several comparisons (e.g. one per precision), their repeats kept apart."""
    import pandas as pd

    if len(results) == 1:
        return results[0]
    return CompareResult(
        pd.concat([r.runs for r in results], ignore_index=True),
        pd.concat([r.summary for r in results], ignore_index=True),
        results[0].info,
    )


def _summarize(d) -> dict:
    base = d[d.role == "baseline"].sort_values("repeat")
    cand = d[d.role == "candidate"].sort_values("repeat")
    ratios = [c / b for c, b in zip(cand.examples_per_second, base.examples_per_second)]
    return {
        "comparison": d.comparison.iloc[0],
        "baseline": base.implementation.iloc[0],
        "candidate": cand.implementation.iloc[0],
        "baseline_precision": base.precision.iloc[0],
        "candidate_precision": cand.precision.iloc[0],
        "models": int(cand.models.iloc[0]),
        "steps": int(cand.steps.iloc[0]),
        "batch": int(cand.batch.iloc[0]),
        "repeats": len(ratios),
        "baseline_examples_per_second": statistics.median(base.examples_per_second),
        "candidate_examples_per_second": statistics.median(cand.examples_per_second),
        "ratio": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
    }


def compare_markdown(result: CompareResult) -> str:
    s = result.summary
    first = result.runs.iloc[0]
    lines = [
        "# Training throughput: our trainers against the conventional alternatives",
        "",
        f"Device: `{first.device_name}` ({first.device}); torch {first.torch}; dataset {first.dataset}, "
        f"{result.info['images']} images, {result.info['epochs']} epoch(s) of {result.info['steps_per_epoch']} steps, batch {first.batch}. "
        "Runs interleaved in one process (A B B A ...); examples/s summed over the models trained; ratio = candidate / baseline, "
        "median over repeats (min-max in brackets). One noisy machine: trust the ratios more than the absolute numbers.",
        "",
        "| comparison | baseline | candidate | models | steps | baseline ex/s | candidate ex/s | ratio |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s.itertuples(index=False):
        lines.append(
            f"| {r.comparison} | {r.baseline} ({r.baseline_precision}) | {r.candidate} ({r.candidate_precision}) | {r.models} | {r.steps} | {r.baseline_examples_per_second:,.0f} | "
            f"{r.candidate_examples_per_second:,.0f} | {r.ratio:.2f}x [{r.ratio_min:.2f}-{r.ratio_max:.2f}] |"
        )
    return "\n".join(lines) + "\n"


def write_compare(result: CompareResult, out_dir: str | Path) -> list[Path]:
    """compare.csv (per-repeat runs), compare_summary.csv and compare.md, each written atomically."""
    from vibbench.core.atomic import atomic_write_text

    out = Path(out_dir)
    paths = [out / "compare.csv", out / "compare_summary.csv", out / "compare.md"]
    atomic_write_text(paths[0], result.runs.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(paths[1], result.summary.to_csv(index=False, float_format="%.10g"))
    atomic_write_text(paths[2], compare_markdown(result))
    return paths

