"""Training: identical batches across models, the schedule, EMA, divergence, resume."""

import dataclasses
import math

import pytest
import torch

from vibbench import create_model
from vibbench.training.checkpoints import load_checkpoint
from vibbench.training.config import TrainConfig
from vibbench.core.errors import VibbenchError
from vibbench.training.loop import TrainingDiverged
from vibbench.training.single import train_model

CFG = TrainConfig(dataset="synthetic", epochs=2, batch_size=20, eval_samples=4)


def tiny_data(n=100, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 1, 28, 28, generator=g), torch.randint(0, 10, (n,), generator=g)


def recorded_batches(name, seed, cfg=CFG):
    x, y = tiny_data()
    torch.manual_seed(123)
    model = create_model(name)
    seen = []
    inner = model.forward_details

    def spy(inputs, *args, **kwargs):
        seen.append(inputs.clone())
        return inner(inputs, *args, **kwargs)

    model.forward_details = spy
    train_model(model, x, y, cfg, seed=seed, label=name)
    return seen


def test_every_model_of_a_seed_sees_the_same_batches_in_the_same_order():
    a = recorded_batches("mlp_deterministic", seed=3)
    b = recorded_batches("mlp_vib", seed=3)
    c = recorded_batches("conv_dropout", seed=3)
    assert len(a) == len(b) == len(c) == 2 * (100 // 20)
    assert all(torch.equal(u, v) and torch.equal(u, w) for u, v, w in zip(a, b, c))
    other = recorded_batches("mlp_deterministic", seed=4)
    assert not all(torch.equal(u, v) for u, v in zip(a, other))


def test_model_ends_with_the_ema_of_its_iterates(monkeypatch):
    # recomputed in float64 from the weights after every step with TensorFlow's decay min(d, (1 + t) / (10 + t))
    import vibbench.training.loop as loop

    iterates = []
    real_update = loop.ema_update

    def record(ema, params, step, decay):
        iterates.append([p.detach().double().clone() for p in params])
        real_update(ema, params, step, decay)

    monkeypatch.setattr(loop, "ema_update", record)
    x, y = tiny_data()
    torch.manual_seed(0)
    model = create_model("mlp_deterministic")
    expected = [p.detach().double().clone() for p in model.parameters()]
    cfg = dataclasses.replace(CFG, epochs=1, ema_decay=0.5, lr=1e-2)
    train_model(model, x, y, cfg, seed=0, label="m")
    assert len(iterates) == 5
    for t, params in enumerate(iterates):
        d = min(0.5, (1 + t) / (10 + t))
        expected = [d * e + (1 - d) * p for e, p in zip(expected, params)]
    for p, e, last in zip(model.parameters(), expected, iterates[-1]):
        assert torch.allclose(p.double(), e, atol=1e-6)
    assert any(not torch.allclose(p.double(), last, atol=1e-4) for p, last in zip(model.parameters(), iterates[-1]))


def test_nan_loss_stops_training_naming_model_epoch_and_step():
    x, y = tiny_data()
    model = create_model("mlp_vib")
    with torch.no_grad():
        model.decoder.weight[0, 0] = float("nan")
    with pytest.raises(TrainingDiverged, match=r"mlp_vib seed 0.*epoch 1, step 1 of 5"):
        train_model(model, x, y, CFG, seed=0, label="mlp_vib seed 0")


def test_interrupted_training_resumes_to_identical_weights(tmp_path, monkeypatch):
    x, y = tiny_data()

    def fresh():
        torch.manual_seed(7)
        return create_model("mlp_vib")

    reference = fresh()
    train_model(reference, x, y, CFG, seed=1, label="ref")

    import vibbench.training.loop as loop

    real_save = loop.save_checkpoint

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        raise KeyboardInterrupt  # killed right after the first epoch's checkpoint

    ckpt = tmp_path / "state.pt"
    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_model(fresh(), x, y, CFG, seed=1, label="a", checkpoint_path=ckpt, config_hash="h")
    monkeypatch.setattr(loop, "save_checkpoint", real_save)
    # the keys of checkpoints written before the loop core existed, so that their runs still resume
    assert set(load_checkpoint(ckpt, "h")) == {"epoch", "model", "optimizer", "ema", "order_rng", "noise_rng", "history", "seconds"}
    resumed = fresh()
    result = train_model(resumed, x, y, CFG, seed=1, label="a", checkpoint_path=ckpt, config_hash="h")
    assert result.resumed_from_epoch == 1 and len(result.history) == 2
    for p, q in zip(reference.parameters(), resumed.parameters()):
        assert torch.equal(p, q)


@pytest.mark.parametrize("beta", [0.0, 1e3])
def test_training_stays_finite_across_the_beta_range(beta):
    x, y = tiny_data()
    model = create_model("mlp_vib", beta=beta)
    result = train_model(model, x, y, CFG, seed=0, label=f"beta {beta}")
    assert all(math.isfinite(h["loss"]) and math.isfinite(h["kl"]) for h in result.history)
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bf16_training_autocasts_the_products_and_keeps_the_head_and_loss_in_fp32(monkeypatch):
    import vibbench.training.single as train_mod

    seen = {}
    real_loss = train_mod.training_loss

    def spy(out, y, **kw):
        seen.update(logits=out.logits.dtype, kl=out.kl.dtype, z=out.z.dtype)
        return real_loss(out, y, **kw)

    monkeypatch.setattr(train_mod, "training_loss", spy)
    x, y = tiny_data()
    cfg = dataclasses.replace(CFG, precision="bf16")
    torch.manual_seed(0)
    bf16 = create_model("mlp_vib")
    result = train_model(bf16, x, y, cfg, seed=0, label="bf16")
    assert seen == {"logits": torch.bfloat16, "kl": torch.float32, "z": torch.float32}
    assert all(p.dtype == torch.float32 for p in bf16.parameters())  # master weights stay fp32
    torch.manual_seed(0)
    fp32 = create_model("mlp_vib")
    reference = train_model(fp32, x, y, CFG, seed=0, label="fp32")
    # the same run up to bf16 rounding: close losses, different bits
    assert result.history[-1]["loss"] == pytest.approx(reference.history[-1]["loss"], rel=0.05)
    assert any(not torch.equal(p, q) for p, q in zip(bf16.parameters(), fp32.parameters()))


def test_precision_is_validated_and_named_in_the_job_hash_only_when_not_fp32():
    from vibbench.runs.config import make_run_config

    with pytest.raises(VibbenchError, match="precision 'fp16'.*fp32, bf16"):
        TrainConfig(precision="fp16")
    assert "precision" not in TrainConfig().to_dict()  # jobs cached before the field existed keep their names
    fp32, bf16 = (make_run_config("smoke", device="cpu", train={"precision": p}) for p in ("fp32", "bf16"))
    assert fp32.config_hash != bf16.config_hash and bf16.train.to_dict()["precision"] == "bf16"
    assert fp32.config_hash == make_run_config("smoke", device="cpu").config_hash
