"""Population training against training the members one by one."""

import dataclasses

import pytest
import torch

from vibbench import create_model
from vibbench.evaluation.inference import predict
from vibbench.training.checkpoints import load_checkpoint
from vibbench.training.config import TrainConfig
import vibbench.training.population as P
from vibbench.core.errors import VibbenchError
from vibbench.training.population import population_key, train_population
from vibbench.training.loop import TrainingDiverged
from vibbench.training.single import train_model

CFG = TrainConfig(dataset="synthetic", epochs=1, batch_size=50)


def build(name, **overrides):
    torch.manual_seed(0)
    return create_model(name, **overrides)


def solo_and_population(names, data, cfg=CFG, overrides=None, n=None):
    overrides = overrides or [{}] * len(names)
    x, y = data.train.images[:n], data.train.labels[:n]
    solo = [build(n, **o) for n, o in zip(names, overrides)]
    solo_results = [train_model(m, x, y, cfg, seed=3, label=n) for m, n in zip(solo, names)]
    pop = [build(n, **o) for n, o in zip(names, overrides)]
    pop_results = train_population(pop, x, y, cfg, seed=3, labels_of_members=names)
    return solo, pop, solo_results, pop_results


def max_diff(a, b):
    return max((p - q).abs().max().item() for p, q in zip(a.parameters(), b.parameters()))


def test_deterministic_members_match_one_by_one_training(synthetic):
    names = ["mlp_deterministic", "mlp_label_smoothing", "mlp_confidence_penalty", "mlp_dropout"]
    solo, pop, solo_results, pop_results = solo_and_population(names, synthetic, n=500)
    # the same batches, initial weights and noise streams (dropout masks included): after 10 steps
    # the weights agree to float summation order (batched vs plain matrix products), not to chance
    for name, a, b, ra, rb in zip(names, solo, pop, solo_results, pop_results):
        assert ra.history[0]["loss"] == pytest.approx(rb.history[0]["loss"], rel=1e-6), name
        assert max_diff(a, b) < 1e-5, name
    # over longer runs Adam amplifies the rounding differences: equal in distribution, not in bits
    x, y = synthetic.test.images, synthetic.test.labels
    solo, pop, _, _ = solo_and_population(names, synthetic)
    for a, b in zip(solo, pop):
        assert abs((predict(a, x) == y).float().mean().item() - (predict(b, x) == y).float().mean().item()) < 0.03


def test_stochastic_members_match_statistically_and_keep_their_beta(synthetic):
    names = ["mlp_vib"] * 3
    overrides = [{"beta": 0.0}, {"beta": 1e-3}, {"beta": 1.0}]
    solo, pop, solo_results, pop_results = solo_and_population(names, synthetic, overrides=overrides)
    x, y = synthetic.test.images, synthetic.test.labels
    for a, b in zip(solo, pop):
        acc_a = (predict(a, x) == y).float().mean().item()
        acc_b = (predict(b, x) == y).float().mean().item()
        assert abs(acc_a - acc_b) < 0.03
    # each member trained with its own beta: a large beta squeezes the rate
    kls = [r.history[-1]["kl"] for r in pop_results]
    assert kls[2] < kls[1] < kls[0]
    for ra, rb in zip(solo_results, pop_results):
        assert ra.history[0]["kl"] == pytest.approx(rb.history[0]["kl"], rel=1e-3)


def test_population_key_groups_by_architecture():
    assert population_key(create_model("mlp_deterministic")) == population_key(create_model("mlp_dropout"))
    assert population_key(create_model("mlp_vib")) == population_key(create_model("mlp_vib", beta=1.0))
    assert population_key(create_model("mlp_vib")) != population_key(create_model("mlp_deterministic"))
    assert population_key(create_model("conv_vib")) != population_key(create_model("mlp_vib"))


def _killed_after_first_checkpoint(names, x, y, cfg, path, monkeypatch):
    """Train a population of `names` with a checkpoint at `path` (config hash "h"), killed right after the first save."""
    import vibbench.training.loop as loop

    real_save = loop.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_population([build(n) for n in names], x, y, cfg, seed=1, labels_of_members=names, checkpoint_path=path, config_hash="h")
    monkeypatch.setattr(loop, "save_checkpoint", real_save)


def test_population_resumes_to_identical_weights(synthetic, tmp_path, monkeypatch):
    cfg = dataclasses.replace(CFG, epochs=2, max_train_examples=None)
    x, y = synthetic.train.images[:500], synthetic.train.labels[:500]
    names = ["mlp_vib", "mlp_vib"]
    ref = [build(n) for n in names]
    train_population(ref, x, y, cfg, seed=1, labels_of_members=names)
    _killed_after_first_checkpoint(names, x, y, cfg, tmp_path / "s.pt", monkeypatch)
    # the keys of checkpoints written before the loop core existed, and the layout of the stacked matrices
    saved = load_checkpoint(tmp_path / "s.pt", "h")
    assert set(saved) == {"epoch", "params", "ema", "optimizer", "order_rng", "noise_rng", "histories", "seconds", "layout"}
    member = dict(build(names[0]).named_parameters())
    stacked = dict(zip(P._PopulationStep([build(n) for n in names], x, y, cfg, []).names, saved["params"]))
    matrices = [(n, p) for n, p in member.items() if p.dim() == 2]
    assert matrices
    for name, p in matrices:  # each (out, in) matrix stored as a contiguous (M, in, out)
        assert stacked[f"model.{name}"].shape == (2, p.shape[1], p.shape[0]) and stacked[f"model.{name}"].is_contiguous()
    resumed = [build(n) for n in names]
    results = train_population(resumed, x, y, cfg, seed=1, labels_of_members=names, checkpoint_path=tmp_path / "s.pt", config_hash="h")
    assert results[0].resumed_from_epoch == 1
    for a, b in zip(ref, resumed):
        assert max_diff(a, b) == 0


def test_a_checkpoint_in_the_old_layout_is_refused_not_loaded_transposed(synthetic, tmp_path, monkeypatch):
    """Before, the stacked matrices were stored (M, out, in): a square one would load without a shape error."""
    from vibbench.training.checkpoints import save_checkpoint

    cfg = dataclasses.replace(CFG, epochs=2, max_train_examples=None)
    x, y = synthetic.train.images[:500], synthetic.train.labels[:500]
    names = ["mlp_vib", "mlp_vib"]
    _killed_after_first_checkpoint(names, x, y, cfg, tmp_path / "s.pt", monkeypatch)
    old = load_checkpoint(tmp_path / "s.pt", "h")
    del old["layout"]
    save_checkpoint(tmp_path / "s.pt", old, "h")
    with pytest.raises(VibbenchError, match="another layout.*--retrain"):
        train_population([build(n) for n in names], x, y, cfg, seed=1, labels_of_members=names, checkpoint_path=tmp_path / "s.pt", config_hash="h")


def test_a_diverging_member_is_named(synthetic):
    names = ["mlp_vib", "mlp_vib"]
    models = [build(n) for n in names]
    with torch.no_grad():
        models[1].decoder.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"second.*epoch 1, step 1"):
        train_population(models, synthetic.train.images, synthetic.train.labels, CFG, seed=0, labels_of_members=["first", "second"])


def test_bf16_population_tracks_bf16_solo_training(synthetic):
    """Under bf16 autocast the trainers stay equivalent: same batches and noise, bf16 rounding of
    the matrix products only (far from chance: differently seeded runs differ by ~1e-2)."""
    cfg = dataclasses.replace(CFG, precision="bf16")
    names = ["mlp_deterministic", "mlp_dropout"]
    solo, pop, solo_results, pop_results = solo_and_population(names, synthetic, cfg=cfg, n=500)
    fp32_solo, _, _, _ = solo_and_population(names, synthetic, n=500)
    for name, a, b, c, ra, rb in zip(names, solo, pop, fp32_solo, solo_results, pop_results):
        assert ra.history[0]["loss"] == pytest.approx(rb.history[0]["loss"], rel=1e-2), name
        assert max_diff(a, b) < 2e-3, name
        assert max_diff(a, c) > 0, name  # bf16 really changed the arithmetic
