"""Out-of-distribution detection: in-distribution test images against an OOD set (e.g. MNIST
against Fashion-MNIST).

Convention: OOD is the positive class, and a higher score means "more OOD". Scores named in
`SCORES`:

- "msp": `msp_score`, minus the maximum softmax probability (Hendrycks & Gimpel 2017, "A Baseline
  for Detecting Misclassified and Out-of-Distribution Examples in Neural Networks");
- "entropy": `entropy_score`, the predictive entropy in nats;
- "rate": for VIB models, the per-example KL(q(z|x) || r(z)) in nats that the model already
  computes (Alemi et al. 2018, "Uncertainty in the Variational Information Bottleneck"); it needs
  no function here.

Metrics take two 1-D score arrays (torch tensors or anything numpy accepts), in-distribution first.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from scipy import stats

from vibbench.core.errors import VibbenchError

SCORES = ("msp", "entropy", "rate")


def _normalized_log_probs(log_probs: torch.Tensor) -> torch.Tensor:
    log_probs = torch.as_tensor(log_probs)
    if log_probs.ndim != 2 or not log_probs.is_floating_point():
        raise VibbenchError(
            f"log_probs must be a float tensor of shape (N, C); got {log_probs.dtype} of shape {tuple(log_probs.shape)}."
        )
    # float64 keeps confidences like 1 - 1e-12 apart; float32 would round many of them to a tied 1.0
    return F.log_softmax(log_probs.detach().to("cpu", torch.float64), dim=1)


def msp_score(log_probs: torch.Tensor) -> torch.Tensor:
    """The maximum-softmax-probability score (Hendrycks & Gimpel 2017) as minus the maximum
    log-probability per example, shape (N,), float64: a monotone transform of -MSP, so every ranking
    metric is the same, but confidences within 1e-16 of 1 stay apart instead of tying at 1.0 (a very
    confident MNIST model has many). Higher means more OOD. `log_probs` may be logits or log-probabilities."""
    return -_normalized_log_probs(log_probs).max(dim=1).values


def entropy_score(log_probs: torch.Tensor) -> torch.Tensor:
    """Predictive entropy -sum_c p_c log p_c per example in nats, shape (N,), float64.
    `log_probs` may be logits or log-probabilities; classes with p_c = 0 contribute 0."""
    log_p = _normalized_log_probs(log_probs)
    p = log_p.exp()
    # 0 * log 0 is 0 by continuity, but 0 * (-inf) is NaN in floating point
    return -torch.where(p > 0, p * log_p, 0.0).sum(dim=1)


def _scores(values, name: str) -> np.ndarray:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise VibbenchError(f"{name} must be a non-empty 1-D array of scores; got shape {array.shape}.")
    if np.isnan(array).any():
        raise VibbenchError(f"{name} contains NaN; check the model's outputs before scoring OOD detection.")
    return array


def _threshold_counts(scores_in, scores_out) -> tuple[np.ndarray, np.ndarray, int, int]:
    """(false positives, true positives) when flagging score >= t, for each distinct score t in
    descending order, plus (n_in, n_out). Tied scores share one threshold."""
    s_in, s_out = _scores(scores_in, "scores_in"), _scores(scores_out, "scores_out")
    scores = np.concatenate([s_in, s_out])
    is_out = np.concatenate([np.zeros(s_in.size), np.ones(s_out.size)])
    order = np.argsort(-scores, kind="stable")
    scores, is_out = scores[order], is_out[order]
    # the last position of each run of equal scores closes that threshold
    last_of_group = np.append(scores[1:] != scores[:-1], True)
    tp = np.cumsum(is_out)[last_of_group]
    fp = np.cumsum(1.0 - is_out)[last_of_group]
    return fp, tp, s_in.size, s_out.size


def auroc(scores_in, scores_out) -> float:
    """Area under the ROC curve with OOD positive: the probability that a random OOD example scores
    higher than a random in-distribution one, ties counting 1/2 (the Mann-Whitney U statistic over
    n_in * n_out; Hanley & McNeil 1982). Computed from ranks, O(N log N)."""
    s_in, s_out = _scores(scores_in, "scores_in"), _scores(scores_out, "scores_out")
    ranks = stats.rankdata(np.concatenate([s_in, s_out]))
    u = ranks[s_in.size :].sum() - s_out.size * (s_out.size + 1) / 2.0
    return float(u / (s_in.size * s_out.size))


def roc_curve(scores_in, scores_out) -> tuple[np.ndarray, np.ndarray]:
    """(false positive rate, true positive rate) at each distinct threshold t (flag score >= t),
    thresholds descending, starting at (0, 0) and ending at (1, 1). The trapezoidal area under it
    equals `auroc`: a group of tied scores is one diagonal step, which is the ties-as-1/2 rule."""
    fp, tp, n_in, n_out = _threshold_counts(scores_in, scores_out)
    return np.concatenate([[0.0], fp / n_in]), np.concatenate([[0.0], tp / n_out])


def aupr(scores_in, scores_out) -> float:
    """Area under the precision-recall curve with OOD positive, as average precision:
    sum over distinct thresholds of (R_n - R_{n-1}) P_n, R_0 = 0 (scikit-learn's
    average_precision_score definition; no interpolation). Tied scores form one threshold."""
    fp, tp, _, n_out = _threshold_counts(scores_in, scores_out)
    recall = tp / n_out
    precision = tp / (tp + fp)
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))


def fpr_at_tpr(scores_in, scores_out, tpr: float = 0.95) -> float:
    """Fraction of in-distribution examples flagged (score >= t) at the highest threshold t that
    flags at least a fraction `tpr` of the OOD examples; no interpolation between thresholds."""
    if not 0.0 < tpr <= 1.0:
        raise VibbenchError(f"tpr must be in (0, 1]; got {tpr!r}.")
    fp, tp, n_in, n_out = _threshold_counts(scores_in, scores_out)
    # tp rises to n_out at the lowest threshold, so some index always qualifies
    first = int(np.argmax(tp / n_out >= tpr))
    return float(fp[first] / n_in)


def ood_metrics(scores_in, scores_out) -> dict[str, float]:
    """auroc, aupr (average precision) and fpr95 (`fpr_at_tpr` at 95% TPR), OOD positive."""
    return {
        "auroc": auroc(scores_in, scores_out),
        "aupr": aupr(scores_in, scores_out),
        "fpr95": fpr_at_tpr(scores_in, scores_out, 0.95),
    }
