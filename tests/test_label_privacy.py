"""Label defenses (randomised response, max-norm, Marvell), model completion and the strongest
label attack, on real MIT-BIH beats where data is needed."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score

from attacks.base import AuxData, GroundTruth, Knowledge
from attacks.labels import hanley_mcneil, label_scores
from attacks.registry import build_attack
from defenses import build_defense
from defenses.labeldp import keep_probability, randomised_response, rr_top_k
from defenses.marvell import tv_for_auc
from defenses.maxnorm import max_norm_noise_std
from splitpriv.channel import InProcessChannel, Kind, RecordPolicy, Transcript
from splitpriv.io import torch_threads
from splitpriv.models import ModelConfig, build_models
from splitpriv.trainer import SplitTrainer


def _keep_rate(eps: float, n: int = 40_000) -> float:
    y = torch.randint(0, 5, (n,), generator=torch.Generator().manual_seed(1))
    out = randomised_response(y, eps, generator=torch.Generator().manual_seed(2))
    return float((out == y).float().mean())


@pytest.mark.parametrize("eps", [0.0, 0.5, 1.0, 2.0, 8.0])
def test_randomised_response_keeps_with_e_eps_over_e_eps_plus_k_minus_1(eps):
    p = math.exp(eps) / (math.exp(eps) + 4)
    assert keep_probability(eps, 5) == pytest.approx(p)
    sd = math.sqrt(p * (1 - p) / 40_000)
    assert abs(_keep_rate(eps) - p) < 5 * sd


def test_randomised_response_uniform_at_zero_identity_as_eps_grows():
    y = torch.full((20_000,), 3)
    out = randomised_response(y, 0.0, generator=torch.Generator().manual_seed(0))
    freq = np.bincount(out.numpy(), minlength=5) / len(out)
    np.testing.assert_allclose(freq, 0.2, atol=0.015)  # uniform over all 5 classes
    big = randomised_response(y, 40.0, generator=torch.Generator().manual_seed(0))
    assert torch.equal(big, y)
    # flips are uniform over the other classes
    mid = randomised_response(y, 1.0, generator=torch.Generator().manual_seed(0))
    flips = np.bincount(mid[mid != 3].numpy(), minlength=5)[[0, 1, 2, 4]]
    assert flips.min() / flips.max() > 0.9


def test_rr_with_prior_outputs_only_the_top_k_classes():
    prior = np.array([0.4, 0.3, 0.2, 0.05, 0.05])
    k = rr_top_k(prior, 0.5)
    assert 1 <= k < 5
    y = torch.randint(0, 5, (5000,), generator=torch.Generator().manual_seed(0))
    out = randomised_response(y, 0.5, prior=prior, generator=torch.Generator().manual_seed(1))
    assert set(out.unique().tolist()) <= set(np.argsort(-prior)[:k].tolist())
    assert rr_top_k(prior, 30.0) == 5  # a large epsilon keeps every class


def test_labeldp_claim_and_one_draw_per_beat(take_beats):
    x, y, _, _ = take_beats(300)
    d = build_defense("labeldp:epsilon=1,seed=4")
    claim = d.report()
    assert claim.formal and claim.epsilon == 1.0 and claim.privacy_unit == "one beat's label"
    with pytest.raises(ValueError, match="epsilon"):
        build_defense("labeldp:epsilon=nan")
    transcript = Transcript(policy=RecordPolicy(phases=None, kinds=frozenset({Kind.LABELS})))
    trainer = SplitTrainer(build_models(ModelConfig(), seed=0), x, y, seed=0,
                           channel=InProcessChannel(transcript), defenses=[d])
    with torch_threads(1):
        trainer.train_epoch(1)
        trainer.train_epoch(2)
    i1, l1 = transcript.get(Kind.LABELS, epoch=1)
    i2, l2 = transcript.get(Kind.LABELS, epoch=2)
    o1, o2 = torch.argsort(i1), torch.argsort(i2)
    assert torch.equal(l1[o1], l2[o2])  # the same noisy label in every epoch: one release
    kept = float((l1[o1] == y).float().mean())
    assert abs(kept - keep_probability(1.0, 5)) < 0.1 and d.report().details["kept_fraction"]


def test_maxnorm_brings_every_expected_squared_norm_to_the_batch_max():
    # batch of 2 in D = 2: g1 = (3, 4), ||g1||^2 = 25; g2 = (1, 0), ||g2||^2 = 1.
    # sigma_1^2 = (25 - 25) / 2 = 0; sigma_2^2 = (25 - 1) / 2 = 12, so that
    # E||g2 + n||^2 = 1 + 2 * 12 = 25.
    g = torch.tensor([[3.0, 4.0], [1.0, 0.0]], dtype=torch.float64)
    np.testing.assert_allclose(max_norm_noise_std(g).numpy(), [0.0, math.sqrt(12)])
    d = build_defense("maxnorm:seed=0")
    assert d.topology == "ushape"
    reps = torch.stack([d.transform_gradient(g, kind=Kind.OUTPUT_GRAD) for _ in range(20_000)])
    assert torch.equal(reps[:, 0], g[0].expand(20_000, 2))  # the largest gets no noise
    assert float((reps[:, 1] ** 2).sum(1).mean()) == pytest.approx(25.0, rel=0.03)
    noise = reps[:, 1] - g[1]
    assert float(noise.mean(0).abs().max()) < 0.1 and float(noise.var(0).mean()) == \
        pytest.approx(12.0, rel=0.03)
    assert torch.equal(d.transform_gradient(g, kind=Kind.ACT_GRAD), g)  # cut gradient untouched


def test_marvell_brings_the_norm_attack_auc_under_its_bound():
    # binary toy task (Li et al.'s setting): logistic gradients g = (p - y) w / B plus a little
    # spread, 10% positives, whose larger norms give the norm attack away
    gen = torch.Generator().manual_seed(0)
    n, d = 4096, 32
    w = torch.randn(d, generator=gen)
    y = (torch.rand(n, generator=gen) < 0.1).long()
    p = torch.sigmoid(torch.randn(n, generator=gen) - 2.0)
    g = (p - y)[:, None] * w[None, :] + 0.01 * torch.randn(n, d, generator=gen)
    norms = g.norm(dim=1).numpy()
    assert roc_auc_score(y.numpy(), norms) > 0.95
    bound = 0.6
    defense = build_defense(f"marvell:auc_bound={bound},seed=1")
    noisy = torch.cat([defense.transform_gradient(gb, kind=Kind.OUTPUT_GRAD, y=yb)
                       for gb, yb in zip(g.split(256), y.split(256), strict=True)])
    auc = roc_auc_score(y.numpy(), noisy.norm(dim=1).numpy())
    assert max(auc, 1 - auc) < bound
    assert tv_for_auc(0.5) == 0.0 and tv_for_auc(bound) == pytest.approx(1 - math.sqrt(0.8))
    with pytest.raises(ValueError, match="auc_bound"):
        build_defense("marvell:auc_bound=1.5")


def test_label_scores_report_intervals_and_the_prior():
    y = np.array([0] * 60 + [1] * 40)
    scores = np.eye(5)[y] + 0.0
    s = label_scores(y, scores)
    assert s["accuracy"] == 1.0 and s["accuracy_ci"][0] > 0.95
    assert s["prior_majority_accuracy"] == 0.6
    assert s["prior_frequency_accuracy"] == pytest.approx(0.6**2 + 0.4**2)
    lo, hi = hanley_mcneil(0.8, 40, 60)
    assert lo < 0.8 < hi and hi - lo < 0.2


@pytest.fixture(scope="module")
def ushape_run(take_beats):
    x, y, _, _ = take_beats(1500)
    transcript = Transcript(policy=RecordPolicy(
        phases=None, kinds=frozenset({Kind.SERVER_OUTPUT, Kind.OUTPUT_GRAD})))
    trainer = SplitTrainer(build_models(ModelConfig(), ushape=True, seed=0), x, y, seed=0,
                           channel=InProcessChannel(transcript))
    with torch_threads(1):
        for epoch in (1, 2, 3):
            trainer.train_epoch(epoch)
    ids = torch.arange(0, 1500, 10)  # 150 labelled aux rows
    aux = AuxData(x=x[ids], y=y[ids], ids=ids, source="train: every tenth row")
    return transcript, Knowledge(aux=aux), GroundTruth(x, y)


def test_model_completion_beats_the_prior_on_an_undefended_ushape(ushape_run):
    transcript, knowledge, truth = ushape_run
    s = build_attack("label-completion")(transcript, knowledge, truth).summary
    assert s["topology"] == "ushape" and s["n"] == 1350 and s["features"] == "server_output"
    assert s["accuracy"] > s["prior_majority_accuracy"] + 0.4
    assert s["accuracy_ci"][0] > s["prior_frequency_accuracy"] + 0.4
    assert s["mean_auc_ci"][0] > 0.85


def test_strongest_label_attack_is_chosen_on_held_out_aux_rows(ushape_run):
    transcript, knowledge, truth = ushape_run
    r = build_attack("label-strongest", {"candidates": "label-norm,label-completion"})(
        transcript, knowledge, truth)
    s = r.summary
    assert s["chosen"] in ("label-norm", "label-completion")
    assert set(s["selection"]) == {"label-norm", "label-completion"}
    best = max(s["selection"], key=lambda k: s["selection"][k]["heldout_accuracy"])
    assert s["chosen"] == best and s["n"] == 1350
    cols = type(build_attack("label-strongest")).columns(s)
    assert cols["strongest_label_attack"] == s["chosen"]
    assert cols["label_attack_accuracy"] == pytest.approx(100 * s["accuracy"])


def test_labeldp_prior_from_the_training_labels():
    """prior_source=train: RR-with-prior over the training labels' class frequencies (a
    dataset without MIT-BIH's public prior). Labels 6 x 0, 3 x 1, 1 x 2: prior (.6, .3, .1);
    at epsilon 0.5 RRWithPrior's k maximises (top-k mass) e^eps / (e^eps + k - 1): k = 1 gives
    .600, k = 2 .9 * 1.649 / 2.649 = .560, k = 3 1.649 / 3.649 = .452, so k = 1 and every
    label becomes class 0 (a uniform prior would give k = 3)."""
    from types import SimpleNamespace

    y = torch.tensor([0] * 6 + [1] * 3 + [2])
    d = build_defense("labeldp:epsilon=0.5,prior=true,prior_source=train,seed=1")
    d.provide_classes(3)
    d.attach(SimpleNamespace(x=torch.zeros(10, 1, 8), y=y, defenses=[d], ushape=False))
    np.testing.assert_allclose(d.prior(), [0.6, 0.3, 0.1])
    assert rr_top_k(d.prior(), 0.5) == 1 and rr_top_k(np.full(3, 1 / 3), 0.5) == 3
    assert d.transform_labels(y, ids=torch.arange(10)).tolist() == [0] * 10
    claim = d.report()
    assert claim.details["output_classes"] == 1
    assert any("training labels' class frequencies" in c for c in claim.conditions)
