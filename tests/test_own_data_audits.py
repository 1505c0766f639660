"""Membership inference and the privacy audit on data that is not the paper's beats: digits
(cnn2d, (1, 8, 8) images) and two-lead beats (cnn1d, (2, 128)). The bounds take the input's size
and shape and the data's class sizes; membership plays over groups or samples."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from attacks.audit import audit_run, client_release_map, dfil
from attacks.audit_one_run import canary_beats
from attacks.base import AttackInputError, AttackResult
from attacks.cli import run_attack, run_attack_cli
from attacks.membership import logit_confidence
from attacks.runs import SHARED, run_defenses
from splitpriv.io import torch_threads
from splitpriv.run import TrainConfig, build_run_models, run_training

#: formal Gaussian DP at noise multiplier 1: mu = 2C / (1 * 2C) = 1 per release
FORMAL = "dp:mode=formal,mechanism=gaussian,noise_multiplier=1,clip=1"
DIGITS = TrainConfig(dataset="digits", model="cnn2d", epochs=1, seed=1, device="cpu",
                     threads=1)
#: the strongest attack cut to what the audit reads (its re-identification), fast
QUICK = {"max_victims": "300", "candidates": "ridge", "extra": "", "priors": "false",
         "reference_epochs": "1", "threads": "1"}


@pytest.fixture(scope="module")
def digit_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits-audit")
    with torch_threads(1):
        for name, defenses in (("plain", []), ("dp", [FORMAL])):
            run_training(dataclasses.replace(DIGITS, defenses=defenses), root / name,
                         progress=False)
    return root


@pytest.fixture(scope="module")
def two_lead_run(pool_dirs, tmp_path_factory):
    """Two-lead beats, records-holdout (patients held out), under formal DP."""
    mitdb, cache = pool_dirs
    path = tmp_path_factory.mktemp("leads2-audit") / "dp"
    config = TrainConfig(dataset="mitdb:leads=2", model="cnn1d", protocol="records-holdout",
                         epochs=1, train_subset=1500, test_subset=600, defenses=[FORMAL],
                         mitdb_dir=str(mitdb), cache_dir=str(cache), device="cpu", threads=1)
    with torch_threads(1):
        run_training(config, path, progress=False)
    return path


def _tr_jtj(run, x: torch.Tensor) -> torch.Tensor:
    """Tr(J^T J) of the run's client and clip at each input x (n, C, *spatial), J taken over the
    input's own shape through the architecture as built (no attack-side reshaping)."""
    models = build_run_models(run.config, "vanilla", torch.device("cpu"))
    client = models.client.double().eval()
    client.load_state_dict(run.weights["client"])
    defenses = run_defenses(run)

    def release(xi: torch.Tensor) -> torch.Tensor:
        a = client(xi[None])
        for d in defenses:
            a = d.release_map(a)
        return a

    return torch.stack([(torch.autograd.functional.jacobian(release, xi.double()) ** 2).sum()
                        for xi in x])


def _check_audit(path, input_shape: tuple[int, ...]) -> dict:
    """The audit of a formal-DP run (after a quick strongest attack): the bounds of mu = 1 per
    release, and dFIL over the input's d values."""
    run_attack("strongest", path, "own:0.2", QUICK)
    doc = audit_run(path, victims=300)["audit"]
    assert doc["release_claim"]["mu_per_release"] == pytest.approx(1.0)
    # one test release at mu = 1 among m = 11: Phi(Phi^-1(1/11) + 1) = Phi(-1.335 + 1) = .369
    test = doc["test_time"]
    assert test["rero_bound_k10"]["bound"] == pytest.approx(0.369, abs=1e-3)
    assert not doc["violation"]
    for game in (test, test["canaries"]):
        for k in ("k10", "k100"):
            assert game["success"][k] <= game[f"rero_bound_{k}"]["bound"]
    # training releases: the bound of the releases the winner read, R: Phi(-1.335 + sqrt(R))
    train = doc["rero_bound_k10"]
    assert train["bound"] == pytest.approx(norm.cdf(-1.3352 + math.sqrt(train["releases"])),
                                           abs=2e-3)
    # dFIL = R Tr(J^T J) / (sigma^2 d), d the input's size, J over the input's shape: the
    # audit's (on the attacks' flattened view) is the one computed on the images/beats as built
    run = SHARED.load(path)
    x = run.x["train"][:4]  # (4, 1, d)
    assert x.shape[-1] == math.prod(input_shape)
    sigma = doc["dfil_mse_bound"]["sigma"]
    got = dfil(client_release_map(run), x, sigma)
    own = _tr_jtj(run, x.reshape(4, *input_shape)) / (sigma**2 * math.prod(input_shape))
    assert torch.allclose(got, own, rtol=1e-6)
    assert doc["dfil_mse_bound"]["bound_median"] > 0 and doc["dfil_mse_bound"]["n"] > 0
    return doc


def test_audit_of_digits(digit_runs):
    doc = _check_audit(digit_runs / "dp", (1, 8, 8))
    # the test-time k = 100 game: digits' 540 test images hold about 54 of each class, so a
    # victim has at most 53 same-class candidates: m is rounded down to what every victim had
    k100 = doc["test_time"]["epsilon_lower"]["k100"]
    assert not k100["every_victim_has_k"] and 11 < k100["m"] <= 54
    # undefended, the nearest noiseless release names every test image: the largest epsilon
    # 300 victims can show, ln(10 .05^(1/300) / (1 - .05^(1/300))) = ln(10 .99006 / .00994) = 6.90
    plain = audit_run(digit_runs / "plain", victims=300)["audit"]
    low = plain["test_time"]["epsilon_lower"]["k10"]
    assert low["success"] == 1.0 and low["epsilon"] == pytest.approx(6.904, abs=1e-3)
    assert plain["release_claim"] is None and "rero_bound_k10" not in plain["test_time"]


def test_audit_of_two_lead_beats(two_lead_run):
    _check_audit(two_lead_run, (2, 128))


def test_membership_of_two_lead_patients(two_lead_run):
    got = run_attack_cli("membership", str(two_lead_run), None,
                         {"references": "2", "epochs_per_reference": "1",
                          "beats_per_patient": "20"}, echo=False)
    s = AttackResult.load(got["json"]).summary
    # records-holdout: the training records are members, the test and validation ones not
    assert s["unit"] == "group" and s["patient"]["members"] >= 2
    assert s["patient"]["non_members"] >= 2
    assert s["patients"] == s["patient"]["members"] + s["patient"]["non_members"]
    assert s["beats"] <= 20 * s["patients"] and 0 <= s["patient"]["auc"] <= 1


def test_membership_of_digits_per_sample(digit_runs):
    # digits' 30 pseudo-subjects all train: no group is held out, refused in one line
    with pytest.raises(AttackInputError, match="holds no patient out") as err:
        run_attack("membership", digit_runs / "plain", None, {"references": "1"})
    assert "unit=sample" in str(err.value) and "\n" not in str(err.value)
    result, _ = run_attack("membership", digit_runs / "plain", None,
                           {"unit": "sample", "references": "2", "epochs_per_reference": "1"})
    s = result.summary
    # every image its own unit: 1797 = 1131 training (70 % of them, less 10 % validation,
    # sklearn's stratified split rounds them up) + 666 held out (540 test + 126 validation)
    assert (s["patient"]["members"], s["patient"]["non_members"]) == (1131, 666)
    assert s["beats"] == s["patients"] == 1797
    # phi is the trained model's on the images as built, (1, 8, 8), its cut (16, 4, 4)
    run = SHARED.load(digit_runs / "plain")
    models = build_run_models(run.config, "vanilla", torch.device("cpu"))
    for name, net in models.modules().items():
        net.load_state_dict(run.weights[name])
        net.eval()
    x, y = run.x["test"][:50], run.y["test"][:50]
    with torch.no_grad():
        phi = logit_confidence(models.server(models.client(x.reshape(50, 1, 8, 8))), y)
    test_ids = run.pool_idx["test"][:50]
    scored = {int(p): i for i, p in enumerate(result.scores["patient"])}
    np.testing.assert_allclose(result.scores["phi"][[scored[int(p)] for p in test_ids]], phi,
                               rtol=1e-5)


def test_one_run_audit_canaries_take_the_input_s_shape():
    x, y = canary_beats(np.random.default_rng(0), 6, 10, torch.device("cpu"), (1, 8, 8))
    assert x.shape == (6, 1, 8, 8) and 0 <= int(y.min()) and int(y.max()) < 10
    # std 5 Gaussian inputs: 384 values, their sample std within 10 % of 5
    assert abs(float(x.std()) - 5.0) < 0.5
