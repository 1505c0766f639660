"""studies/patient_privacy.py end to end on a tiny budget, and the patient-level columns."""

from __future__ import annotations

import csv
import math

import pytest

from splitpriv.defense import PrivacyClaim
from studies import common, patient_privacy


def test_privacy_columns_state_the_patient_level_consequence():
    beat = PrivacyClaim("dpsgd", formal=True, epsilon=0.01, delta=1e-5).to_dict()
    # 5 beats of record 208 at (0.01, 1e-5): epsilon 0.05, delta 5 e^0.04 1e-5
    beat["patient_level"] = {"epsilon": 0.05, "delta": 5 * math.exp(0.04) * 1e-5,
                             "vacuous": False, "largest_patient": 208, "beats": 5}
    got = common.privacy_columns({"defenses": [beat]})
    assert got["patient_epsilon"] == 0.05 and got["largest_patient"] == 208
    assert got["patient_delta"] == pytest.approx(5.2041e-5, rel=1e-4)
    beat["patient_level"].update(vacuous=True, delta=None)
    assert math.isinf(common.privacy_columns({"defenses": [beat]})["patient_delta"])
    patient = PrivacyClaim("dpsgd-patient", formal=True, epsilon=3.0, delta=1e-5,
                           per_patient=True).to_dict()
    got = common.privacy_columns({"defenses": [patient]})
    assert got["patient_epsilon"] == 3.0 and got["patient_delta"] == 1e-5


def test_patient_privacy_quick(pool_dirs, tmp_path):
    mitdb, cache = pool_dirs
    patient_privacy.main(["--quick", "--no-progress", "--jobs", "1", "--epochs", "1",
                          "--train-subset", "3000", "--test-subset", "500",
                          "--only", "none", "dpsgd-patient-e4", "--out", str(tmp_path),
                          "--mitdb-dir", str(mitdb), "--cache-dir", str(cache)])
    with open(tmp_path / "results.csv", newline="") as fh:
        rows = {r["setting"]: r for r in csv.DictReader(fh)}
    assert set(rows) == {"none", "dpsgd-patient-e4"}
    for r in rows.values():
        assert r["protocol"] == "records-holdout"
        for c in ("identity_top1", "identity_top5", "identity_top1_w10", "identity_chance",
                  "membership_auc", "membership_beat_auc", "membership_tpr_at_1pct_fpr"):
            assert math.isfinite(float(r[c])), (c, r[c])
        # identity among N enrolled patients: chance is 1/N
        assert float(r["identity_chance"]) == pytest.approx(1 / float(r["identity_patients"]))
    # the undefended client's activations name the patient far above chance
    assert float(rows["none"]["identity_top1"]) > 5 * float(rows["none"]["identity_chance"])
    dp = rows["dpsgd-patient-e4"]  # the patient-level claim is its own patient-level epsilon
    assert float(dp["patient_epsilon"]) == pytest.approx(float(dp["accounted_epsilon"]))
    assert float(dp["accounted_epsilon"]) == pytest.approx(4.0, abs=0.05)
    assert math.isnan(float(rows["none"]["patient_epsilon"]))
    summary = (tmp_path / "summary.md").read_text()
    assert "epsilon per patient" in summary and "dpsgd-patient-e4" in summary
    for name in ("identity", "membership"):
        assert (tmp_path / "figures" / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / "figures" / f"{name}.txt").read_text().strip()


def test_patient_privacy_refuses_an_unknown_setting():
    with pytest.raises(ValueError, match="unknown settings"):
        patient_privacy.settings(patient_privacy.Args(only=["nope"]))
