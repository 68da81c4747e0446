"""Gradient-masking checks (after Athalye et al. 2018, Carlini et al. 2019 and Croce & Hein 2020): signs that an
attack failed for a reason other than robustness. They are reported as flags on the rows they cast doubt on and
never used to hide a number. Pure arithmetic on robust accuracies: no torch.

Every threshold is far above the sampling noise of the rows it compares only when the rows hold a few hundred
images; each check adds slack of three examples' worth (3/n) on top. Rows that hold different image sets (the
expensive attacks run on the first images of the set the others run on) are compared on the images they share:
the longer row's accuracy on the first n images of the shorter one, never two accuracies over different images.
"""

from __future__ import annotations

from collections import defaultdict

Key = tuple[str, str, str, float]  # attack, path, norm, eps

FLAGS: dict[str, str] = {
    "nonmonotone": "an attack's robust accuracy rises with ε by more than sampling slack (doubts that attack's rows)",
    "large_eps": "at a huge budget (L∞ 0.9, L2 20) PGD without random start leaves more than 2% robust, where a working "
    "attack reaches about 0% (doubts every row of that path)",
    "blackbox_stronger": "the black-box Square attack beats every white-box L∞ attack by more than 5 points: the gradients "
    "mislead (doubts the white-box rows at that ε and path)",
    "blackbox_weaker": "on a stochastic model's EOT path Square leaves more than 10 points more robust than the best "
    "white-box L∞ attack: the Square row is limited by the noise, not a measure of robustness (doubts the Square row)",
    "cw_weaker": "C&W leaves more than 10 points more robust than PGD-L2 at the same ε and path (doubts the C&W row)",
    "eot_weaker": "an attack leaves more than 10 points more robust on the EOT path than on the mean path: the noise may "
    "obfuscate its gradients (doubts that EOT row)",
    "zero_grad": "over 1% of examples have an exactly zero input gradient (doubts every row of that path)",
    "judge_noisy": "the judge's draws disagree on more than 10% of a row's images: the row depends on the noise (doubts that row)",
}
"""Each check's name and what it means, as the report explains it (rows of different lengths: see the module
docstring; the texts stay as they were, so the reports of earlier runs read as `vibbench report` writes them)."""

ACROSS_ROWS = ("blackbox_stronger", "blackbox_weaker", "cw_weaker")
"""The checks that hold one attack's row against another attack's, which may hold fewer images (the expensive attacks
run on the first `expensive_subset`): they compare on the images both hold."""

LARGE_EPS_LIMIT = 0.02
BLACKBOX_MARGIN = 0.05
WEAKER_MARGIN = 0.10
ZERO_GRAD_FRACTION = 0.01
DISAGREEMENT_LIMIT = 0.10


def _slack(n: int) -> float:
    return max(0.005, 3.0 / max(n, 1))


def masking_flags(
    acc: dict[Key, float],
    n: dict[Key, int],
    large: dict[Key, float],
    zero_grad: dict[str, float],
    disagreement: dict[Key, float] | None = None,
    *,
    white_box: dict[str, bool] | None = None,
    stochastic: bool = False,
    large_n: int | None = None,
    prefix: dict[Key, dict[int, float]] | None = None,
) -> dict[str, list[Key]]:
    """For each check of FLAGS, the rows (keys of `acc`) it casts doubt on; a check that did not fire maps to [].

    acc, n: robust accuracy and its number of images per (attack, path, norm, eps); large: the accuracy at the huge
    budgets (keys as acc); zero_grad: per path, the share of exactly zero input gradients; disagreement: per row, the
    share of images the judge's draws disagree on; white_box: per attack name, whether it uses gradients (default:
    all but "square"); stochastic: the model samples at test time (the blackbox_weaker check applies); prefix: per
    row, its accuracy on its first m images for each shorter row's size m, so rows of different lengths are compared
    on the images they share (a row of its own length needs none; without prefix, rows of different lengths are
    refused rather than compared over different images)."""
    white_box = white_box or {}
    prefix = prefix or {}

    def on(key: Key, m: int) -> float:
        """Row `key`'s accuracy on its first m images."""
        if m == n[key]:
            return acc[key]
        if m not in prefix.get(key, {}):
            raise ValueError(f"row {key} holds {n[key]} images; its accuracy on the first {m} (prefix) is needed to compare it with a shorter row")
        return prefix[key][m]

    is_white = lambda a: white_box.get(a, a != "square")  # noqa: E731
    flags: dict[str, list[Key]] = {name: [] for name in FLAGS}
    by_path: dict[str, list[Key]] = defaultdict(list)
    for key in acc:
        by_path[key[1]].append(key)

    curves: dict[tuple[str, str, str], list[Key]] = defaultdict(list)
    for key in acc:
        curves[key[:3]].append(key)
    for keys in curves.values():
        keys.sort(key=lambda k: k[3])
        if any(acc[b] > acc[a] + _slack(n[a]) for a, b in zip(keys, keys[1:])):
            flags["nonmonotone"] += keys

    large_n = large_n or max(n.values(), default=1)  # the images behind the large-budget accuracies
    for (_, path, _, _), value in large.items():
        if value > LARGE_EPS_LIMIT + _slack(large_n) and path in by_path:
            flags["large_eps"] += [k for k in by_path[path] if k not in flags["large_eps"]]

    for key in acc:
        attack, path, norm, eps = key
        same = {k: v for k, v in acc.items() if k[1:] == key[1:] and k != key}
        if attack == "square":
            white = [k for k in same if is_white(k[0]) and k[0] != "autoattack"]
            if white:
                m = min(n[k] for k in white + [key])  # the images every compared row holds
                square, best = on(key, m), min(on(k, m) for k in white)
                if square < best - BLACKBOX_MARGIN:
                    flags["blackbox_stronger"] += white
                if stochastic and path == "eot" and square > best + WEAKER_MARGIN + _slack(m):
                    flags["blackbox_weaker"].append(key)
        if attack == "cw":
            pgd = ("pgd_l2", path, norm, eps)
            if pgd in acc:
                m = min(n[key], n[pgd])
                if on(key, m) > on(pgd, m) + WEAKER_MARGIN + _slack(m):
                    flags["cw_weaker"].append(key)
        if path == "eot":
            mean = (attack, "mean", norm, eps)
            if mean in acc:
                m = min(n[key], n[mean])
                if on(key, m) > on(mean, m) + WEAKER_MARGIN + _slack(m):
                    flags["eot_weaker"].append(key)

    for path, frac in zero_grad.items():
        if frac > ZERO_GRAD_FRACTION:
            flags["zero_grad"] += by_path.get(path, [])

    for key, value in (disagreement or {}).items():
        if value > DISAGREEMENT_LIMIT and key in acc:
            flags["judge_noisy"].append(key)
    return {name: sorted(set(keys), key=list(acc).index) for name, keys in flags.items()}
