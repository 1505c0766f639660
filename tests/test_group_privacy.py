"""The patient-level consequence of per-beat claims (splitpriv.defense.group_privacy)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from splitpriv.defense import PrivacyClaim, group_privacy, patient_level
from splitpriv.io import read_json, torch_threads
from splitpriv.run import TrainConfig, build_run_data, run_training


def test_group_privacy_against_hand_computed_cases():
    # k = 3 beats at (0.1, 1e-6) each: epsilon 3 * 0.1 = 0.3; delta 3 * e^(2 * 0.1) * 1e-6
    # = 3 * 1.221403 * 1e-6 = 3.664208e-6
    eps, delta = group_privacy(0.1, 1e-6, 3)
    assert eps == pytest.approx(0.3)
    assert delta == pytest.approx(3.664208e-6, rel=1e-6)
    # one beat is the claim itself
    assert group_privacy(2.0, 1e-5, 1) == pytest.approx((2.0, 1e-5))
    # the case: 2,000 beats at epsilon 1 bound the patient at epsilon 2,000, and the
    # delta 2000 * e^1999 * 1e-5 is far above 1: nothing is bounded (inf)
    eps, delta = group_privacy(1.0, 1e-5, 2000)
    assert eps == 2000 and math.isinf(delta)
    # pure DP stays pure: delta 0 for every group
    assert group_privacy(0.5, 0.0, 10) == (5.0, 0.0)
    with pytest.raises(ValueError, match="group size"):
        group_privacy(1.0, 1e-5, 0)


def test_patient_level_names_the_largest_patient():
    claim = PrivacyClaim("dpsgd", formal=True, epsilon=0.01, delta=1e-5)
    # record 208 holds most beats (5): epsilon 5 * 0.01 = 0.05, delta 5 e^0.04 1e-5 = 5.2041e-5
    out = patient_level(claim, {100: 3, 208: 5, 119: 2})
    assert out["largest_patient"] == 208 and out["beats"] == 5 and out["patients"] == 3
    assert out["epsilon"] == pytest.approx(0.05)
    assert out["delta"] == pytest.approx(5 * math.exp(0.04) * 1e-5)
    assert not out["vacuous"]
    assert patient_level(PrivacyClaim("nopeek"), {100: 3}) is None  # no formal claim
    per_patient = PrivacyClaim("dpsgd-patient", formal=True, epsilon=1.0, delta=1e-5,
                               per_patient=True)
    assert patient_level(per_patient, {100: 3}) is None  # already a patient's guarantee
    back = PrivacyClaim.from_dict(per_patient.to_dict())
    assert back.per_patient and back.details == {}


def test_every_formal_claim_of_a_run_states_its_patient_level_consequence(pool_dirs, tmp_path):
    mitdb, cache = pool_dirs
    config = TrainConfig(protocol="paper-unique", epochs=1, train_subset=300, test_subset=100,
                         defenses=["dpsgd:noise_multiplier=1.0"], device="cpu",
                         mitdb_dir=str(mitdb), cache_dir=str(cache))
    with torch_threads(1):
        run_training(config, tmp_path / "run", progress=False)
    claim = read_json(tmp_path / "run" / "result.json")["defenses"][0]
    records = build_run_data(config, "cpu").part("record", "train")
    recs, counts = np.unique(records, return_counts=True)
    k = int(counts.max())
    got = claim["patient_level"]
    assert got["beats"] == k and got["largest_patient"] == int(recs[counts.argmax()])
    assert got["epsilon"] == pytest.approx(k * claim["epsilon"])
    expected = k * math.exp((k - 1) * claim["epsilon"]) * claim["delta"]
    assert (got["delta"] is None) == (expected >= 1)
