"""The loop core on a toy step: schedule, batch order, EMA, history, divergence check, checkpoint."""

import pytest
import torch

from vibbench.training.checkpoints import load_checkpoint
from vibbench.training.config import TrainConfig
from vibbench.training.loop import (
    DIVERGENCE_CHECK_EVERY,
    Checkpointing,
    LoopState,
    TrainingDiverged,
    batch_order,
    ema_decay_at,
    ema_update,
    lr_at,
    order_generator,
    resume,
    run_epochs,
)

STEPS = 120  # per epoch: more than two divergence checks apart


def test_batch_order_is_a_permutation_without_the_partial_batch():
    batches = batch_order(105, 20, order_generator(0))
    assert len(batches) == 5
    flat = torch.cat(batches)
    assert flat.unique().numel() == 100 and flat.max() < 105


def test_schedule_and_ema_decay():
    cfg = TrainConfig()
    assert [lr_at(cfg, e) for e in (0, 1, 2, 3, 4)] == pytest.approx([1e-4, 1e-4, 0.97e-4, 0.97e-4, 0.97**2 * 1e-4])
    assert ema_decay_at(0, 0.999) == pytest.approx(0.1)
    assert ema_decay_at(10**6, 0.999) == 0.999


def test_ema_of_a_constant_approaches_it_geometrically():
    # from 0 toward a constant c: ema_n = c (1 - prod_t d_t)
    ema, param = [torch.zeros(3)], [torch.full((3,), 2.0)]
    for t in range(30):
        ema_update(ema, param, t, 0.9)
    remaining = torch.tensor([min(0.9, (1 + t) / (10 + t)) for t in range(30)], dtype=torch.float64).prod().item()
    assert ema[0].tolist() == pytest.approx([2.0 * (1 - remaining)] * 3, rel=1e-6)


class ToyTrainer:
    """Two members whose (loss, ce, kl) at global step t are (t, 2t, 3t), member `nan_member` NaN from step `nan_at` on."""

    def __init__(self, cfg, nan_member=None, nan_at=None):
        self.weight = torch.zeros(2, requires_grad=True)
        self.state = LoopState.start([self.weight], cfg, seed=0, members=2)
        self.calls = 0
        self.nan_member, self.nan_at = nan_member, nan_at

    def __call__(self, idx):
        t = float(self.calls)
        self.calls += 1
        terms = torch.tensor([[t, 2 * t, 3 * t]] * 2)
        if self.nan_at is not None and self.calls > self.nan_at:
            terms[self.nan_member, 0] = float("nan")
        return (self.weight * idx.float().mean()).sum(), terms

    def checkpoint(self, path):
        def restore(state, saved):
            with torch.no_grad():
                self.weight.copy_(saved["weight"])
            return saved["histories"]

        return Checkpointing(path, "h", lambda s: {"weight": self.weight.detach(), "histories": [r.history for r in s.results]}, restore)


def cfg_for(epochs):
    return TrainConfig(dataset="synthetic", epochs=epochs, batch_size=1, lr=0.01)


def test_history_records_each_epochs_mean_terms_and_lr(tmp_path):
    cfg = cfg_for(3)
    toy = ToyTrainer(cfg)
    run_epochs(toy.state, cfg, torch.zeros(STEPS, 1), toy, name="toy", labels=["a", "b"], checkpoint=toy.checkpoint(tmp_path / "c.pt"))
    assert toy.calls == 3 * STEPS and toy.state.epoch == 3
    for result in toy.state.results:
        assert [h["epoch"] for h in result.history] == [1, 2, 3]
        for e, h in enumerate(result.history):
            mean = e * STEPS + (STEPS - 1) / 2  # of t over the epoch's steps
            assert (h["loss"], h["ce"], h["kl"]) == pytest.approx((mean, 2 * mean, 3 * mean))
            assert h["lr"] == pytest.approx(0.01 * 0.97 ** (e // 2))
        assert result.seconds == pytest.approx(sum(h["seconds"] for h in result.history))
    saved = load_checkpoint(tmp_path / "c.pt", "h")
    assert saved["epoch"] == 3 and saved["histories"] == [r.history for r in toy.state.results]
    assert {"epoch", "optimizer", "ema", "order_rng", "seconds", "weight", "histories"} == set(saved)


def test_resume_continues_with_the_next_epoch_and_batch_order(tmp_path):
    cfg = cfg_for(2)
    straight = ToyTrainer(cfg)
    run_epochs(straight.state, cfg, torch.zeros(STEPS, 1), straight, name="toy", labels=["a", "b"])
    first = ToyTrainer(cfg_for(1))
    run_epochs(first.state, cfg_for(1), torch.zeros(STEPS, 1), first, name="toy", labels=["a", "b"], checkpoint=first.checkpoint(tmp_path / "c.pt"))
    second = ToyTrainer(cfg)
    second.calls = STEPS  # the toy's terms count global steps
    assert resume(second.state, second.checkpoint(tmp_path / "c.pt"), torch.device("cpu"))
    assert second.state.epoch == 1 and second.state.results[0].resumed_from_epoch == 1
    run_epochs(second.state, cfg, torch.zeros(STEPS, 1), second, name="toy", labels=["a", "b"])
    assert torch.equal(second.weight, straight.weight) and torch.equal(second.state.ema[0], straight.state.ema[0])
    assert second.state.order.get_state().equal(straight.state.order.get_state())
    assert [h["loss"] for h in second.state.results[1].history] == [h["loss"] for h in straight.state.results[1].history]


def test_no_checkpoint_means_a_fresh_start(tmp_path):
    toy = ToyTrainer(cfg_for(1))
    assert not resume(toy.state, None, torch.device("cpu"))
    assert not resume(toy.state, toy.checkpoint(tmp_path / "absent.pt"), torch.device("cpu"))
    assert toy.state.epoch == 0


@pytest.mark.parametrize("nan_at", [0, 60, STEPS + 60, STEPS - 1])
def test_divergence_names_the_member_epoch_and_step_within_one_check_interval(tmp_path, nan_at):
    cfg = cfg_for(3)
    toy = ToyTrainer(cfg, nan_member=1, nan_at=nan_at)
    epoch, step = divmod(nan_at, STEPS)
    with pytest.raises(TrainingDiverged, match=rf"training of b diverged: .* at epoch {epoch + 1}, step {step + 1} of {STEPS}\."):
        run_epochs(toy.state, cfg, torch.zeros(STEPS, 1), toy, name="toy", labels=["a", "b"], checkpoint=toy.checkpoint(tmp_path / "c.pt"))
    # the flag is read on the first step of each check interval and on the epoch's last step
    checked_at = min(-(-step // DIVERGENCE_CHECK_EVERY) * DIVERGENCE_CHECK_EVERY, STEPS - 1)
    assert toy.calls == epoch * STEPS + checked_at + 1
    if epoch == 0:
        assert not (tmp_path / "c.pt").exists()
    else:
        assert load_checkpoint(tmp_path / "c.pt", "h")["epoch"] == epoch  # the diverged epoch wrote nothing
