"""The table1 profile: the paper's Table 1 methods under the paper profile's training (so their trained models are
shared through the cache), one seed by default, the quick profile's evaluation."""

import pytest

from vibbench.models.registry import list_models
from vibbench.runs.config import PROFILES, TABLE1_MODELS, make_run_config


def test_table1_is_the_five_methods_one_seed_and_the_quick_evaluation():
    prof = PROFILES["table1"]
    assert prof.models == TABLE1_MODELS == ("mlp_deterministic", "mlp_dropout", "mlp_label_smoothing", "mlp_confidence_penalty", "mlp_vib")
    assert set(TABLE1_MODELS) <= set(list_models())
    assert prof.seeds == 1 and prof.train.epochs == 200 and prof.train.batch_size == 100
    assert prof.eval is PROFILES["quick"].eval  # by reference: a later change to the quick evaluation applies here too
    cfg = make_run_config("table1", device="cpu", seeds=3)
    assert cfg.seeds == (0, 1, 2) and cfg.eval is PROFILES["quick"].eval
    assert [s.label for s in cfg.models] == list(TABLE1_MODELS)


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_table1_jobs_are_the_paper_profiles_jobs(device):
    """Same training config, model and seed: the same job hash, so a model trained for one profile serves the other."""
    table1 = make_run_config("table1", device=device, seeds=3, local_device=False)
    paper = make_run_config("paper", device=device, local_device=False)
    assert table1.train == paper.train
    for spec in table1.models:
        assert spec in paper.models
        for seed in table1.seeds:
            assert table1.job_hash(spec, seed) == paper.job_hash(spec, seed)
    assert table1.run_id != paper.run_id  # different runs (models, evaluation), shared trained models
