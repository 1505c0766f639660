"""The Python API on a user's own arrays and network: examples/own_data_and_model.py trains a
user-defined nn.Module split on in-memory arrays, attacks it and draws the trade-off."""

from __future__ import annotations

import runpy
from pathlib import Path

import numpy as np
import pytest
import torch

import splitpriv

REPO = Path(__file__).resolve().parents[1]


def test_the_example_trains_attacks_and_draws(tmp_path):
    example = runpy.run_path(str(REPO / "examples" / "own_data_and_model.py"))
    rows = example["main"](["--out", str(tmp_path), "--epochs", "3", "--epsilons", "none,4",
                            "--victims", "200", "-o", "decoder_epochs=10",
                            "-o", "reference_epochs=1"])
    plain, dp = rows
    assert plain["test_accuracy"] > 50  # ten classes: chance 10 %
    # the undefended cut gives the images away; formal DP at epsilon 4 per image hides them
    assert plain["reid_k10_advantage"] > 0.5 > dp["reid_k10_advantage"]
    assert (tmp_path / "tradeoff.png").stat().st_size > 10_000
    recon = np.load(tmp_path / "eps-none" / "attacks" / "strongest.npz")["reconstructions"]
    assert recon.shape == (200, 1, 8, 8)
    table = splitpriv.load_runs([tmp_path])
    assert sorted(table["dataset"]) == ["my-arrays", "my-arrays"]


def test_registered_arrays_are_checked_and_names_kept():
    with pytest.raises(splitpriv.datasets.DataError, match="key 'x' holds 1 NaN"):
        x = np.zeros((10, 1, 4), np.float32)
        x[3, 0, 1] = np.nan
        splitpriv.register_arrays("bad", x, np.arange(10) % 2)
    with pytest.raises(ValueError, match="built in"):
        splitpriv.register_arrays("digits", np.zeros((10, 1, 4)), np.arange(10) % 2)
    with pytest.raises(ValueError, match="built in"):
        splitpriv.register_model("paper", lambda shape, k: (torch.nn.Identity(),) * 2)
    # a notebook cell run twice replaces its own registration
    for _ in range(2):
        splitpriv.register_arrays("twice", np.ones((10, 1, 4), np.float32), np.arange(10) % 2)
