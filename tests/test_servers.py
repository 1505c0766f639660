"""Server behaviours (splitpriv.servers, attacks/servers/): the honest default, a plug-in adversary,
their specs, and what a behaviour gets to see."""

from __future__ import annotations

import pytest
import torch

from attacks import load_builtin
from splitpriv.channel import InProcessChannel, Kind, RecordPolicy, Transcript
from splitpriv.models import ModelConfig, build_models
from splitpriv.servers import SERVERS, HonestServer, ServerBehaviour, build_server, load_plugins
from splitpriv.trainer import SplitTrainer


@pytest.fixture(scope="module")
def beats(take_beats):
    """200 training and 100 test beats of the paper-unique protocol, as tensors."""
    return take_beats(200, 100)


def _trainer(beats, behaviour, *, ushape=False, transcript=None):
    x, y, _, _ = beats
    channel = InProcessChannel(transcript) if transcript is not None else None
    return SplitTrainer(build_models(ModelConfig(), ushape=ushape, seed=4), x, y, seed=4,
                        channel=channel, behaviour=behaviour)


def _weights(trainer, part):
    return {k: v.clone() for k, v in trainer.models.modules()[part].state_dict().items()}


def _all_weights(trainer):
    return {(p, k): v for p in trainer.models.modules() for k, v in _weights(trainer, p).items()}


def test_registry_finds_the_plugins_and_attacks_skip_them():
    assert {"honest", "scaled"} <= set(load_plugins())
    assert SERVERS["scaled"].__module__ == "attacks.servers.scaled"
    assert not any(c.__module__.startswith("attacks.servers") for c in load_builtin().values())
    assert type(build_server("honest")) is HonestServer
    assert build_server("scaled:factor=2").report() == {
        "name": "scaled", "follows_protocol": False, "factor": 2.0}


@pytest.mark.parametrize("ushape", [False, True])
def test_honest_behaviour_trains_bit_for_bit_like_none(beats, ushape):
    runs = []
    for behaviour in (None, build_server("honest"), build_server("scaled:factor=1")):
        trainer = _trainer(beats, behaviour, ushape=ushape)
        trainer.train_epoch(1)
        runs.append(_all_weights(trainer))
    plain = runs[0]
    for other in runs[1:]:
        assert all(torch.equal(plain[k], other[k]) for k in plain)


@pytest.mark.parametrize("ushape", [False, True])
def test_scaled_zero_freezes_the_client_while_the_server_trains(beats, ushape):
    trainer = _trainer(beats, build_server("scaled:factor=0"), ushape=ushape)
    before = {p: _weights(trainer, p) for p in ("client", "server")}
    trainer.train_epoch(1)
    client, server = _weights(trainer, "client"), _weights(trainer, "server")
    assert all(torch.equal(before["client"][k], v) for k, v in client.items())
    assert any(not torch.equal(before["server"][k], v) for k, v in server.items())
    # not vacuous: the honest server does move the client
    honest = _trainer(beats, None, ushape=ushape)
    honest.train_epoch(1)
    assert any(not torch.equal(before["client"][k], v)
               for k, v in _weights(honest, "client").items())


@pytest.mark.parametrize("spec,match", [
    ("scaled:factor=abc", "cannot read factor='abc'"),
    ("scaled:factor=nan", "factor must be a finite number"),
    ("scaled:colour=red", r"unknown parameter\(s\) \['colour'\]"),
    ("scaled:factor", "expected key=value"),
    ("honest:factor=2", r"unknown parameter\(s\) \['factor'\]"),
    ("nosuchserver", "unknown server behaviour 'nosuchserver'"),
])
def test_bad_specs_name_the_option(spec, match):
    with pytest.raises(ValueError, match=match):
        build_server(spec)


class _Recorder(ServerBehaviour):
    """Keeps everything the server hands it, and returns the honest answers."""

    def __init__(self) -> None:
        super().__init__(ServerBehaviour.Config())
        self.cut: list[tuple[torch.Tensor, ...]] = []
        self.outputs: list[tuple[str, torch.Tensor, torch.Tensor, torch.Tensor]] = []
        self.phases: list[tuple[int, str]] = []
        self.server = None

    def attach(self, server):
        self.server = server

    def begin_phase(self, epoch, phase):
        self.phases.append((epoch, phase))

    def cut_gradient(self, a, g, ids, *, y):
        self.cut.append((a, g, ids, y))
        return g

    def server_output(self, a, out, ids):
        self.outputs.append((self.phases[-1][1], a, out, ids))
        return out


def _cat(rows, i):
    return torch.cat([r[i] for r in rows])


@pytest.mark.parametrize("ushape", [False, True])
def test_the_behaviour_sees_only_what_crossed(beats, ushape):
    _, _, xt, yt = beats
    transcript = Transcript(policy=RecordPolicy(phases=None))
    rec = _Recorder()
    trainer = _trainer(beats, rec, ushape=ushape, transcript=transcript)
    assert rec.server is trainer.server
    trainer.train_epoch(1)
    trainer.evaluate(xt, yt, epoch=1, phase="test")
    assert (1, "train") in rec.phases and rec.phases[-1] == (1, "test")
    ids, acts = transcript.get(Kind.ACTIVATIONS, epoch=1)
    assert torch.equal(_cat(rec.cut, 2), ids)
    assert torch.equal(_cat(rec.cut, 0), acts)  # the activations as received
    _, grads = transcript.get(Kind.ACT_GRAD, epoch=1)
    assert torch.equal(_cat(rec.cut, 1), grads)  # honest: the gradient it was given crossed
    if ushape:
        assert all(y is None for *_, y in rec.cut)  # no label reaches a U-shaped server
    else:
        _, labels = transcript.get(Kind.LABELS, epoch=1)
        assert torch.equal(_cat(rec.cut, 3), labels)
    test = [r for r in rec.outputs if r[0] == "test"]
    test_ids, test_acts = transcript.get(Kind.ACTIVATIONS, phase="test", epoch=1)
    assert torch.equal(_cat(test, 3), test_ids) and torch.equal(_cat(test, 1), test_acts)
    _, outs = transcript.get(Kind.SERVER_OUTPUT, phase="test", epoch=1)
    assert torch.equal(_cat(test, 2), outs)
    received = [r[0] for r in rec.cut] + [r[1] for r in rec.outputs]
    assert all(t.grad_fn is None and not t.requires_grad for t in received)  # values only
