"""The paper's robustness claim measured as the paper ran it and, on the same images, the honest way; the K = 2 embedding.

Alemi et al. (2017, arXiv 1612.00410, Sec. 4.2 "Behavior on adversarial examples") report that VIB models resist
attacks that break a deterministic MLP almost always, with the most robustness at intermediate beta. Korshunova et
al. (2021) argue that much of it came from gradient obfuscation by the stochastic encoder. This module measures both
on every model of a run.

The paper's protocol, as implemented here (each point is a setting of `PaperProtocolSettings`, so a reader who reads
the paper differently changes a value, not code):

- image set: the FIRST `images` test images (1000 in the paper), in test-split order; not the run's random evaluation
  set (evaluation/subsets.py), because the paper's numbers are of these images.
- the attacked function: the model's own predictor as it is: for VIB the softmax averaged over its `eval_samples` (12)
  draws of z, each attack step differentiating ONE forward pass (one fresh draw of the 12 samples). No EOT, no mean
  path: what "attacking the 12-sample predictor directly" gives.
- FGS (Goodfellow et al. 2015): one untargeted signed-gradient step of cross-entropy, L-inf, at each budget of
  `fgs_eps` (0.35 to 0.5 by default: the budgets of the paper's FGS figure as we read it, where the deterministic
  baseline keeps about 5% down to 1%); torchattacks' FGSM, through attacks/fgsm.py on the "direct" path. The paper's
  quantity: accuracy on the adversarial images, judged by one forward pass of the predictor.
- C&W L2 (Carlini & Wagner 2017), targeted: attacks/cw.py's torchattacks CW in targeted mode
  (set_mode_targeted_by_function), at each constant of the attack settings' `cw_cs` (torchattacks has no binary
  search over c; the original searches it), keeping per pair the smallest perturbation the attack's own forward
  passes classified as the target, on the first `cw_images` images. Targets (`cw_targets`): "all" attacks every image
  toward each of the other classes (the success rate then averages over all targets); "next" toward (y + 1) mod 10,
  which sends 0 to 1 as in the paper's Figure 4. The paper's quantity: the share of (image, target) pairs whose
  final point one forward pass of the predictor classifies as the target, and the mean L2 size of those successes.
- arithmetic: the paper's attacks compute in fp32 whatever the attack settings' `precision`, since their own
  bookkeeping is the paper's number; the honest protocol's attacks compute in that precision, and the judge in fp32.
- the paper's judgement is one forward pass of the predictor under noise independent of the attack's (seed offset
  `PAPER_JUDGE_SEED_OFFSET`), as a fresh evaluation of the adversarial images would draw it.

Caveat on the sources: while this was written only the paper's first page could be retrieved, not the text of
Sec. 4.2; the choices above follow issue 16's brief (first 1000 test images, FGS and targeted C&W L2, the 12-sample
predictor attacked directly) and the paper's figures as we recall them (the FGS budgets; 0 -> 1 in Figure 4). The
report prints the settings a run used.

The honest protocol on the SAME images and budgets (the one evaluation/robustness.py runs on the evaluation set):

- L-inf: the run's cheap L-inf attacks (FGSM and PGD of the attack settings: random start, EOT over `eot_iter`
  draws per gradient on the EOT path, and the mean path z = mu) at each FGS budget, plus the paper's own FGS images.
  The judge (judge.py) decides under `judge_draws` noise draws fixed per test image; under draw r an image is robust
  at eps if it is right clean and no attack on any path broke it at any eps' <= eps. Reported: the expected robust
  accuracy over images and draws, and the share robust under every draw (the report's worst case).
- L2: the same targeted C&W (same constants and steps) on the mean path and on the predictor averaged over
  `eot_iter` draws (`ExpectedPredictor`: EOT through the expectation), plus every point of the paper's attack; each
  point scaled along its perturbation by robustness.CW_SCALES. A pair is a success under draw r if some point is
  classified as the target by the judge's draw r (a judge whose labels are the targets). Reported: the success rate
  expected over draws, and the share of pairs a success under some draw; the mean L2 size of successes.

Because the honest protocol contains the paper's attack and judges it by the same predictor, its robustness can
exceed the paper protocol's only by the noise of one judgement: expected honest accuracy <= E_r[right under draw r
on the paper's images], and one draw of that is the paper's number (tests/evaluation/test_paper_protocol.py).

The embedding (Alemi et al. 2017, Fig. 2: a VIB with K = 2): for a stochastic model with latent_dim 2, the mean and
standard deviation of q(z|x) of the first `embedding_images` test images with their labels, and the test error of
the predictor with a single draw of z (the paper gives the error with one and with 12 draws).

Records (the tidy schema of reporting/metrics.py): attack paper_fgs (norm linf, eps, clean at eps 0) or paper_cw
(norm l2, n = images; each image attacked toward `targets_per_image` targets), path "paper" or "honest"; metrics
adversarial_accuracy, adversarial_accuracy_all_draws, targets_per_image, targeted_success_rate, targeted_success_rate_any_draw, mean_success_distance.
Embedding: bin = test index, metrics embedding_mu_0/1, embedding_std_0/1, embedding_label; error_one_sample.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from vibbench.core.errors import VibbenchError
from vibbench.core.progress import log
from vibbench.evaluation.attacks import cw, fgsm
from vibbench.evaluation.attacks.adversarial import attack_in_chunks, perturbation_norm
from vibbench.evaluation.attacks.cw import CW_SQUEEZE
from vibbench.evaluation.attacks.registry import ATTACKS
from vibbench.evaluation.attacks.target import AttackRequest, AttackTarget, paths_for
from vibbench.evaluation.inference import eval_mode, mean_mode, predict, seeded_noise
from vibbench.evaluation.judge import Judge
from vibbench.evaluation.robustness import CW_SCALES, AttackRun, budgeted_robustness
from vibbench.evaluation.settings import AttackSettings, PaperProtocolSettings
from vibbench.evaluation.timing import timed

PAPER_JUDGE_SEED_OFFSET = 7919
"""The paper's judgement draws its noise from seed + this: independent of the noise the attack saw."""

PAPER_ATTACKS = ("paper_fgs", "paper_cw")
"""The attack column of this module's records (the report keeps them out of the robustness section)."""

EMBEDDING_METRICS = ("embedding_mu_0", "embedding_mu_1", "embedding_std_0", "embedding_std_1", "embedding_label")


def first_images(images: torch.Tensor, labels: torch.Tensor, n: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The first n test images, their labels and their test-set indices 0..n-1: the paper's image set."""
    n = min(n, images.shape[0])
    if n < 1:
        raise VibbenchError("the test split is empty: the paper protocol attacks its first images")
    return images[:n], labels[:n], torch.arange(n)


def target_offsets(rule: str, num_classes: int) -> tuple[int, ...]:
    """The offsets k of the targets (y + k) mod C: every other class ("all") or the next one ("next")."""
    return tuple(range(1, num_classes)) if rule == "all" else (1,)


def targets_for(labels: torch.Tensor, offset: int, num_classes: int) -> torch.Tensor:
    return (labels + offset) % num_classes


class ExpectedPredictor(nn.Module):
    """A stochastic model's predictor averaged over `draws` fresh draws of its noise (log of the mean softmax over
    draws x eval_samples samples of z, one encoder pass): the function an EOT attack differentiates."""

    def __init__(self, model: nn.Module, draws: int):
        super().__init__()
        self.model = model
        self.draws = draws

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with mean_mode(self.model, False):
            return self.model.forward_details(x, num_samples=self.model.eval_samples * self.draws).prediction().float()


def paper_judgement(model: nn.Module, images: torch.Tensor, seed: int, batch_size: int) -> torch.Tensor:
    """The classes one forward pass of the model's predictor gives (the paper's evaluation), under noise independent
    of the attack's."""
    return predict(model, images, batch_size=batch_size, seed=seed + PAPER_JUDGE_SEED_OFFSET)


def _request(target: nn.Module, eps: float, settings: AttackSettings, seed: int, num_classes: int, **options) -> AttackRequest:
    return AttackRequest(target, eps, settings, seed, num_classes, **options)


# ---------------------------------------------------------------------------------------------- the paper's attacks


def paper_fgs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, settings: AttackSettings, seed: int) -> torch.Tensor:
    """The paper's FGS at `eps`: untargeted, the gradient of one forward pass of the predictor (the "direct" path)."""
    attack = fgsm.build(_request(AttackTarget(model, "direct"), eps, settings, seed, model.num_classes))
    return attack_in_chunks(attack, x, y, settings.batch_size, seed)


def cw_points(target: nn.Module, model: nn.Module, x: torch.Tensor, y: torch.Tensor, offset: int, settings: AttackSettings, seed: int, precision: str = "fp32"):
    """Targeted C&W on `target` toward (y + offset) mod C at each c of `cw_cs`: per c, the points it returned and
    whether its own forward passes classified them as the target (else torchattacks returns the start point).
    `precision`: the attack's arithmetic (fp32 for the paper's attack, whose own bookkeeping is its result)."""
    num_classes = model.num_classes
    start = x * (1 - 2 * CW_SQUEEZE) + CW_SQUEEZE  # where attacks/cw.py starts; an unchanged point is a failure
    points, found = [], []
    for c in settings.cw_cs:
        attack = cw.build(_request(target, 0.0, settings, seed, num_classes, cw_c=c), target_map=lambda _, labels: targets_for(labels, offset, num_classes))
        adv = attack_in_chunks(attack, x, y, settings.batch_size, seed, precision=precision)
        points.append(adv)
        found.append((adv - start).flatten(1).abs().amax(1) > 0)
    return points, found


def paper_cw_result(points: list[torch.Tensor], found: list[torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's attack result per pair: the smallest perturbation over c that the attack found (its own
    bookkeeping), and whether it found any."""
    dist = torch.stack([torch.where(f, perturbation_norm(p - x, "l2"), float("inf")) for p, f in zip(points, found)])  # (c, n)
    best = dist.argmin(0)
    final = torch.stack(points)[best, torch.arange(x.shape[0], device=best.device)]
    return final, torch.isfinite(dist.min(0).values)


# ---------------------------------------------------------------------------------------------- the section


def paper_protocol_records(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, settings: AttackSettings, paper: PaperProtocolSettings,
                           *, seed: int = 0, label: str = "") -> list[dict]:  # fmt: skip
    """The paper's attacks and the honest protocol on the first `paper.images` of `images` (the test split in its
    order): records of the module docstring."""
    x, y, index = first_images(images, labels, paper.images)
    records: list[dict] = []
    seconds: list[dict] = []
    with eval_mode(model):
        with timed(seconds, "paper_protocol", attack="paper_fgs", path="all", norm="linf"):
            records += _linf_records(model, x, y, index, settings, paper, seed)
        m = min(paper.cw_images, x.shape[0])
        with timed(seconds, "paper_protocol", attack="paper_cw", path="all", norm="l2"):
            records += _l2_records(model, x[:m], y[:m], index[:m], settings, paper, seed)
        log(f"  {label} paper protocol: FGS and L-inf {seconds[0]['value']:.1f} s, targeted C&W {seconds[1]['value']:.1f} s")
    return [{"split": "test", "eval_mode": "predictor"} | r for r in records] + seconds


def _linf_records(model, x, y, index, settings, paper, seed) -> list[dict]:
    n = x.shape[0]
    budgets = sorted(paper.fgs_eps)
    honest_settings = dataclasses.replace(settings, linf_eps=tuple(budgets))
    judge = Judge(model, y, index, draws=settings.judge_draws, seed=seed, batch_size=settings.batch_size)
    run = AttackRun(model, x, y, honest_settings, seed, judge, clean=judge.correct(x))

    records = [_record("paper_fgs", "paper", "linf", 0.0, n, "adversarial_accuracy", _accuracy(paper_judgement(model, x, seed, settings.batch_size), y))]
    masks: dict[float, list[torch.Tensor]] = {eps: [] for eps in budgets}
    for eps in budgets:
        adv = paper_fgs(model, x, y, eps, settings, seed)
        records.append(_record("paper_fgs", "paper", "linf", eps, n, "adversarial_accuracy", _accuracy(paper_judgement(model, adv, seed, settings.batch_size), y)))
        masks[eps].append(run.robust(adv))  # the honest protocol includes the paper's attack
    for path in paths_for(model):
        for name in honest_linf_attacks(settings):
            for (_, _, _, eps), mask in budgeted_robustness(run, ATTACKS[name], path, n).items():
                masks[eps].append(mask)

    alive = run.clean.clone()  # (draws, n): robust under draw r against everything at every budget so far
    clean = alive.float()
    records.append(_record("paper_fgs", "honest", "linf", 0.0, n, "adversarial_accuracy", float(clean.mean())))
    records.append(_record("paper_fgs", "honest", "linf", 0.0, n, "adversarial_accuracy_all_draws", float(alive.all(0).float().mean())))
    for eps in budgets:
        for mask in masks[eps]:
            alive &= mask
        records.append(_record("paper_fgs", "honest", "linf", eps, n, "adversarial_accuracy", float(alive.float().mean())))
        records.append(_record("paper_fgs", "honest", "linf", eps, n, "adversarial_accuracy_all_draws", float(alive.all(0).float().mean())))
    return records


def honest_linf_attacks(settings: AttackSettings) -> tuple[str, ...]:
    """The run's budgeted L-inf attacks that are not expensive (FGSM, PGD), or both when the run lists none."""
    names = tuple(a for a in settings.attacks if ATTACKS[a].norm == "linf" and not ATTACKS[a].expensive and not ATTACKS[a].minimal)
    return names or ("fgsm", "pgd")


def _l2_records(model, x, y, index, settings, paper, seed) -> list[dict]:
    num_classes = model.num_classes
    stochastic = bool(getattr(model, "stochastic", False))
    direct = AttackTarget(model, "direct")
    honest_targets = [AttackTarget(model, "mean"), ExpectedPredictor(model, settings.eot_iter)] if stochastic else []
    paper_hits, paper_sizes, honest_dist = [], [], []
    for offset in target_offsets(paper.cw_targets, num_classes):
        t = targets_for(y, offset, num_classes)
        points, found = cw_points(direct, model, x, y, offset, settings, seed)
        final, any_found = paper_cw_result(points, found, x)
        hit = any_found & (paper_judgement(model, final, seed, settings.batch_size) == t)
        paper_hits.append(hit)
        paper_sizes.append(perturbation_norm(final - x, "l2")[hit])
        for target in honest_targets:
            points += cw_points(target, model, x, y, offset, settings, seed, settings.precision)[0]  # judged in fp32
        honest_dist.append(_judged_distance(model, points, x, t, index, settings, seed))
    hits = torch.cat(paper_hits).float()
    sizes = torch.cat(paper_sizes)
    dist = torch.cat(honest_dist, dim=1)  # (draws, pairs)
    success = torch.isfinite(dist)
    # n is the number of IMAGES: an image's targets share its noise and its difficulty, so the pairs are not
    # independent draws; an interval over n images of each image's share of its targets is conservative.
    n = x.shape[0]
    return [
        _record("paper_cw", "paper", "l2", math.nan, n, "targets_per_image", float(hits.numel() // max(n, 1))),
        _record("paper_cw", "paper", "l2", math.nan, n, "targeted_success_rate", float(hits.mean())),
        _record("paper_cw", "paper", "l2", math.nan, n, "mean_success_distance", float(sizes.mean()) if sizes.numel() else math.nan),
        _record("paper_cw", "honest", "l2", math.nan, n, "targeted_success_rate", float(success.float().mean())),
        _record("paper_cw", "honest", "l2", math.nan, n, "targeted_success_rate_any_draw", float(success.any(0).float().mean())),
        _record("paper_cw", "honest", "l2", math.nan, n, "mean_success_distance", float(dist[success].mean()) if success.any() else math.nan),
    ]


def _judged_distance(model, points, x, targets, index, settings, seed) -> torch.Tensor:
    """(draws, n): the smallest L2 perturbation among `points` scaled along their perturbations by CW_SCALES that the
    judge's draw classifies as the target (inf: none)."""
    judge = Judge(model, targets, index, draws=settings.judge_draws, seed=seed, batch_size=settings.batch_size)  # right = the target
    dist = torch.full((judge.draws, x.shape[0]), float("inf"), device=x.device)
    for p in points:
        delta = p - x
        for scale in CW_SCALES:
            point = (x + scale * delta).clamp(0.0, 1.0)
            size = perturbation_norm(point - x, "l2").to(dist.device)
            dist = torch.where(judge.correct(point).to(dist.device), torch.minimum(dist, size[None]), dist)
    return dist


# ---------------------------------------------------------------------------------------------- the K = 2 embedding


@torch.no_grad()
def embedding_records(model: nn.Module, images: torch.Tensor, labels: torch.Tensor, paper: PaperProtocolSettings, *, seed: int = 0, batch_size: int = 1000) -> list[dict]:
    """For a stochastic model with a two-dimensional bottleneck: mu, std and the label of the first
    `paper.embedding_images` test images (bin = test index), and the test error with one draw of z. Else none."""
    if not getattr(model, "stochastic", False) or getattr(model, "latent_dim", None) != 2:
        return []
    x, y, index = first_images(images, labels, paper.embedding_images)
    base = {"split": "test", "eval_mode": "predictor"}
    records = []
    with eval_mode(model):
        mus, stds = [], []
        for i in range(0, x.shape[0], batch_size):
            out = model.forward_details(x[i : i + batch_size], num_samples=1)
            mus.append(out.mu.float().cpu())
            stds.append(out.std.float().cpu())
        mu, std = torch.cat(mus), torch.cat(stds)
        for i, pos in enumerate(index.tolist()):
            values = (mu[i, 0], mu[i, 1], std[i, 0], std[i, 1], y[i])
            records += [base | {"bin": pos, "metric": metric, "value": float(v)} for metric, v in zip(EMBEDDING_METRICS, values)]
        wrong = 0
        with seeded_noise(seed, images.device):
            for i in range(0, images.shape[0], batch_size):
                pred = model.forward_details(images[i : i + batch_size], num_samples=1).prediction().argmax(-1)
                wrong += int((pred != labels[i : i + batch_size]).sum())
    records.append(base | {"n": int(images.shape[0]), "metric": "error_one_sample", "value": wrong / images.shape[0]})
    return records


def _accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred.to(y.device) == y).float().mean())


def _record(attack: str, path: str, norm: str, eps: float, n: int, metric: str, value: float) -> dict:
    return {"attack": attack, "path": path, "norm": norm, "eps": eps, "n": n, "metric": metric, "value": value}
