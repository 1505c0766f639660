"""End to end on data that is not the paper's: two-lead MIT-BIH beats and scikit-learn's digits
through every driver: vanilla and U-shaped runs, formal activation DP, label DP over ten
classes, a stacked group and a two-process run."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch

from splitpriv.batched import run_training_batched
from splitpriv.channel import Kind, Transcript
from splitpriv.distributed import ClientData
from splitpriv.distributed.launch import launch_local
from splitpriv.run import TrainConfig, build_run_data, build_run_models, run_training
from splitpriv.trainer import SplitTrainer

DIGITS = TrainConfig(dataset="digits", model="cnn2d", epochs=3, seed=1, device="cpu")


def _result(out) -> dict:
    return json.loads((out / "result.json").read_text())


@pytest.mark.parametrize("topology", ["vanilla", "ushape"])
def test_digits_train_split_with_the_cut_on_the_wire(tmp_path, topology):
    result = run_training(dataclasses.replace(DIGITS, topology=topology), tmp_path, progress=False)
    # 3 epochs of 1,131 images: well above the 10 % of chance (84.3 % measured, both topologies)
    assert result["test_accuracy"] > 70 and result["n_test"] == 540
    assert result["dataset"]["classes"] == [str(c) for c in range(10)]
    ids, acts = Transcript.load(tmp_path / "transcript.npz").get(Kind.ACTIVATIONS, epoch=3)
    assert tuple(acts.shape) == (1131, 16, 4, 4) and len(set(ids.tolist())) == 1131


def test_formal_dp_and_label_dp_on_digits(tmp_path):
    dp = run_training(dataclasses.replace(
        DIGITS, defenses=["dp:mode=formal,mechanism=gaussian,target_epsilon=8"]), tmp_path / "dp",
        progress=False)
    claim = dp["defenses"][0]
    assert claim["formal_guarantee"] and claim["epsilon"] == pytest.approx(8, rel=1e-3)
    # the noise costs accuracy against the undefended 84 %
    assert dp["test_accuracy"] < 70
    label = run_training(dataclasses.replace(DIGITS, defenses=["labeldp:epsilon=1"]),
                         tmp_path / "labeldp", progress=False)
    details = label["defenses"][0]
    assert details["output_classes"] == 10
    # randomised response over 10 classes keeps e / (e + 9) of the labels = 0.232
    assert details["keep_probability"] == pytest.approx(0.2320, abs=1e-4)
    assert abs(details["kept_fraction"] - 0.232) < 0.04  # 1,131 draws: 3 standard errors
    labels = Transcript.load(tmp_path / "labeldp" / "transcript.npz").get(Kind.LABELS, epoch=3)[1]
    assert 0 <= int(labels.min()) and int(labels.max()) <= 9 and len(labels.unique()) == 10
    with pytest.raises(ValueError, match="MIT-BIH's prior over 5 classes, the run has 10"):
        run_training(dataclasses.replace(DIGITS, defenses=["labeldp:epsilon=1,prior=true"]),
                     tmp_path / "prior", progress=False)


def test_a_stacked_group_of_digits_runs_equals_each_alone(tmp_path):
    configs = [dataclasses.replace(DIGITS, seed=s, epochs=2, record_epochs="none") for s in (1, 2)]
    stacked = run_training_batched(configs, [tmp_path / "a", tmp_path / "b"], progress=False)
    assert [r.get("batched") for r in stacked] == [2, 2]
    alone = run_training(configs[1], tmp_path / "alone", progress=False)
    assert stacked[1]["test_accuracy"] == pytest.approx(alone["test_accuracy"], abs=0.2)
    assert stacked[1]["test_accuracy"] != stacked[0]["test_accuracy"]  # two seeds, two runs


def test_two_processes_train_digits_as_one(tmp_path):
    config = dataclasses.replace(DIGITS, epochs=1, topology="ushape")
    data = build_run_data(config)
    x, y = data.x_train[:256], data.y_train[:256]
    server, client = launch_local(
        config, [ClientData(x, y, x_test=data.x_test[:64], y_test=data.y_test[:64])],
        workdir=tmp_path, timeout_s=30, deadline_s=60)
    models = build_run_models(config, "ushape", torch.device("cpu"))
    SplitTrainer(models, x, y, seed=config.seed).train_epoch(1)
    for part, state in (("server", server["state"]["server"]),
                        ("client", client["state"]["client"])):
        mine = getattr(models, part).state_dict()
        assert max(float((state[k] - mine[k]).abs().max()) for k in mine) < 1e-5
    ids, acts = Transcript(chunks=server["transcript"]).get("activations")
    assert tuple(acts.shape[1:]) == (16, 4, 4)


def test_two_lead_beats_train_vanilla_and_ushaped(pool_dirs, tmp_path):
    mitdb, cache = pool_dirs
    base = TrainConfig(dataset="mitdb:leads=2", model="cnn1d", epochs=2, train_subset=3000,
                       test_subset=1000, mitdb_dir=str(mitdb), cache_dir=str(cache), device="cpu")
    for topology in ("vanilla", "ushape"):
        result = run_training(dataclasses.replace(base, topology=topology), tmp_path / topology,
                              progress=False)
        assert result["test_accuracy"] > 50  # five classes balanced: chance is 20 %
        assert result["dataset"]["leads"]["1"]["100"] == "V5"
        acts = Transcript.load(tmp_path / topology / "transcript.npz").get(
            Kind.ACTIVATIONS, epoch=2)[1]
        assert tuple(acts.shape[1:]) == (16, 32)
    with pytest.raises(ValueError, match="model 'paper' takes"):
        run_training(dataclasses.replace(base, model="paper"), tmp_path / "paper",
                     progress=False)
