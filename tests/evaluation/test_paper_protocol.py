"""The paper protocol (evaluation/paper_protocol.py): the paper's image set, targets and single-pass gradients; the
honest protocol never above it beyond the noise of one judgement; the K = 2 embedding records."""

import math

import pytest
import torch

from vibbench import VibbenchError, create_model
from vibbench.evaluation import paper_protocol as pp
from vibbench.evaluation.settings import AttackSettings, EvalConfig, PaperProtocolSettings

N = 60

SETTINGS = AttackSettings(attacks=("fgsm", "pgd"), pgd_steps=5, eot_iter=2, cw_steps=15, cw_cs=(1.0, 10.0), judge_draws=3, batch_size=N)
PAPER = PaperProtocolSettings(images=N, fgs_eps=(0.1, 0.2), cw_images=20, cw_targets="next", embedding_images=30)


def measured(records):
    """The records without their timing rows (wall times differ from call to call)."""
    return [r for r in records if r["metric"] != "seconds"]


def by(records, metric, **match):
    return [r["value"] for r in records if r["metric"] == metric and all(r.get(k) == v for k, v in match.items())]


class Counting(torch.nn.Module):
    """Counts the model's forward passes and the number of z samples each one draws."""

    def __init__(self, model):
        super().__init__()
        self.inner = model
        self.calls: list[int] = []

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.inner, name)

    def forward_details(self, x, num_samples=None, eps=None):
        self.calls.append(num_samples or self.inner.num_samples)
        return self.inner.forward_details(x, num_samples=num_samples, eps=eps)

    def forward(self, x):
        return self.forward_details(x).prediction()


@pytest.fixture(scope="module")
def records(trained_vib, synthetic, one_thread):
    return measured(pp.paper_protocol_records(trained_vib, synthetic.test.images, synthetic.test.labels, SETTINGS, PAPER, seed=3))


def test_the_image_set_is_the_first_n_test_images_in_order(trained_mlp, synthetic):
    """The records depend on the first N test images only (not on a random draw of the split), and say n = N."""
    x, y = synthetic.test.images, synthetic.test.labels
    paper = PaperProtocolSettings(images=N, fgs_eps=(0.1,), cw_images=10, cw_targets="next")
    small = AttackSettings(attacks=("fgsm",), cw_steps=5, cw_cs=(1.0,), batch_size=N)
    ours = measured(pp.paper_protocol_records(trained_mlp, x, y, small, paper, seed=0))
    garbage = torch.cat([x[:N], torch.rand_like(x[N:])])  # every image after the first N replaced
    assert measured(pp.paper_protocol_records(trained_mlp, garbage, y, small, paper, seed=0)) == ours
    assert {r["n"] for r in ours if r["attack"] == "paper_fgs"} == {N}
    shuffled = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(0))
    assert measured(pp.paper_protocol_records(trained_mlp, x[shuffled], y[shuffled], small, paper, seed=0)) != ours
    first, labels, index = pp.first_images(x, y, N)
    assert torch.equal(first, x[:N]) and torch.equal(labels, y[:N]) and index.tolist() == list(range(N))


def test_cw_n_counts_images_not_image_target_pairs(trained_mlp, synthetic):
    """With every other class as a target the pairs are nine per image, but they share the image: n (the interval's
    sample size) is the number of images, and the targets per image are recorded beside it."""
    x, y = synthetic.test.images, synthetic.test.labels
    paper = PaperProtocolSettings(images=N, fgs_eps=(0.1,), cw_images=4, cw_targets="all")
    small = AttackSettings(attacks=("fgsm",), cw_steps=3, cw_cs=(1.0,), batch_size=N)
    records = pp.paper_protocol_records(trained_mlp, x, y, small, paper, seed=0)
    cw = [r for r in measured(records) if r["attack"] == "paper_cw"]
    assert cw and {r["n"] for r in cw} == {4}
    assert by(cw, "targets_per_image") == [9.0]
    timing = [(r["eval_mode"], r["attack"], r["path"]) for r in records if r["metric"] == "seconds"]
    assert timing == [("paper_protocol", "paper_fgs", "all"), ("paper_protocol", "paper_cw", "all")]


def test_targets_are_the_other_classes_or_the_next_one():
    y = torch.arange(10)
    every = torch.stack([pp.targets_for(y, k, 10) for k in pp.target_offsets("all", 10)])
    assert every.shape == (9, 10)
    for label in range(10):  # each image toward each class it is not, once
        assert sorted(every[:, label].tolist()) == [c for c in range(10) if c != label]
    nxt = pp.targets_for(y, *pp.target_offsets("next", 10), 10)
    assert nxt[0] == 1 and nxt[9] == 0 and (nxt != y).all()


def test_the_paper_attacks_differentiate_one_forward_pass_of_the_predictor(trained_vib, synthetic):
    """No EOT: FGS is one forward pass of the 12-sample predictor; every C&W step is one such pass. The honest
    protocol's EOT target draws eot_iter times as many samples in its pass."""
    x, y = synthetic.test.images[:20], synthetic.test.labels[:20]
    counted = Counting(trained_vib)
    s = AttackSettings(cw_steps=7, cw_cs=(1.0,), batch_size=20)
    pp.paper_fgs(counted, x, y, 0.1, s, seed=0)
    assert counted.calls == [trained_vib.eval_samples]
    counted.calls.clear()
    pp.cw_points(pp.AttackTarget(counted, "direct"), counted, x, y, 1, s, seed=0)
    assert 1 <= len(counted.calls) <= 7 and set(counted.calls) == {trained_vib.eval_samples}
    counted.calls.clear()
    pp.ExpectedPredictor(counted, 4)(x)
    assert counted.calls == [4 * trained_vib.eval_samples]


def test_the_paper_fgs_is_torchattacks_fgsm_on_the_model(trained_mlp, synthetic):
    import torchattacks

    x, y = synthetic.test.images[:N], synthetic.test.labels[:N]
    assert torch.equal(pp.paper_fgs(trained_mlp, x, y, 0.2, SETTINGS, seed=0), torchattacks.FGSM(trained_mlp, eps=0.2)(x, y))


def test_the_paper_cw_is_targeted(trained_mlp, synthetic):
    """Where the attack reports success the model predicts the target class, not merely a wrong one."""
    x, y = synthetic.test.images[:30], synthetic.test.labels[:30]
    points, found = pp.cw_points(pp.AttackTarget(trained_mlp, "direct"), trained_mlp, x, y, 3, SETTINGS, seed=0)
    final, any_found = pp.paper_cw_result(points, found, x)
    target = pp.targets_for(y, 3, 10)
    assert any_found.float().mean() > 0.5
    with torch.no_grad():
        predicted = trained_mlp(final).argmax(-1)
    assert torch.equal(predicted[any_found], target[any_found])
    sizes = torch.stack([torch.where(f, (p - x).flatten(1).norm(dim=1), math.inf) for p, f in zip(points, found)])
    assert torch.allclose((final - x).flatten(1).norm(dim=1)[any_found], sizes.min(0).values[any_found])  # the smallest over c


@pytest.mark.parametrize("model_name", ["trained_mlp", "trained_vib"])
def test_the_honest_number_is_never_above_the_paper_number_beyond_noise(model_name, request, synthetic, one_thread):
    model = request.getfixturevalue(model_name)
    recs = pp.paper_protocol_records(model, synthetic.test.images, synthetic.test.labels, SETTINGS, PAPER, seed=1)
    for eps in (0.1, 0.2):
        paper = by(recs, "adversarial_accuracy", path="paper", eps=eps)[0]
        honest = by(recs, "adversarial_accuracy", path="honest", eps=eps)[0]
        worst = by(recs, "adversarial_accuracy_all_draws", path="honest", eps=eps)[0]
        noise = 3 * math.sqrt(max(paper * (1 - paper), 1 / N) / N) + 1 / N
        assert worst <= honest <= paper + noise, (eps, paper, honest)
    n = by(recs, "targeted_success_rate", path="paper")
    paper, honest = by(recs, "targeted_success_rate", path="paper")[0], by(recs, "targeted_success_rate", path="honest")[0]
    any_draw = by(recs, "targeted_success_rate_any_draw", path="honest")[0]
    pairs = PAPER.cw_images
    assert n and honest >= paper - 3 * math.sqrt(max(paper * (1 - paper), 1 / pairs) / pairs) - 1 / pairs
    assert any_draw >= honest


def test_a_stochastic_model_gets_every_row_and_values_in_range(records):
    assert sorted(by(records, "adversarial_accuracy", path="paper", attack="paper_fgs")) == sorted(
        [r["value"] for r in records if r["path"] == "paper" and r["metric"] == "adversarial_accuracy"]
    )
    assert len(by(records, "adversarial_accuracy", path="paper")) == 3 and len(by(records, "adversarial_accuracy", path="honest")) == 3
    for metric in ("targeted_success_rate", "mean_success_distance"):
        assert len(by(records, metric, path="paper")) == 1 and len(by(records, metric, path="honest")) == 1
    assert all(0 <= r["value"] <= 1 for r in records if r["metric"] != "mean_success_distance")
    assert {(r["split"], r["eval_mode"]) for r in records} == {("test", "predictor")}
    # the clean rows at eps 0 are the clean accuracy of the paper's judgement and the judge's
    assert by(records, "adversarial_accuracy", path="paper", eps=0.0)[0] > 0.5


def test_embedding_records_only_for_a_two_dimensional_vib(trained_vib, trained_mlp, synthetic):
    x, y = synthetic.test.images, synthetic.test.labels
    assert pp.embedding_records(trained_vib, x, y, PAPER) == [] and pp.embedding_records(trained_mlp, x, y, PAPER) == []
    torch.manual_seed(0)
    model = create_model("mlp_vib", latent_dim=2).eval()
    recs = pp.embedding_records(model, x, y, PAPER, seed=0)
    assert len(recs) == 5 * PAPER.embedding_images + 1
    with torch.no_grad():
        out = model.forward_details(x[: PAPER.embedding_images])
    mu0 = torch.tensor(by(recs, "embedding_mu_0"))
    std1 = torch.tensor(by(recs, "embedding_std_1"))
    assert torch.allclose(mu0, out.mu[:, 0].float()) and torch.allclose(std1, out.std[:, 1].float())
    assert by(recs, "embedding_label") == [float(v) for v in y[: PAPER.embedding_images]]
    assert [r["bin"] for r in recs if r["metric"] == "embedding_label"] == list(range(PAPER.embedding_images))
    (err,) = by(recs, "error_one_sample")
    assert 0 <= err <= 1 and [r["n"] for r in recs if r["metric"] == "error_one_sample"] == [x.shape[0]]


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"cw_targets": "random"}, "unknown paper protocol cw_targets 'random'"),
        ({"images": 0}, "images must be a positive integer"),
        ({"fgs_eps": (1.5,)}, "outside [0, 1]"),
        ({"fgs_eps": ()}, "fgs_eps is empty"),
    ],
)
def test_bad_paper_protocol_settings_are_one_clear_error(kwargs, message):
    with pytest.raises(VibbenchError, match=message.replace("[", r"\[").replace("]", r"\]")):
        PaperProtocolSettings(**kwargs)


def test_profiles_and_sections():
    """quick and paper measure the paper protocol and train the K = 2 model; a config without the paper protocol keeps
    its dict (and so its hash) as before."""
    from vibbench.evaluation.sections import enabled_sections
    from vibbench.runs.config import EMBEDDING_MODEL, PROFILES, make_run_config

    assert "paper_protocol" not in EvalConfig().to_dict()
    assert "paper_protocol" not in enabled_sections(PROFILES["smoke"].eval)
    for profile in ("quick", "paper"):
        cfg = make_run_config(profile, device="cpu")
        assert {"paper_protocol", "embedding"} <= set(enabled_sections(cfg.eval))
        k2 = [m for m in cfg.models if m.label == EMBEDDING_MODEL]
        assert len(k2) == 1 and k2[0].build().latent_dim == 2 and cfg.to_dict()["eval"]["paper_protocol"]["images"] == 1000
