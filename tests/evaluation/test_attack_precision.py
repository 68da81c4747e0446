"""The attacks' arithmetic (AttackSettings.precision): bf16 autocast for the attacker where bf16 is native, the judge
always in fp32, bf16 refused where it is emulated."""

import pytest
import torch
import torch.nn.functional as F

from vibbench import VibbenchError
from vibbench.core import precision
from vibbench.evaluation.attacks.adversarial import attack_in_chunks
from vibbench.evaluation.judge import Judge


@pytest.fixture
def native_bf16(monkeypatch):
    """Simulates a CPU that has (True) or lacks (False) native bf16."""

    def set_native(native: bool):
        monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: native)

    return set_native


class Recorder:
    """An attack that records the arithmetic it ran under and asks `done` (the early stop) about every image."""

    def __init__(self):
        self.done = None
        self.seen = []

    def __call__(self, images, labels):
        w = torch.ones(3, images.flatten(1).shape[1])
        self.seen.append((torch.is_autocast_enabled("cpu"), F.linear(images.flatten(1), w).dtype))
        if self.done is not None:
            self.stopped = self.done(images, torch.arange(images.shape[0]))
        return images + 0.0


@pytest.mark.parametrize(
    "setting, native, autocast_on",
    [("fp32", True, False), ("bf16", True, True), ("auto", True, True), ("auto", False, False), ("fp32", False, False)],
)
def test_the_attack_runs_in_the_resolved_precision(native_bf16, setting, native, autocast_on):
    native_bf16(native)
    attack = Recorder()
    x, y = torch.rand(10, 1, 28, 28), torch.zeros(10, dtype=torch.long)
    out = attack_in_chunks(attack, x, y, batch_size=4, seed=0, precision=setting)
    assert torch.equal(out, x)
    dtype = torch.bfloat16 if autocast_on else torch.float32
    assert attack.seen == [(autocast_on, dtype)] * 3  # every chunk
    assert not torch.is_autocast_enabled("cpu")  # and nothing after it


def test_bf16_attacks_are_refused_where_bf16_is_emulated(native_bf16):
    native_bf16(False)
    with pytest.raises(VibbenchError, match=r"attack precision bf16 refused: this CPU has no native bf16.*use auto or fp32"):
        attack_in_chunks(Recorder(), torch.rand(2, 1, 28, 28), torch.zeros(2, dtype=torch.long), 2, 0, precision="bf16")
    with pytest.raises(VibbenchError, match="unknown attack precision 'fp16'"):
        precision.attack_precision("cpu", "fp16")


def test_a_run_with_bf16_attacks_is_refused_before_it_trains_anything(native_bf16, tmp_path):
    from vibbench.runs.config import make_run_config
    from vibbench.runs.runner import run

    native_bf16(False)
    cfg = make_run_config("smoke", dataset="synthetic", device="cpu", attack_precision="bf16")
    with pytest.raises(VibbenchError, match="attack precision bf16 refused"):
        run(cfg, out_dir=tmp_path / "out", cache_dir=tmp_path / "cache")
    assert not any((tmp_path / "cache").glob("jobs/*"))


def test_a_unit_refuses_emulated_bf16_on_the_machine_it_runs_on(native_bf16, tmp_path):
    """Under Ray the runner's machine is not the one that trains and attacks: each unit checks its own before it
    trains (a node without native bf16 would otherwise fail only at evaluation, after training)."""
    from vibbench.runs.config import make_run_config
    from vibbench.runs.jobs import run_unit

    cfg = make_run_config("smoke", dataset="synthetic", device="cpu", attack_precision="bf16")
    native_bf16(False)
    with pytest.raises(VibbenchError, match="attack precision bf16 refused"):
        run_unit(cfg, [(cfg.models[0], 0)], tmp_path / "cache", None, "single")
    assert not any((tmp_path / "cache").glob("jobs/*"))


def test_the_judge_computes_in_fp32_inside_a_bf16_attack(trained_vib, trained_mlp, synthetic, native_bf16):
    """The judge's verdicts under an enclosing bf16 autocast, also when asked by the early stop of an attack that
    runs in bf16, are bit for bit the fp32 ones."""
    native_bf16(True)
    x, y = synthetic.test.images[:200], synthetic.test.labels[:200]
    for model in (trained_vib, trained_mlp):
        judge = Judge(model, y, torch.arange(200), draws=3, seed=5, batch_size=64)
        fp32 = judge.correct(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            assert torch.equal(judge.correct(x), fp32)
        attack = Recorder()
        attack_in_chunks(attack, x, y, 200, 0, done=lambda adv, pos: judge.correct(adv, pos).all(0), precision="bf16")
        assert attack.seen == [(True, torch.bfloat16)] and torch.equal(attack.stopped, fp32.all(0))


def test_score_based_searches_compute_in_fp32_whatever_the_setting():
    from vibbench.evaluation.attacks.adversarial import search_precision
    from vibbench.evaluation.attacks.registry import ATTACKS

    for name, spec in ATTACKS.items():
        assert search_precision(name, "bf16") == ("bf16" if spec.white_box else "fp32")
        assert search_precision(name, "fp32") == "fp32"
    assert search_precision("square", "auto") == "fp32" and search_precision("apgd-ce", "auto") == "auto"  # AutoAttack's parts


def test_the_harness_hands_each_attack_its_precision(native_bf16, trained_vib, synthetic, monkeypatch):
    """evaluate_robustness gives attack_in_chunks the setting for the gradient attacks and AutoAttack's APGD parts, fp32
    for Square (also as AutoAttack's part)."""
    import dataclasses

    from vibbench.evaluation.attacks import adversarial
    from vibbench.evaluation import robustness
    from vibbench.runs.config import PROFILES

    native_bf16(True)
    seen = []
    real = adversarial.attack_in_chunks

    def spy(attack, *args, precision="fp32", **kwargs):
        seen.append((type(attack).__name__, precision))
        return real(attack, *args, precision=precision, **kwargs)

    monkeypatch.setattr(adversarial, "attack_in_chunks", spy)
    monkeypatch.setattr(robustness, "attack_in_chunks", spy)
    settings = dataclasses.replace(PROFILES["smoke"].eval.attacks, precision="bf16", attacks=("pgd", "square", "autoattack"))
    x, y = synthetic.test.images[:20], synthetic.test.labels[:20]
    robustness.evaluate_robustness(trained_vib, x, y, settings)
    by_kind = {}
    for kind, precision in seen:
        by_kind.setdefault(kind, set()).add(precision)
    assert by_kind.pop("MarginStopSquare") == {"fp32"}
    assert by_kind and all(p == {"bf16"} for p in by_kind.values()), by_kind  # PGD, APGD (CE, DLR, T), FAB


def test_the_ensemble_as_one_attack_runs_square_in_fp32(native_bf16, trained_vib, synthetic, monkeypatch):
    """`adversarial_examples(..., "autoattack")` (the ensemble without the harness's judge) gives each part its own
    arithmetic as the harness does: the APGD part under the bf16 setting, its Square part in fp32."""
    import dataclasses

    from vibbench.evaluation.attacks import autoattack
    from vibbench.evaluation.attacks.adversarial import adversarial_examples
    from vibbench.runs.config import PROFILES

    native_bf16(True)
    recorders = {"apgd-ce": Recorder(), "square": Recorder()}
    monkeypatch.setattr(autoattack, "parts", lambda r: list(recorders.items()))
    settings = dataclasses.replace(PROFILES["smoke"].eval.attacks, precision="bf16")
    x, y = synthetic.test.images[:20], synthetic.test.labels[:20]
    adversarial_examples(trained_vib, x, y, "autoattack", 0.1, "mean", settings)
    assert recorders["apgd-ce"].seen == [(True, torch.bfloat16)]
    assert recorders["square"].seen == [(False, torch.float32)]


@pytest.mark.parametrize("setting, on", [("bf16", True), ("fp32", False)])
def test_the_zero_gradient_check_sees_the_attacks_gradients(native_bf16, trained_vib, synthetic, monkeypatch, setting, on):
    """The check vouches for the gradient attacks' rows, so it takes its gradients in their arithmetic."""
    import dataclasses

    from vibbench.evaluation import robustness
    from vibbench.runs.config import PROFILES

    native_bf16(True)
    states = []
    real = robustness.input_gradients
    monkeypatch.setattr(robustness, "input_gradients", lambda *a: states.append(torch.is_autocast_enabled("cpu")) or real(*a))
    settings = dataclasses.replace(PROFILES["smoke"].eval.attacks, precision=setting, attacks=("fgsm",))
    robustness.evaluate_robustness(trained_vib, synthetic.test.images[:20], synthetic.test.labels[:20], settings)
    assert states == [on, on]  # the mean and EOT paths


def test_the_judge_turns_autocast_off_inside_the_model(trained_vib, synthetic, monkeypatch):
    x, y = synthetic.test.images[:10], synthetic.test.labels[:10]
    judge = Judge(trained_vib, y, torch.arange(10), draws=2, seed=0)
    states = []
    real = type(trained_vib).forward_details
    monkeypatch.setattr(type(trained_vib), "forward_details", lambda self, *a, **k: states.append(torch.is_autocast_enabled("cpu")) or real(self, *a, **k))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        judge.correct(x)
    assert states == [False]


def test_a_bf16_arithmetic_names_its_own_cache_entries_and_fp32_keeps_the_old_hashes(native_bf16):
    from vibbench.runs.config import make_run_config

    native_bf16(True)
    auto, fp32 = make_run_config("smoke", attack_precision="auto", device="cpu"), make_run_config("smoke", attack_precision="fp32", device="cpu")
    spec = auto.models[0]
    assert "precision" not in fp32.eval.attacks.to_dict() and fp32.config_hash == make_run_config("smoke", device="cpu").config_hash
    here = {s: auto.eval_hash(spec, 0, s) for s in ("robustness", "paper_protocol", "calibration")}
    native_bf16(False)  # another machine resolves auto to fp32: its robustness entries are other ones
    elsewhere = {s: auto.eval_hash(spec, 0, s) for s in here}
    assert here["robustness"] != elsewhere["robustness"] and here["calibration"] == elsewhere["calibration"]
    with pytest.raises(VibbenchError, match="unknown attack precision 'fp16'"):
        make_run_config("smoke", evaluate=False, attack_precision="fp16")
