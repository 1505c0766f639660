"""Formal activation DP's release budget (``releases=R``), per-row standardisation and the cut
bottleneck (``cut_channels``)."""

from __future__ import annotations

import json
import math

import pytest
import torch

from defenses.accounting import gdp_mu
from defenses.dp import clip_rows, standardise_rows
from defenses.registry import build_defense
from splitpriv.batched import BatchedSplitTrainer
from splitpriv.channel import InProcessChannel, Kind, RecordPolicy, Transcript
from splitpriv.models import ModelConfig, build_models
from splitpriv.run import TrainConfig, run_training
from splitpriv.trainer import SplitTrainer


@pytest.fixture(scope="module")
def beats(take_beats):
    return take_beats(200, 100)


def _state(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in module.state_dict().items()}


def test_releases_freeze_the_client_and_replay_the_first_release(beats):
    x, y, _, _ = beats
    transcript = Transcript(policy=RecordPolicy(kinds=frozenset({Kind.ACTIVATIONS})))
    dp = build_defense("dp:mode=formal,mechanism=gaussian,noise_multiplier=1,clip=1,releases=1")
    trainer = SplitTrainer(build_models(ModelConfig(), seed=1), x, y, seed=1,
                           channel=InProcessChannel(transcript), defenses=[dp])
    trainer.train_epoch(1)
    client, server = _state(trainer.models.client), _state(trainer.models.server)
    for epoch in (2, 3):
        trainer.train_epoch(epoch)
    for k, v in _state(trainer.models.client).items():
        assert torch.equal(v, client[k]), k  # frozen after its one release epoch
    assert any(not torch.equal(v, server[k]) for k, v in _state(trainer.models.server).items())
    # what crossed in epoch 3 is, beat by beat, what crossed in epoch 1 (no new noise)
    sent = {}
    for epoch in (1, 3):
        ids, acts = transcript.get(Kind.ACTIVATIONS, phase="train", epoch=epoch)
        sent[epoch] = acts[ids.argsort()]
    assert torch.equal(sent[1], sent[3])
    report = dp.report().to_dict()
    assert report["train"]["releases_per_beat"] == 1 and report["release_budget"] == 1
    assert report["train"]["epsilon"] == pytest.approx(
        dp.guarantee(1).epsilon)  # one release's epsilon, not three


def test_a_resumed_run_cannot_replay_what_it_does_not_hold(beats):
    x, y, _, _ = beats
    dp = build_defense("dp:mode=formal,noise_multiplier=1,releases=2")
    trainer = SplitTrainer(build_models(ModelConfig(), seed=0), x, y, seed=0, defenses=[dp])
    with pytest.raises(ValueError, match="rerun it from the start"):
        trainer.train_epoch(3)  # as if resumed at epoch 3: the releases of 1-2 are gone


def test_releases_1_run_reports_one_release_per_beat(pool_dirs, tmp_path):
    mitdb, cache = pool_dirs
    config = TrainConfig(
        protocol="paper-unique", epochs=3, train_subset=200, test_subset=100, val_fraction=0.0,
        defenses=["dp:mode=formal,mechanism=gaussian,target_epsilon=64,releases=1,clip=2"],
        device="cpu", record_epochs="none", mitdb_dir=str(mitdb), cache_dir=str(cache),
    )
    result = run_training(config, tmp_path / "run", progress=False)
    (report,) = result["defenses"]
    assert result["epochs"] == 3  # trained for three epochs on one release
    assert report["train"]["releases_per_beat"] == 1
    assert report["train"]["epsilon"] == pytest.approx(64.0, rel=1e-9)
    assert report["planned"] == {"target_epsilon": 64.0, "epochs": 3, "releases": 1,
                                 "exceeded": False}
    # calibrated over one release, exactly: sigma = sqrt(1) / mu(64, 1e-5)
    assert report["noise_multiplier"] == pytest.approx(1 / gdp_mu(64.0, 1e-5), rel=1e-12)
    assert report["test"]["test"]["releases_per_beat"] == 3  # evaluated after every epoch


def test_standardise_then_clip_sends_rows_of_norm_exactly_clip():
    a = torch.randn(8, 16, 32, dtype=torch.float64) * torch.arange(1, 9).view(-1, 1, 1) + 3
    s = standardise_rows(a)
    flat = s.flatten(1)
    assert torch.allclose(flat.mean(1), torch.zeros(8, dtype=torch.float64), atol=1e-12)
    assert torch.allclose(flat.std(1, unbiased=False), torch.ones(8, dtype=torch.float64))
    # every standardised row has L2 norm sqrt(512) > 2: clipped to exactly 2, whatever the data
    norms = torch.linalg.vector_norm(clip_rows(s, 2.0, 2).flatten(1), dim=1)
    assert torch.allclose(norms, torch.full((8,), 2.0, dtype=torch.float64))
    assert torch.equal(standardise_rows(torch.ones(2, 4)), torch.zeros(2, 4))


def test_formal_dp_standardises_before_clipping():
    d = build_defense("dp:mode=formal,mechanism=gaussian,noise_multiplier=0,clip=3,"
                      "standardise=true")
    a = torch.randn(5, 4, 32) * 10 + 7
    sent = d.transform_activations(a, training=True)
    expect = 3 * standardise_rows(a) / math.sqrt(128)
    torch.testing.assert_close(sent, expect)
    assert d.report().details["standardise"] is True


def test_cut_bottleneck_shapes_and_config(pool_dirs, tmp_path):
    models = build_models(ModelConfig(cut_channels=4), seed=0)
    x = torch.randn(3, 1, 128)
    assert models.client(x).shape == (3, 4, 32)
    assert models.server.layers[1].in_features == 128
    assert models.monolithic()(x).shape == (3, 5)
    with pytest.raises(ValueError, match="cut_channels"):
        ModelConfig(cut_channels=0)
    with pytest.raises(ValueError, match="cut_channels"):
        TrainConfig(cut_channels=65)
    mitdb, cache = pool_dirs
    config = TrainConfig(protocol="paper-unique", epochs=1, train_subset=100, test_subset=50,
                         cut_channels=4, device="cpu", record_epochs="none",
                         defenses=["dp:mode=formal,target_epsilon=1024,standardise=true"],
                         mitdb_dir=str(mitdb), cache_dir=str(cache))
    run_training(config, tmp_path / "run", progress=False)
    assert json.loads((tmp_path / "run" / "config.json").read_text())["cut_channels"] == 4
    weights = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert weights["client"]["layers.6.weight"].shape == (4, 16, 1)


def test_batched_runs_handle_the_bottleneck(beats):
    """The stacked path runs the 1x1 convolution as a grouped convolution: the same weights as
    runs trained alone after a few steps."""
    x, y, _, _ = beats
    cfg, seeds = ModelConfig(cut_channels=4), [0, 1]
    batched = BatchedSplitTrainer([build_models(cfg, seed=s) for s in seeds], x[:96], y[:96],
                                  seeds=seeds)
    assert batched.client.layers is not None  # the explicit stacked layers, not vmap
    batched.train_epoch()
    for k, seed in enumerate(seeds):
        alone = SplitTrainer(build_models(cfg, seed=seed), x[:96], y[:96], seed=seed)
        alone.train_epoch(1)
        for part, module in (("client", alone.models.client), ("server", alone.models.server)):
            for name, v in module.state_dict().items():
                torch.testing.assert_close(batched.run_state(k)[part][name], v, atol=1e-5,
                                           rtol=0)
