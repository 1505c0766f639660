"""Patient-level DP-SGD (defenses/dpsgd_patient.py) on real beats and records."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from opacus.accountants import RDPAccountant

from defenses import build_defense
from splitpriv.channel import InProcessChannel, Kind, RecordPolicy, Transcript
from splitpriv.data import make_split
from splitpriv.io import read_json, torch_threads
from splitpriv.models import ModelConfig, build_models
from splitpriv.run import TrainConfig, run_training
from splitpriv.trainer import SplitTrainer

pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")


@pytest.fixture(scope="module")
def rows(pool):
    """64 training beats of the paper-unique split, their labels and patients (records)."""
    split = make_split(pool, "paper-unique", val_fraction=0.0, seed=2019)
    x = torch.as_tensor(split.x_train[:64]).float().reshape(-1, 1, 128)
    return x, torch.as_tensor(split.y_train[:64]).long(), np.asarray(split.record_train[:64])


def _one_step(rows, spec):
    """One client step under ``spec``: the client's gradient, the step's cut gradient (B, C, L),
    each row's sampled patient (-1: not sampled), the client before the step, the defense."""
    x, y, rec = rows
    models = build_models(ModelConfig(), seed=5)
    before = copy.deepcopy(models.client)
    defense = build_defense(spec)
    defense.provide_patients(rec)
    transcript = Transcript(policy=RecordPolicy(kinds=frozenset({Kind.ACT_GRAD})))
    trainer = SplitTrainer(models, x, y, seed=0, channel=InProcessChannel(transcript),
                           defenses=[defense])
    seen = {}
    observe = defense.observe_gradient

    def spy(g, *, ids):
        out = observe(g, ids=ids)
        seen["groups"] = defense.optimizer.groups.clone()
        return out

    defense.observe_gradient = spy
    trainer.train_step(torch.arange(16))
    _, g = transcript.get(Kind.ACT_GRAD, epoch=0)  # row i = (1/16) dl_i / da_i
    grads = [p.grad.clone() for p in models.client.parameters()]
    return grads, g, seen["groups"], before, defense


def _grads(net, x, g):
    net = copy.deepcopy(net)
    net(x).backward(g)
    return [p.grad for p in net.parameters()]


def test_zero_noise_equals_plain_training_on_the_sampled_patients(rows):
    x, _, rec = rows
    grads, g, groups, before, defense = _one_step(
        rows, "dpsgd-patient:noise_multiplier=0,max_grad_norm=1e9,batch_size=16,patient_rate=0.5")
    sampled = groups >= 0
    # 16 beats of 9 patients here, about half of them sampled: some rows in, some out
    assert 0 < int(sampled.sum()) < 16
    for r in np.unique(rec[:16]):  # a patient is sampled whole: all its rows share one group
        assert len(set(groups[torch.from_numpy(rec[:16] == r)].tolist())) == 1
    # plain training on the sampled patients' beats alone: the summed gradient of their losses
    # (16 * g_i is beat i's dl_i/da_i), divided by the expected patients per step
    # (round(0.5 * patients of the 64 rows))
    plain = _grads(before, x[:16][sampled], 16 * g[sampled])
    assert defense.expected_batch_size == round(0.5 * len(np.unique(rec)))
    for got, want in zip(grads, plain, strict=True):
        torch.testing.assert_close(got, want / defense.expected_batch_size, rtol=1e-4,
                                   atol=1e-8)


def test_each_patients_summed_gradient_is_clipped(rows):
    x, _, rec = rows
    c = 1e-3  # far below any patient's gradient norm: every patient's sum is scaled to c
    grads, g, groups, before, defense = _one_step(
        rows, f"dpsgd-patient:noise_multiplier=0,max_grad_norm={c},batch_size=16,patient_rate=0.5")
    want = None
    for k in range(int(groups.max()) + 1):
        mine = groups == k
        gp = _grads(before, x[:16][mine], 16 * g[mine])  # patient k's summed gradient
        norm = torch.sqrt(sum((t ** 2).sum() for t in gp))
        assert norm > c
        clipped = [t * c / (norm + 1e-6) for t in gp]  # Opacus's factor, C / (norm + 1e-6)
        want = clipped if want is None else [a + b for a, b in zip(want, clipped, strict=True)]
    for got, w in zip(grads, want, strict=True):
        torch.testing.assert_close(got, w / defense.expected_batch_size, rtol=1e-4, atol=1e-10)


def test_patient_level_accounting_and_claim(rows):
    x, y, rec = rows
    defense = build_defense("dpsgd-patient:noise_multiplier=1.1,batch_size=16,patient_rate=0.25")
    defense.provide_patients(rec)
    trainer = SplitTrainer(build_models(ModelConfig(), seed=0), x, y, seed=0, batch_size=16,
                           defenses=[defense])
    trainer.train_epoch(1)
    claim = defense.report()
    reference = RDPAccountant()
    for _ in range(4):  # 64 rows / 16 per batch: 4 steps, each sampling patients at 0.25
        reference.step(noise_multiplier=1.1, sample_rate=0.25)
    assert claim.epsilon == pytest.approx(reference.get_epsilon(1e-5))
    assert claim.per_patient and claim.privacy_unit.startswith("one patient")
    assert claim.details["patients"] == len(np.unique(rec))


def test_a_run_with_patient_level_dpsgd_claims_a_patients_guarantee(pool_dirs, tmp_path):
    mitdb, cache = pool_dirs
    config = TrainConfig(protocol="paper-unique", epochs=1, train_subset=300, test_subset=100,
                         defenses=["dpsgd-patient:noise_multiplier=1.0"], device="cpu",
                         mitdb_dir=str(mitdb), cache_dir=str(cache))
    with torch_threads(1):
        run_training(config, tmp_path / "run", progress=False)
    claim = read_json(tmp_path / "run" / "result.json")["defenses"][0]
    assert claim["per_patient"] and "patient_level" not in claim  # already a patient's
    assert claim["epsilon"] > 0


def test_patient_level_dpsgd_refuses_bad_input(rows):
    with pytest.raises(ValueError, match="patient_rate"):
        build_defense("dpsgd-patient:noise_multiplier=1,patient_rate=0")
    x, y, _ = rows
    trainer = SplitTrainer(build_models(ModelConfig(), seed=0), x, y, seed=0,
                           defenses=[build_defense("dpsgd-patient:noise_multiplier=1")])
    with pytest.raises(ValueError, match="patient of every training row"):
        trainer.train_step(torch.arange(8))  # a client to be queried attaches; training needs them
    wrong = build_defense("dpsgd-patient:noise_multiplier=1")
    wrong.provide_patients(np.arange(5))
    with pytest.raises(ValueError, match="5 patients given for 64 training rows"):
        SplitTrainer(build_models(ModelConfig(), seed=0), x, y, seed=0, defenses=[wrong])
    with pytest.raises(ValueError, match="unknown"):
        build_defense("dpsgd-patient:noise_multiplier=1").provide_patients(np.full(4, -1))
