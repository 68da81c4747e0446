"""Calibration of a classifier's predicted probabilities: ECE, MCE (over the bins holding at least
MCE_MIN_BIN_COUNT examples), adaptive ECE, NLL, Brier score, reliability-diagram bins, and
temperature scaling.

Every function takes `log_probs` of shape (N, C) and integer `labels` of shape (N,).
`log_probs` may be normalized log-probabilities (what the models return: the log of the
averaged softmax) or raw logits: log_softmax is always applied first, and it leaves
normalized log-probabilities unchanged. Work is done on the CPU in float64. Probabilities and
calibration errors are fractions in [0, 1]; NLL is in nats.
"""

from __future__ import annotations

import math

import pandas as pd
import torch
import torch.nn.functional as F
from scipy import optimize

from vibbench.core.errors import VibbenchError, check_positive_int

# Temperature scaling searches log T in [log 0.05, log 20]. A minimizer outside that range only
# happens when NLL keeps falling towards T -> 0 (a separable validation set) or T -> inf
# (predictions no better than uniform); the bound is then the answer.
T_MIN, T_MAX = 0.05, 20.0

# MCE counts only bins holding at least MCE_MIN_BIN_COUNT examples. A bin's accuracy over n examples has a 95%
# interval of about +-1.96 sqrt(p (1 - p) / n), at worst (p = 1/2) +-0.98 / sqrt(n): +-0.69 for n = 2, +-0.31 for
# n = 10, +-0.18 for n = 30, +-0.10 for n = 100. Below 30 the interval is wider than +-0.18, so a near-empty bin's
# gap is mostly sampling noise, and, the MCE being a maximum, one such bin would decide it: a well-trained MNIST
# model leaves only a handful of its 10,000 test images in each low-confidence bin (in
# results/quick-mnist-048b8ce855 the MCE of mlp_deterministic, 0.31, and of mlp_label_smoothing, 0.81, were each
# the gap of a bin holding a single image). 30 is also where the normal approximation to the binomial is
# customarily trusted. ECE needs no such floor: it weights each bin by its share of the examples.
MCE_MIN_BIN_COUNT = 30


def _check_inputs(log_probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float64 log-probabilities after log_softmax, int64 labels), both on the CPU, or VibbenchError."""
    log_probs, labels = torch.as_tensor(log_probs), torch.as_tensor(labels)
    if log_probs.ndim != 2 or log_probs.shape[0] == 0 or log_probs.shape[1] == 0:
        raise VibbenchError(
            f"log_probs must have shape (N, C) with N, C >= 1; got {tuple(log_probs.shape)}. "
            "Pass one row of class log-probabilities (or logits) per example."
        )
    if not log_probs.is_floating_point():
        raise VibbenchError(f"log_probs must be a float tensor; got {log_probs.dtype}. Convert it with .double().")
    if labels.ndim != 1 or labels.shape[0] != log_probs.shape[0]:
        raise VibbenchError(
            f"labels must have shape ({log_probs.shape[0]},) to match log_probs {tuple(log_probs.shape)}; "
            f"got {tuple(labels.shape)}."
        )
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise VibbenchError(f"labels must be integer class indices; got {labels.dtype}. Convert them with .long().")
    log_probs = log_probs.detach().to("cpu", torch.float64)
    labels = labels.detach().to("cpu", torch.int64)
    if int(labels.min()) < 0 or int(labels.max()) >= log_probs.shape[1]:
        raise VibbenchError(
            f"labels must lie in [0, {log_probs.shape[1] - 1}]; got values in [{int(labels.min())}, {int(labels.max())}]."
        )
    # -inf is a legitimate zero probability; NaN and +inf mean the model output is broken
    if torch.isnan(log_probs).any() or (log_probs == math.inf).any():
        raise VibbenchError("log_probs contain NaN or +inf; check the model's outputs before measuring calibration.")
    normalized = F.log_softmax(log_probs, dim=1)
    if torch.isnan(normalized).any():
        raise VibbenchError(
            "a row of log_probs is entirely -inf (no class has any probability); check the model's outputs."
        )
    return normalized, labels


def _check_n_bins(n_bins: int) -> None:
    check_positive_int("n_bins", n_bins)


def _top1(log_probs: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(confidence, 1.0 if correct else 0.0) of the top-1 prediction; ties go to the lowest class index."""
    max_log_prob, predicted = log_probs.max(dim=1)
    return max_log_prob.exp(), (predicted == labels).double()


def _equal_width_index(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin of each confidence among `n_bins` equal-width bins of [0, 1].

    Bins are [lo, hi) except the last, which is closed, so a confidence of exactly 1.0 counts in it.
    Edges are a linspace searched with bucketize, as in torchmetrics, so a confidence lying on an
    interior edge goes to the bin above it there too.
    """
    interior = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)[1:-1]
    return torch.bucketize(confidence, interior, right=True)


def _equal_mass_index(confidence: torch.Tensor, n_bins: int) -> torch.Tensor:
    """Bin of each confidence when the sorted confidences are cut into `n_bins` consecutive groups
    whose sizes differ by at most one, the first N mod n_bins groups holding the extra example
    (as numpy.array_split does). Ties straddling a cut are split by stable sort order."""
    n = confidence.numel()
    sizes = torch.full((n_bins,), n // n_bins, dtype=torch.int64)
    sizes[: n % n_bins] += 1
    index = torch.empty(n, dtype=torch.int64)
    index[torch.argsort(confidence, stable=True)] = torch.repeat_interleave(torch.arange(n_bins), sizes)
    return index


def _bin_sums(index: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor, n_bins: int):
    """(count, number correct, sum of confidence) per bin, float64, bins given by `index`."""
    count = torch.bincount(index, minlength=n_bins).to(torch.float64)
    n_correct = torch.bincount(index, weights=correct, minlength=n_bins)
    conf_sum = torch.bincount(index, weights=confidence, minlength=n_bins)
    return count, n_correct, conf_sum


def _bin_gaps(index: torch.Tensor, confidence: torch.Tensor, correct: torch.Tensor, n_bins: int, min_count: int = 1):
    """(fraction of examples, |accuracy - mean confidence|) of each bin holding at least `min_count` examples
    (every non-empty bin by default), bins given by `index`."""
    count, n_correct, conf_sum = _bin_sums(index, confidence, correct, n_bins)
    filled = count >= min_count
    gap = (n_correct[filled] - conf_sum[filled]).abs() / count[filled]
    return count[filled] / confidence.numel(), gap


def _ece(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    weight, gap = _bin_gaps(_equal_width_index(confidence, n_bins), confidence, correct, n_bins)
    return float((weight * gap).sum())


def _mce(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int, min_count: int = MCE_MIN_BIN_COUNT) -> float:
    _, gap = _bin_gaps(_equal_width_index(confidence, n_bins), confidence, correct, n_bins, min_count)
    return float(gap.max()) if gap.numel() else math.nan


def _adaptive_ece(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int) -> float:
    weight, gap = _bin_gaps(_equal_mass_index(confidence, n_bins), confidence, correct, n_bins)
    return float((weight * gap).sum())


def _nll(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float(F.nll_loss(log_probs, labels))


def _brier(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    probs = log_probs.exp()
    p_true = probs.gather(1, labels[:, None]).squeeze(1)
    # sum_c (p_c - onehot_c)^2 = sum_c p_c^2 - 2 p_y + 1, without building the one-hot matrix
    return float((probs.square().sum(1) - 2.0 * p_true + 1.0).mean())


def ece(log_probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error of the top-1 prediction over `n_bins` equal-width confidence bins:
    sum over bins of (n_b / N) |accuracy_b - confidence_b| (Naeini et al. 2015; Guo et al. 2017,
    "On Calibration of Modern Neural Networks", Eq. 3)."""
    log_probs, labels = _check_inputs(log_probs, labels)
    _check_n_bins(n_bins)
    return _ece(*_top1(log_probs, labels), n_bins)


def mce(
    log_probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15, min_count: int = MCE_MIN_BIN_COUNT
) -> float:
    """Maximum calibration error: the largest |accuracy_b - confidence_b| over the equal-width bins
    holding at least `min_count` examples (Naeini et al. 2015; Guo et al. 2017, Eq. 5, take every
    non-empty bin, which is `min_count=1`).

    The default floor, MCE_MIN_BIN_COUNT = 30, keeps bins whose accuracy is known to better than
    about +-0.18 (95%); with every bin counted, a bin of two images, whose accuracy can only be 0,
    1/2 or 1, can decide the maximum. NaN when no bin holds `min_count` examples.
    """
    log_probs, labels = _check_inputs(log_probs, labels)
    _check_n_bins(n_bins)
    check_positive_int("min_count", min_count)
    return _mce(*_top1(log_probs, labels), n_bins, min_count)


def adaptive_ece(log_probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """ECE of the top-1 prediction over `n_bins` equal-mass bins (examples sorted by confidence and
    cut into groups of near-equal size): sum over groups of (n_b / N) |accuracy_b - confidence_b|.

    This is the top-label form of the adaptive calibration error of Nixon et al. 2019,
    "Measuring Calibration in Deep Learning". With N < n_bins the empty groups are dropped.
    """
    log_probs, labels = _check_inputs(log_probs, labels)
    _check_n_bins(n_bins)
    return _adaptive_ece(*_top1(log_probs, labels), n_bins)


def nll(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class, in nats (infinite if a true class has probability 0)."""
    return _nll(*_check_inputs(log_probs, labels))


def brier(log_probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: mean over examples of sum_c (p_c - 1[c = y])^2, in [0, 2]
    (Brier 1950, "Verification of Forecasts Expressed in Terms of Probability")."""
    return _brier(*_check_inputs(log_probs, labels))


def reliability_bins(log_probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> pd.DataFrame:
    """One row per equal-width confidence bin (the bins `ece` uses), for reliability diagrams:
    bin_lower, bin_upper, count, accuracy (fraction of top-1 predictions correct in the bin) and
    confidence (mean top-1 probability in the bin); accuracy and confidence are NaN for empty bins."""
    log_probs, labels = _check_inputs(log_probs, labels)
    _check_n_bins(n_bins)
    confidence, correct = _top1(log_probs, labels)
    count, n_correct, conf_sum = _bin_sums(_equal_width_index(confidence, n_bins), confidence, correct, n_bins)
    edges = torch.linspace(0.0, 1.0, n_bins + 1, dtype=torch.float64)
    # 0 / 0 = NaN marks the empty bins, which is what a plot should skip
    return pd.DataFrame(
        {
            "bin_lower": edges[:-1].numpy(),
            "bin_upper": edges[1:].numpy(),
            "count": count.to(torch.int64).numpy(),
            "accuracy": (n_correct / count).numpy(),
            "confidence": (conf_sum / count).numpy(),
        }
    )


def _scaled(logits: torch.Tensor, temperature: torch.Tensor) -> torch.Tensor:
    """logits / T, keeping -inf entries at -inf without a NaN gradient (inf * 0) flowing into T."""
    finite = torch.isfinite(logits)
    return torch.where(finite, torch.where(finite, logits, 0.0) / temperature, logits)


def _nll_at_log_temperature(log_t: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(_scaled(logits, log_t.exp()), labels)


def _lbfgs_log_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """log T minimizing validation NLL by L-BFGS with a strong-Wolfe line search, from T = 1."""
    log_t = torch.zeros(1, dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS(
        [log_t], lr=1.0, max_iter=100, tolerance_grad=1e-10, tolerance_change=1e-14, line_search_fn="strong_wolfe"
    )

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = _nll_at_log_temperature(log_t, logits, labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        if not torch.isfinite(_nll_at_log_temperature(log_t, logits, labels)):
            return math.nan
    return float(log_t.detach())


def _bounded_log_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """log T minimizing validation NLL by a derivative-free bounded search over [log T_MIN, log T_MAX].

    NLL is convex in 1/T, hence unimodal in log T, so a bracketing search finds the minimum.
    """

    def objective(log_t: float) -> float:
        value = float(_nll_at_log_temperature(torch.tensor(log_t, dtype=torch.float64), logits, labels))
        return value if math.isfinite(value) else math.inf

    result = optimize.minimize_scalar(
        objective, bounds=(math.log(T_MIN), math.log(T_MAX)), method="bounded", options={"xatol": 1e-8}
    )
    return float(result.x)


def fit_temperature(logits_val: torch.Tensor, labels_val: torch.Tensor) -> float:
    """Temperature scaling (Guo et al. 2017, Sec. 4.2): the T > 0 minimizing the NLL of
    softmax(logits / T) on a validation split.

    Optimizes log T (so T stays positive) with L-BFGS in float64, starting from T = 1. If L-BFGS ends
    at a non-finite value, a bounded derivative-free search over T in [T_MIN, T_MAX] is used instead;
    a result outside that range is clipped to it (the NLL is unimodal in log T, so the clipped value
    is the constrained minimizer). The input may be logits or log-probabilities, which give the same
    T for a single-sample model; for averaged predictors such as VIB, scaling the log of the averaged
    probability is the standard practice.
    """
    # log_softmax shifts each row by a constant, and (z - c) / T differs from z / T by c / T, another
    # per-row constant that softmax ignores: the normalized input gives the same T as the raw one
    logits, labels = _check_inputs(logits_val, labels_val)
    if torch.isneginf(logits.gather(1, labels[:, None])).any():
        raise VibbenchError(
            "some validation examples give their true class probability 0 (log-probability -inf), so the NLL is "
            "infinite at every temperature; pass logits or finite log-probabilities (e.g. clamp them from below)."
        )
    log_t = _lbfgs_log_temperature(logits, labels)
    if not math.isfinite(log_t):
        log_t = _bounded_log_temperature(logits, labels)
    return min(max(math.exp(log_t), T_MIN), T_MAX)


def calibration_metrics(
    log_probs: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0, n_bins: int = 15
) -> dict[str, float]:
    """ece, mce, adaptive_ece, nll (nats), brier and accuracy of softmax(log_probs / temperature).

    mce counts the bins holding at least MCE_MIN_BIN_COUNT examples (NaN if there is none), as `mce` does."""
    try:
        t = float(temperature)
    except (TypeError, ValueError):
        t = math.nan
    if not (math.isfinite(t) and t > 0):
        raise VibbenchError(
            f"temperature must be a finite positive number (e.g. from fit_temperature); got {temperature!r}."
        )
    log_probs, labels = _check_inputs(log_probs, labels)
    _check_n_bins(n_bins)
    scaled = F.log_softmax(_scaled(log_probs, torch.tensor(t, dtype=torch.float64)), dim=1)
    confidence, correct = _top1(scaled, labels)
    return {
        "ece": _ece(confidence, correct, n_bins),
        "mce": _mce(confidence, correct, n_bins),
        "adaptive_ece": _adaptive_ece(confidence, correct, n_bins),
        "nll": _nll(scaled, labels),
        "brier": _brier(scaled, labels),
        "accuracy": float(correct.mean()),
    }
