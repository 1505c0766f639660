"""The split trainer on real MIT-BIH beats: equivalence with unsplit training, the transcript,
learning, run directories and resume."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from splitpriv.channel import InProcessChannel, Kind, RecordPolicy, Transcript
from splitpriv.cli import main as cli_main
from splitpriv.models import ModelConfig, build_models
from splitpriv.run import TrainConfig, run_training
from splitpriv.trainer import SplitTrainer, train_monolithic


@pytest.fixture(scope="module")
def beats(take_beats):
    """600 training beats of the paper-unique protocol, as tensors."""
    x, y, _, _ = take_beats(600)
    return x, y


def _max_diff(a: torch.nn.Module, b: torch.nn.Module) -> float:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    return max((sa[k] - sb[k]).abs().max().item() for k in sa)


@pytest.mark.parametrize("ushape", [False, True])
def test_split_training_equals_monolithic(beats, ushape):
    x, y = beats
    models = build_models(ModelConfig(depth=3), ushape=ushape, seed=7)
    unsplit = copy.deepcopy(models).monolithic()
    assert _max_diff(models.monolithic(), unsplit) == 0.0  # same initial weights
    trainer = SplitTrainer(models, x, y, seed=11)
    trainer.train_epoch(1)  # 19 steps of 32
    trainer.train_epoch(2)
    train_monolithic(unsplit, x, y, epochs=2, seed=11)
    diff = _max_diff(models.monolithic(), unsplit)
    assert diff < 1e-6
    # and training moved the weights (a no-op trainer would also be "equal")
    fresh = build_models(ModelConfig(depth=3), ushape=ushape, seed=7).monolithic()
    assert _max_diff(fresh, unsplit) > 1e-3


def test_vanilla_transcript_holds_activations_labels_gradients_never_inputs(beats):
    x, y = beats
    transcript = Transcript(policy=RecordPolicy(phases=None))
    trainer = SplitTrainer(
        build_models(ModelConfig(), seed=0), x, y, seed=0, channel=InProcessChannel(transcript)
    )
    ids = torch.arange(32)
    expected = trainer.models.client(x[ids]).detach()  # before the step changes the weights
    trainer.train_step(ids)
    assert transcript.kinds() == {"activations", "labels", "act_grad"}
    got_ids, acts = transcript.get(Kind.ACTIVATIONS, epoch=0)
    assert torch.equal(got_ids, ids) and acts.shape == (32, 16, 32)
    assert torch.equal(acts, expected)
    _, labels = transcript.get(Kind.LABELS, epoch=0)
    assert torch.equal(labels, y[ids])
    _, grads = transcript.get(Kind.ACT_GRAD, epoch=0)
    assert grads.shape == (32, 16, 32) and grads.abs().sum() > 0
    for chunks in transcript.chunks.values():
        for _, tensor in chunks:
            assert tensor.shape[1:] != (1, 128)  # no raw beat ever crosses
            flat = tensor.reshape(len(tensor), -1)
            if flat.shape[1] >= 128:
                assert not torch.isclose(flat[:, :128], x[ids].reshape(32, 128)).all(1).any()


def test_ushape_transcript_holds_no_labels(beats):
    x, y = beats
    transcript = Transcript(policy=RecordPolicy(phases=None))
    trainer = SplitTrainer(
        build_models(ModelConfig(), ushape=True, seed=0), x, y, seed=0,
        channel=InProcessChannel(transcript),
    )
    trainer.train_epoch(1)
    trainer.evaluate(x[:100], y[:100], epoch=1, phase="test")
    assert "labels" not in transcript.kinds()
    assert {"activations", "server_output", "output_grad", "act_grad"} <= transcript.kinds()


def test_record_policy_limits_epochs_and_kinds(beats):
    x, y = beats
    policy = RecordPolicy(epochs=frozenset({2}), kinds=frozenset({Kind.ACTIVATIONS}))
    transcript = Transcript(policy=policy)
    trainer = SplitTrainer(
        build_models(ModelConfig(), seed=0), x, y, seed=0, channel=InProcessChannel(transcript)
    )
    for epoch in (1, 2, 3):
        trainer.train_epoch(epoch)
    assert transcript.keys() == [("activations", "train", 2)]
    ids, acts = transcript.get("activations")
    assert sorted(ids.tolist()) == list(range(len(y)))  # every training row once, keyed by id
    with pytest.raises(KeyError, match="act_grad"):
        transcript.get(Kind.ACT_GRAD)


def test_transcript_round_trips_through_npz(beats, tmp_path):
    x, y = beats
    transcript = Transcript(policy=RecordPolicy(phases=None))
    SplitTrainer(
        build_models(ModelConfig(), seed=0), x, y, seed=0, channel=InProcessChannel(transcript)
    ).train_epoch(1)
    transcript.save(tmp_path / "t.npz")
    back = Transcript.load(tmp_path / "t.npz")
    assert back.keys() == transcript.keys()
    for key in transcript.keys():
        a_ids, a = transcript.get(key[0], phase=key[1], epoch=key[2])
        b_ids, b = back.get(key[0], phase=key[1], epoch=key[2])
        assert torch.equal(a_ids, b_ids) and torch.equal(a, b)


def _config(pool_dirs, **kw) -> TrainConfig:
    mitdb, cache = pool_dirs
    base = dict(
        protocol="paper-unique", epochs=3, seed=1, train_subset=2000, test_subset=1000,
        val_fraction=0.1, device="cpu", mitdb_dir=str(mitdb), cache_dir=str(cache),
    )
    return TrainConfig(**(base | kw))


def test_short_run_learns_and_writes_its_directory(pool_dirs, tmp_path):
    result = run_training(_config(pool_dirs), tmp_path / "run", progress=False)
    # 5 classes, largest 3000/13245 = 22.6%: chance is far below this
    assert result["test_accuracy"] > 70.0, result
    for name in ("config.json", "metrics.jsonl", "result.json", "weights.pt", "checkpoint.pt",
                 "transcript.npz", "best.pt"):
        assert (tmp_path / "run" / name).exists(), name
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    for key in ("train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss",
                "test_accuracy", "seconds"):
        assert all(key in r for r in rows), key
    for key in ("test_accuracy", "best_test_accuracy", "final_test_accuracy", "best_epoch",
                "epochs", "seconds"):
        assert key in result, key
    assert result["best_test_accuracy"] == max(r["test_accuracy"] for r in rows)
    assert result["final_test_accuracy"] == rows[-1]["test_accuracy"]
    best = max(rows, key=lambda r: r["val_accuracy"])
    assert result["best_epoch"] == best["epoch"]
    assert result["test_accuracy"] == best["test_accuracy"]
    weights = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert set(weights) == {"client", "server"}
    best = torch.load(tmp_path / "run" / "best.pt", weights_only=True)
    assert set(best) == {"client", "server"}
    if result["best_epoch"] == 3:
        assert all(torch.equal(best["server"][k], v) for k, v in weights["server"].items())
    transcript = Transcript.load(tmp_path / "run" / "transcript.npz")
    assert {k[2] for k in transcript.keys()} == {3}  # default: the last epoch only


def test_killed_run_resumes_to_the_same_weights(pool_dirs, tmp_path, monkeypatch):
    straight = tmp_path / "straight"
    run_training(_config(pool_dirs), straight, progress=False)

    killed = tmp_path / "killed"
    original = SplitTrainer.train_epochs

    def dies_in_epoch_3(self, epoch):
        if epoch == 3:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(SplitTrainer, "train_epochs", dies_in_epoch_3)
    with pytest.raises(KeyboardInterrupt):
        run_training(_config(pool_dirs), killed, progress=False)
    assert not (killed / "result.json").exists()
    assert len((killed / "metrics.jsonl").read_text().splitlines()) == 2
    monkeypatch.setattr(SplitTrainer, "train_epochs", original)
    result = run_training(_config(pool_dirs), killed, progress=False)
    a = torch.load(straight / "weights.pt", weights_only=True)
    b = torch.load(killed / "weights.pt", weights_only=True)
    for part in a:
        for k in a[part]:
            assert torch.equal(a[part][k], b[part][k]), (part, k)
    assert result["epochs"] == 3
    # a finished run is skipped, and a run dir of another config is refused
    assert run_training(_config(pool_dirs), killed, progress=False) == result
    with pytest.raises(ValueError, match="another run"):
        run_training(_config(pool_dirs, depth=3), killed, progress=False)


def test_cli_train_and_bad_arguments(pool_dirs, tmp_path, capsys):
    mitdb, cache = pool_dirs
    common = ["--mitdb-dir", str(mitdb), "--cache-dir", str(cache), "--no-progress"]
    rc = cli_main(["train", "--epochs", "1", "--train-subset", "500", "--test-subset", "200",
                   "--out", str(tmp_path / "r"), *common])
    assert rc == 0
    assert "test_accuracy" in json.loads(capsys.readouterr().out)
    assert cli_main(["train", "--depth", "9", "--out", str(tmp_path / "bad"), *common]) == 2
    assert "depth" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "config.json").exists()
    assert cli_main(["train", "--epochs", "0", "--out", str(tmp_path / "bad"), *common]) == 2
    assert "epochs" in capsys.readouterr().err
