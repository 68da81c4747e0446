"""The run's evaluation set: a seeded random draw, nested prefixes, the same images for every section."""

import torch

from vibbench.evaluation.settings import AttackSettings, EvalConfig
from vibbench.evaluation.subsets import evaluation_indices, evaluation_order, evaluation_set_record


def test_the_set_is_a_seeded_random_draw_without_repeats():
    a, b, c = evaluation_indices(10_000, 1000, 0), evaluation_indices(10_000, 1000, 0), evaluation_indices(10_000, 1000, 1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert a.unique().numel() == 1000 and int(a.min()) >= 0 and int(a.max()) < 10_000
    # not the first N: a random draw of 1000 of 10,000 reaches well beyond the first 1000 positions
    assert (a >= 1000).float().mean() > 0.8
    assert sorted(evaluation_order(50, 3).tolist()) == list(range(50))


def test_smaller_sets_are_prefixes_of_larger_ones():
    big, small = evaluation_indices(10_000, 1000, 7), evaluation_indices(10_000, 200, 7)
    assert torch.equal(big[:200], small)
    assert evaluation_indices(30, 1000, 7).numel() == 30  # capped at the split's size


def test_the_record_lists_the_indices_each_set_uses():
    cfg = EvalConfig(attacks=AttackSettings(subset=50, expensive_subset=10), shift_subset=80, subset_seed=5)
    rec = evaluation_set_record(60, cfg)
    assert rec["sizes"] == {"shift": 60, "robustness": 50, "expensive_attacks": 10} and rec["seed"] == 5
    assert rec["indices"] == evaluation_indices(60, 60, 5).tolist()
