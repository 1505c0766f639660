"""The attacks on data that is not the paper's beats: the strongest inversion (its linkage and
priors) and a label attack on digits and on two-lead beats; reconstructions saved with the
input's shape; DTW refused where the input is not one 1D signal."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from attacks.base import AttackInputError
from attacks.cli import run_attack
from splitpriv.run import TrainConfig, run_training

DIGITS = TrainConfig(dataset="digits", model="cnn2d", epochs=3, seed=1, device="cpu")
QUICK = {"max_victims": "300", "decoder_epochs": "10", "reference_epochs": "1"}


def _advantage(result) -> float:
    return result.summary["reidentification"]["across"]["k10"]["advantage"]


@pytest.fixture(scope="module")
def digit_runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("digits")
    for name, extra in (("plain", {}), ("ushape", {"topology": "ushape"}),
                        ("dp", {"defenses": ["dp:mode=formal,mechanism=gaussian,"
                                             "target_epsilon=8"]})):
        run_training(dataclasses.replace(DIGITS, **extra), root / name, progress=False)
    return root


def test_strongest_inversion_of_digits(digit_runs):
    plain, path = run_attack("strongest", digit_runs / "plain", "train:0.2", QUICK)
    recon = np.load(path.with_suffix(".npz"))["reconstructions"]
    assert recon.shape == (300, 1, 8, 8)  # the input's shape
    # 16 x 4 x 4 activations of an undefended client give its images away: among 11 same-class
    # candidates the reconstruction picks its own far more often than the priors do
    adv = _advantage(plain)
    priors = plain.summary["baselines"]
    assert adv > 0.5 and adv > priors["class_mean"]["linkage"]["k10"]["advantage"] + 0.4
    defended, _ = run_attack("strongest", digit_runs / "dp", "train:0.2", QUICK)
    assert _advantage(defended) < adv  # formal DP at epsilon 8 per image costs the attacker
    with pytest.raises(AttackInputError, match=r"inputs are \(1, 8, 8\)"):
        run_attack("dtw", digit_runs / "plain", None, {"max_victims": "50"})


def test_label_attack_over_ten_classes(digit_runs):
    result, _ = run_attack("label-strongest", digit_runs / "ushape", "train:0.2",
                           {"max_victims": "300"})
    # U-shaped, labels stay on the client; the output gradients give them away anyway
    assert result.summary["chance_accuracy"] < 0.15 and result.summary["accuracy"] > 0.5
    assert len(result.scores["class_scores"][0]) == 10


def test_strongest_inversion_of_two_lead_beats(pool_dirs, tmp_path):
    mitdb, cache = pool_dirs
    config = TrainConfig(dataset="mitdb:leads=2", model="cnn1d", epochs=2, train_subset=2000,
                         test_subset=500, mitdb_dir=str(mitdb), cache_dir=str(cache),
                         device="cpu")
    run_training(config, tmp_path, progress=False)
    result, path = run_attack("strongest", tmp_path, "train:0.2", QUICK)
    assert np.load(path.with_suffix(".npz"))["reconstructions"].shape == (300, 2, 128)
    assert _advantage(result) > 0.3
