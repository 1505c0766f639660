"""Feature-space hijacking (attacks/servers/fsha.py) and its client-side detectors
(defenses/splitguard.py): FSHA reconstructs what crossed, sees nothing else, and SplitGuard tells
it from an honest server."""

from __future__ import annotations

import json
import math

import pytest
import torch

from attacks.servers.fsha import FeatureSpaceHijacking
from defenses import build_defense
from defenses.splitguard import HijackDetected, label_gap
from splitpriv.channel import InProcessChannel, Kind, RecordPolicy, Transcript
from splitpriv.models import ModelConfig, build_models
from splitpriv.run import TrainConfig, behaviour_aux, build_run_data, run_training
from splitpriv.servers import AuxBeats, build_server
from splitpriv.trainer import SplitTrainer

FSHA = "fsha:aux=train:0.5,lr_critic=1e-3,critic_steps=3"


@pytest.fixture(scope="module")
def beats(take_beats):
    """1,000 training beats and 500 disjoint public beats (the attacker's)."""
    x, y, xp, yp = take_beats(1000, 500)
    return x, y, AuxBeats(x=xp, y=yp, source="test: 500 other beats")


def _trainer(beats, behaviour, *, defenses=(), ushape=False, transcript=None, seed=3):
    x, y, aux = beats
    behaviour.provide(aux=aux, record=None)
    channel = InProcessChannel(transcript) if transcript is not None else None
    return SplitTrainer(build_models(ModelConfig(), ushape=ushape, seed=seed), x, y, seed=seed,
                        channel=channel, behaviour=behaviour, defenses=list(defenses))


def test_fsha_reconstructs_training_beats_far_better_than_the_priors(pool_dirs, tmp_path):
    mitdb, cache = pool_dirs
    config = TrainConfig(protocol="paper-unique", epochs=16, train_subset=1000, test_subset=200,
                         val_fraction=0.0, server=FSHA + ",record_every=50", device="cpu",
                         record_epochs="none", mitdb_dir=str(mitdb), cache_dir=str(cache))
    result = run_training(config, tmp_path / "run", progress=False)
    rows = [json.loads(line) for line in (tmp_path / "run" / "fsha.jsonl").read_text().splitlines()]
    rows = [{k: v for k, v in r.items() if k != "examples"} for r in rows]
    assert [r["step"] for r in rows[:3]] == [1, 50, 100] and len(rows) == 11  # 512 steps
    summary = result["server"]["reconstructions"]
    assert summary["records"] == len(rows) and summary["final"] == rows[-1]
    last = rows[-3:]  # steps 400..500, 32 beats each

    def mean(key):
        return sum(r[key] for r in last) / len(last)

    assert rows[0]["linkage_k10_advantage"] < 0.1 and rows[0]["pearson_median"] < 0.2
    assert mean("linkage_k10_advantage") >= 0.2 > mean("prior_mean_beat_linkage_k10_advantage")
    assert mean("mse_median") < 0.7 * mean("prior_mean_beat_mse_median")
    assert mean("pearson_median") > 0.8
    assert result["server"]["follows_protocol"] is False and result["server"]["steps"] == 512


def test_fsha_sees_only_what_crossed_and_the_client_gets_its_gradient(beats):
    transcript = Transcript(policy=RecordPolicy(phases=None))
    seen = []

    class Spy(FeatureSpaceHijacking):
        def cut_gradient(self, a, g, ids, *, y):
            out = super().cut_gradient(a, g, ids, y=y)
            seen.append((a, ids, y, out))
            return out

    trainer = _trainer(beats, Spy(Spy.Config()), transcript=transcript)
    trainer.train_epoch(1)
    ids, acts = transcript.get(Kind.ACTIVATIONS, epoch=1)
    cat = [torch.cat([s[i] for s in seen]) for i in range(4)]
    assert torch.equal(cat[1], ids) and torch.equal(cat[0], acts)  # only what crossed
    assert torch.equal(cat[2], transcript.get(Kind.LABELS, epoch=1)[1])
    assert torch.equal(cat[3], transcript.get(Kind.ACT_GRAD, epoch=1)[1])  # its gradient crossed
    assert all(not s[0].requires_grad and s[0].grad_fn is None for s in seen)
    x, _, aux = beats  # its own beats are not the client's
    assert not (torch.cdist(aux.x.flatten(1), x.flatten(1)) == 0).any()


def test_the_runs_public_beats_are_disjoint_from_every_row_it_uses(pool_dirs):
    mitdb, cache = pool_dirs
    config = TrainConfig(protocol="paper-unique", train_subset=300, test_subset=100,
                         mitdb_dir=str(mitdb), cache_dir=str(cache))
    data = build_run_data(config)
    aux = behaviour_aux("train:0.5", data, seed=0)
    assert aux is not None and len(aux.x) == 150
    used = torch.cat([data.x_train, data.x_val, data.x_test]).flatten(1)
    assert not (torch.cdist(aux.x.flatten(1), used) == 0).any()
    rec = behaviour_aux("records:100;101", data, seed=0)
    assert rec is not None and "records:100,101" in rec.source
    with pytest.raises(ValueError, match="expected train:F"):
        behaviour_aux("test:0.1", data, seed=0)


def test_fsha_runs_u_shaped_and_at_any_depth(beats):
    x, y, aux = beats
    for ushape, depth in ((True, 2), (False, 4)):
        fsha = build_server(FSHA)
        records: list = []
        fsha.provide(aux=aux, record=lambda s, i, r, out=records: out.append((s, i, r)))
        trainer = SplitTrainer(build_models(ModelConfig(depth=depth), ushape=ushape, seed=1),
                               x[:200], y[:200], seed=1, behaviour=fsha)
        trainer.train_epoch(1)
        assert fsha.step == 7 and [s for s, *_ in records] == [1]
        assert records[0][2].shape == (32, 1, 128) and records[0][1].shape == (32,)


@pytest.mark.parametrize("spec,match", [
    ("fsha:lr_pilot=nan", "lr_pilot must be a finite"),
    ("fsha:gp_weight=-1", "gp_weight must be finite"),
    ("fsha:record_every=0", "record_every must be >= 1"),
    ("fsha:aux=test:0.1", "aux must be train:F"),
])
def test_bad_fsha_specs_name_the_option(spec, match):
    with pytest.raises(ValueError, match=match):
        build_server(spec)


@pytest.mark.parametrize("spec,match", [
    ("splitguard:p_fake=1", "p_fake must be in"),
    ("splitguard:threshold=nan", "threshold must be a finite"),
    ("labelgap:window=0", "window and every"),
])
def test_bad_detector_specs_name_the_option(spec, match):
    with pytest.raises(ValueError, match=match):
        build_defense(spec)


def test_splitguard_fake_batches_do_not_move_the_client(beats):
    guard = build_defense("splitguard:p_fake=0.999,warmup=0")
    trainer = _trainer((beats[0][:32], beats[1][:32], beats[2]), build_server("honest"),
                       defenses=[guard])
    before = {k: v.clone() for k, v in trainer.models.client.state_dict().items()}
    server = {k: v.clone() for k, v in trainer.models.server.state_dict().items()}
    trainer.train_epoch(1)
    assert guard.fakes.n == 1
    assert all(torch.equal(before[k], v) for k, v in trainer.models.client.state_dict().items())
    assert any(not torch.equal(server[k], v)
               for k, v in trainer.models.server.state_dict().items())


def test_splitguard_is_quiet_under_an_honest_server_and_stops_fsha(beats):
    spec = "splitguard:p_fake=0.2,stop=true,seed=1"
    honest = build_defense(spec)
    trainer = _trainer(beats, build_server("honest"), defenses=[honest])
    for epoch in (1, 2, 3):
        trainer.train_epoch(epoch)  # no alarm: no HijackDetected
    assert honest.detected_at is None and len(honest.scores) >= 5
    assert min(s for _, s in honest.scores) > 0.5
    guard = build_defense(spec)
    trainer = _trainer(beats, build_server(FSHA), defenses=[guard])
    with pytest.raises(HijackDetected, match="hijacking training"):
        for epoch in (1, 2, 3):
            trainer.train_epoch(epoch)
    assert guard.detected_at is not None and guard.detected_at <= 94


def test_label_gap_separates_class_structured_gradients():
    y = torch.tensor([0, 0, 1, 1])
    g = torch.tensor([[1.0, 0], [1, 0.1], [-1, 0], [-1, -0.1]]).reshape(4, 2, 1)
    assert label_gap(g, y) > 1.5
    assert label_gap(g, torch.tensor([0, 1, 0, 1])) < 0
    assert label_gap(g, torch.zeros(4, dtype=torch.long)) is None
    assert not math.isnan(label_gap(torch.zeros(4, 2, 1), y))
