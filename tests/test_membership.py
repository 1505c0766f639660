"""Patient-level membership inference (attacks/membership.py) on a real records-holdout run."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attacks.base import AttackResult
from attacks.cli import run_attack_cli
from attacks.membership import hanley_mcneil_se, logit_confidence, per_patient, roc_report
from splitpriv.io import torch_threads
from splitpriv.run import TrainConfig, run_training


def test_logit_confidence_and_roc_against_hand_computed_cases():
    # p_y = 0.5 -> phi = log(0.5 / 0.5) = 0; logits (log 3, 0): p_0 = 3/4 -> phi = log 3
    phi = logit_confidence(torch.tensor([[0.0, 0.0], [math.log(3), 0.0]]), torch.tensor([0, 0]))
    assert phi == pytest.approx([0.0, math.log(3)])
    assert logit_confidence(torch.tensor([[0.75, 0.25]]), torch.tensor([0]),
                            probabilities=True) == pytest.approx([math.log(3)])
    # members score 0.35 and 0.8, non-members 0.1 and 0.4: of the 4 pairs, 3 are ordered
    # (0.35 < 0.4 is not): AUC 3/4. Above the highest non-member (0.4) lies 1 member of 2: TPR
    # 0.5 at FPR 0; with 2 non-members no FPR below 1/2 is estimable: 1% and 0.1% are None
    r = roc_report(np.array([0.1, 0.4, 0.35, 0.8]), np.array([0, 0, 1, 1]))
    assert r["auc"] == pytest.approx(0.75) and r["tpr_at_min_fpr"] == 0.5
    assert r["tpr_at_1pct_fpr"] is None and r["tpr_at_01pct_fpr"] is None
    assert r["min_fpr"] == 0.5
    ids, means = per_patient(np.array([1.0, 3.0, 5.0]), np.array([7, 7, 2]))
    assert ids.tolist() == [2, 7] and means.tolist() == [5.0, 2.0]
    # Hanley & McNeil at AUC 0.5, 3 and 3: Q1 = 0.5/1.5 = 1/3, Q2 = 2 * 0.25/1.5 = 1/3,
    # var = (0.25 + 2 (1/3 - 1/4) + 2 (1/3 - 1/4)) / 9 = (7/12) / 9 = 7/108
    assert hanley_mcneil_se(0.5, 3, 3) == pytest.approx(math.sqrt(7 / 108))


@pytest.fixture(scope="module")
def membership(pool_dirs, tmp_path_factory):
    mitdb, cache = pool_dirs
    out = tmp_path_factory.mktemp("membership") / "run"
    config = TrainConfig(protocol="records-holdout", epochs=1, device="cpu",
                         mitdb_dir=str(mitdb), cache_dir=str(cache))
    with torch_threads(1):
        run_training(config, out, progress=False)
    got = run_attack_cli("membership", str(out), None,
                         {"references": "2", "epochs_per_reference": "1",
                          "beats_per_patient": "30"}, echo=False)
    return AttackResult.load(got["json"])


def test_membership_reports_auc_and_tpr_per_beat_and_patient(membership):
    s = membership.summary
    # records-holdout: 22 of the 44 records train, 10% of their rows (whole records) go to
    # validation, never trained on: members + non-members = 44 patients, 30 beats each
    assert s["patients"] == 44 and s["beats"] == 44 * 30
    assert s["patient"]["members"] + s["patient"]["non_members"] == 44
    assert s["patient"]["tpr_at_1pct_fpr"] is None  # 1/22 or so is the smallest FPR shown
    assert s["beat"]["tpr_at_1pct_fpr"] is not None  # ~700 non-member beats: 1% is estimable
    assert 0 <= s["patient"]["auc"] <= 1 and s["cost"]["reference_models"] == 4


def test_membership_auc_is_half_when_in_and_out_patients_are_exchanged_at_random(membership):
    # The attack's per-patient scores against membership labels dealt at random (as many members
    # as the run has): the AUC is 0.5 up to sampling error. Hanley-McNeil's standard error at
    # 0.5 with ~20 patients on each side is ~0.09; the mean of 500 draws must be within
    # 3 of its standard errors of 0.5, and 95% of the draws within 1.96 SE (we ask for 90%).
    s = membership.scores
    patients, scores = per_patient(s["score"], s["patient"])
    member = np.array([bool(s["member"][s["patient"] == p][0]) for p in patients])
    rng = np.random.default_rng(0)
    aucs = np.array([roc_report(scores, rng.permutation(member))["auc"] for _ in range(500)])
    se = hanley_mcneil_se(0.5, int(member.sum()), int((~member).sum()))
    assert abs(aucs.mean() - 0.5) < 3 * aucs.std() / math.sqrt(500)
    assert np.mean(np.abs(aucs - 0.5) <= 1.96 * se) >= 0.9


def test_membership_refuses_a_run_that_holds_no_patient_out(tmp_path, pool_dirs):
    mitdb, cache = pool_dirs
    # paper-unique draws its training beats from every record: no patient is held out (a
    # training subset would hold out the records it happens to miss, which are then non-members)
    config = TrainConfig(protocol="paper-unique", epochs=1, test_subset=100, device="cpu",
                         mitdb_dir=str(mitdb), cache_dir=str(cache))
    with torch_threads(1):
        run_training(config, tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="holds no patient out"):
        run_attack_cli("membership", str(tmp_path / "run"), None, {}, echo=False)
