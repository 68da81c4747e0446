"""Clean evaluation: accuracy, error, NLL, and for VIB the rate and the I(Z;Y) bound.

Pure functions: a model and data in, numbers out. Evaluated in chunks (bounded memory) under
a fixed noise seed, so a stochastic model's numbers are reproducible.
`eval_mode` "predictor" is what `model(x)` returns in eval() (the 12-sample average for VIB);
"mean" is the deterministic z = mu path.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from vibbench.evaluation.inference import eval_mode, mean_mode, seeded_noise
from vibbench.models.classifier import Classifier

LN2 = math.log(2.0)
EVAL_MODES = ("predictor", "mean")


def label_entropy_bits(labels: torch.Tensor, num_classes: int) -> float:
    """H(Y) of the empirical label distribution, in bits."""
    p = torch.bincount(labels.cpu(), minlength=num_classes).double() / labels.numel()
    p = p[p > 0]
    return float(-(p * p.log2()).sum())


@torch.no_grad()
def clean_metrics(
    model: Classifier, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int = 1000, seed: int = 0
) -> dict[tuple[str, str], float]:
    """{(eval_mode, metric): value}. Metrics: accuracy, error (fractions), nll (nats);
    for stochastic models also rate_bits = E[KL(q(z|x) || N(0, I))] / ln 2, an upper bound on I(Z;X),
    and izy_bits = H(Y) - E_z[-log q(y|z)] / ln 2, a lower bound on I(Z;Y) (Alemi et al. 2017, Sec. 2)."""
    totals: dict[tuple[str, str], float] = {}
    n = labels.shape[0]
    with eval_mode(model), seeded_noise(seed, images.device):
        for mode in EVAL_MODES:
            with mean_mode(model, mode == "mean"):
                correct = nll = kl = sample_ce = 0.0
                for start in range(0, n, batch_size):
                    x, y = images[start : start + batch_size], labels[start : start + batch_size]
                    out = model.forward_details(x)
                    logp = F.log_softmax(out.prediction().float(), dim=-1)
                    correct += float((logp.argmax(-1) == y).sum())
                    nll += float(F.nll_loss(logp, y, reduction="sum"))
                    kl += float(out.kl.float().sum())
                    per_sample = F.log_softmax(out.logits.float(), -1).gather(-1, y.expand(out.logits.shape[0], -1)[..., None])
                    sample_ce -= float(per_sample.mean(0).sum())
            totals[(mode, "accuracy")] = correct / n
            totals[(mode, "error")] = 1.0 - correct / n
            totals[(mode, "nll")] = nll / n
            if model.stochastic:
                totals[(mode, "rate_bits")] = kl / n / LN2
                totals[(mode, "izy_bits")] = label_entropy_bits(labels, model.num_classes) - sample_ce / n / LN2
    return totals
