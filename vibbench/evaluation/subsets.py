"""The run's evaluation set: test images drawn at random under a recorded seed, shared by every measurement.

The first N test images of MNIST are not a random sample (they are the easier half), so every subset the
harness evaluates is a prefix of ONE random permutation of the test split: the robustness set, the smaller
set of the expensive attacks and the shift set are nested prefixes of it, the same for every model and seed
of a run, so any two numbers of a run that a reader compares come from the same images (or one from a
subset of the other's images, which the tables say by their n).
"""

from __future__ import annotations

import torch

from vibbench.core.errors import check_positive_int


def evaluation_order(num_examples: int, seed: int) -> torch.Tensor:
    """A random permutation of range(num_examples) from a generator seeded by `seed` alone."""
    check_positive_int("num_examples", num_examples)
    return torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed))


def evaluation_indices(num_examples: int, n: int, seed: int) -> torch.Tensor:
    """The run's evaluation set of size min(n, num_examples): the first n of `evaluation_order`."""
    return evaluation_order(num_examples, seed)[: check_positive_int("n", n)]


def evaluation_set_record(num_examples: int, cfg) -> dict:
    """What `evaluation_set.json` holds for a run with evaluation settings `cfg` (an EvalConfig) on a test split of
    `num_examples` images: the seed, the sizes of the nested sets and the test indices of the largest, in order."""
    sizes = {"shift": cfg.shift_subset}
    if cfg.attacks is not None:
        sizes |= {"robustness": cfg.attacks.subset, "expensive_attacks": min(cfg.attacks.expensive_subset, cfg.attacks.subset)}
    sizes = {k: min(v, num_examples) for k, v in sizes.items()}
    return {
        "split": "test",
        "test_size": num_examples,
        "seed": cfg.subset_seed,
        "sizes": sizes,
        "note": "each set is the first `size` entries of `indices` (0-based positions in the test split)",
        "indices": evaluation_indices(num_examples, max(sizes.values()), cfg.subset_seed).tolist(),
    }
