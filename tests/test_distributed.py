"""Client and server as separate processes over torch.distributed (gloo on 127.0.0.1).

Every test that starts processes bounds them (``launch_local`` / ``run_processes`` kill what is
left after a deadline), so a protocol bug fails a test instead of hanging the suite.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from splitpriv.channel import InProcessChannel, Kind, RecordPolicy, Transcript
from splitpriv.data import make_split
from splitpriv.distributed import (
    HEADER_BYTES,
    ClientData,
    Code,
    CountingChannel,
    DistChannel,
    DistSpec,
    Header,
    Op,
    WireError,
    _party_main,
    check_header,
    free_port,
    handshake,
    init_process_group,
    kind_specs,
    launch_local,
    message_bytes,
    partition_by_record,
    run_distributed,
    run_key,
    run_processes,
    spec_from_cli,
)
from splitpriv.distributed.resume import PartyCheckpoints, agree
from splitpriv.io import torch_threads
from splitpriv.models import ModelConfig, build_models
from splitpriv.parties import Client, Server
from splitpriv.run import TrainConfig, run_training
from splitpriv.trainer import SplitTrainer, adam, batches

DEADLINE_S = 60.0


@pytest.fixture(scope="module")
def beats(pool):
    """256 training beats (with their records) and 128 test beats of paper-unique."""
    split = make_split(pool, "paper-unique", val_fraction=0.0, seed=2019)
    x = torch.as_tensor(split.x_train[:256]).float().reshape(-1, 1, 128)
    y = torch.as_tensor(split.y_train[:256]).long()
    xt = torch.as_tensor(split.x_test[:128]).float().reshape(-1, 1, 128)
    yt = torch.as_tensor(split.y_test[:128]).long()
    return x, y, xt, yt, torch.as_tensor(split.record_train[:256])


def _config(topology: str, epochs: int = 2) -> TrainConfig:
    return TrainConfig(depth=2, epochs=epochs, seed=5, topology=topology, record_epochs="all",
                       device="cpu")


def _max_diff(state: dict[str, torch.Tensor], module: torch.nn.Module) -> float:
    ref = module.state_dict()
    assert state.keys() == ref.keys()
    return max((state[k] - ref[k]).abs().max().item() for k in ref)


# ----------------------------------------------------------------------------- the header


def test_header_round_trip_and_checks():
    spec = kind_specs(ushape=False)[Code.ACTIVATIONS]
    h = Header(seq=3, code=int(Code.ACTIVATIONS), dtype=1, epoch=2, phase=0, n_ids=32,
               shape=(32, 16, 32), numel=32 * 16 * 32)
    buf = h.encode()
    assert buf.dtype == torch.int64 and buf.numel() * 8 == HEADER_BYTES
    assert Header.decode(buf) == h
    ok = dict(seq=3, epoch=2, phase="train", max_rows=64, what="awaiting 'activations' #3")
    check_header(h, Code.ACTIVATIONS, spec, **ok)

    def bad(match: str, **changes):
        with pytest.raises(WireError, match=match) as err:
            check_header(Header(**{**h.__dict__, **changes}), Code.ACTIVATIONS, spec, **ok)
        assert "awaiting 'activations' #3" in str(err.value)  # the error names the message

    bad("expected kind 'activations'", code=int(Code.LABELS))
    bad("expected dtype torch.float32", dtype=2)
    bad(r"expected shape \(B, 16, 32\)", shape=(32, 16, 31), numel=32 * 16 * 31)
    bad("32 rows but 31 ids", n_ids=31)
    bad("expected 1..64", n_ids=100, shape=(100, 16, 32), numel=100 * 512)
    bad("sequence number 4", seq=4)
    bad("epoch 1, expected 2", epoch=1)
    corrupt = buf.clone()
    corrupt[0] = 7
    with pytest.raises(WireError, match="bad magic"):
        Header.decode(corrupt)
    corrupt = buf.clone()
    corrupt[13] = 5  # numel inconsistent with the shape
    with pytest.raises(WireError, match="numel 5"):
        Header.decode(corrupt)
    # rowless control messages carry no ids and a fixed shape
    ctl = kind_specs(ushape=True)[Code.CONTROL]
    hc = Header(seq=0, code=int(Code.CONTROL), dtype=3, epoch=0, phase=0, n_ids=0, shape=(4,),
                numel=4)
    check_header(hc, Code.CONTROL, ctl, seq=0, epoch=None, phase=None, max_rows=1, what="ctl")
    with pytest.raises(WireError, match="expected shape"):
        check_header(Header(**{**hc.__dict__, "shape": (5,), "numel": 5}), Code.CONTROL, ctl,
                     seq=0, epoch=None, phase=None, max_rows=1, what="ctl")


def test_partition_by_record_keeps_records_whole_and_balanced(beats):
    *_, records = beats
    parts = partition_by_record(records, 3)
    assert sorted(torch.cat(parts).tolist()) == list(range(len(records)))
    owners = [set(records[p].tolist()) for p in parts]
    assert all(not (a & b) for i, a in enumerate(owners) for b in owners[i + 1:])
    assert all(len(p) > 0 for p in parts)
    with pytest.raises(ValueError, match="cannot be split"):
        partition_by_record(torch.tensor([1, 1, 2]), 3)


# ----------------------------------------------------------------------------- two processes


def _expected_train_bytes(n: int, batch: int, ushape: bool) -> int:
    """Bytes on the wire of one training epoch: the five kinds plus PHASE (and vanilla STATS)."""
    total = message_bytes(torch.empty(4, dtype=torch.long), 0)  # PHASE control
    for ids in torch.arange(n).split(batch):
        b = len(ids)
        act = message_bytes(torch.empty(b, 16, 32), b)
        total += 2 * act  # activations and their gradient
        if ushape:
            total += 2 * message_bytes(torch.empty(b, 128), b)  # server output and its gradient
        else:
            total += message_bytes(torch.empty(b, dtype=torch.long), b)  # labels
    if not ushape:
        total += message_bytes(torch.empty(3, dtype=torch.float64), 0)  # STATS
    return total


@pytest.mark.parametrize("topology", ["vanilla", "ushape"])
def test_two_processes_equal_in_process(beats, topology, tmp_path):
    x, y, xt, yt, _ = beats
    config = _config(topology)
    t0 = time.monotonic()
    server, client = launch_local(
        config, [ClientData(x, y, x_test=xt, y_test=yt)], workdir=tmp_path, timeout_s=30,
        deadline_s=DEADLINE_S,
    )
    assert time.monotonic() - t0 < DEADLINE_S

    ushape = topology == "ushape"
    transcript = Transcript(policy=RecordPolicy(phases=None))
    channel = CountingChannel(transcript)
    models = build_models(ModelConfig(2), ushape=ushape, seed=config.seed)
    trainer = SplitTrainer(models, x, y, seed=config.seed, channel=channel)
    with torch_threads(1):  # as the launched parties run: a thread count changes the rounding
        for epoch in (1, 2):
            trainer.train_epoch(epoch)
            te = trainer.evaluate(xt, yt, epoch=epoch, phase="test")
    # same weights, both sides
    assert _max_diff(server["state"]["server"], models.server) < 1e-6
    assert _max_diff(client["state"]["client"], models.client) < 1e-6
    if ushape:
        assert _max_diff(client["state"]["head"], models.head) < 1e-6
    fresh = build_models(ModelConfig(2), ushape=ushape, seed=config.seed)
    assert _max_diff(client["state"]["client"], fresh.client) > 1e-4  # training moved them
    assert client["history"][-1]["test_accuracy"] == pytest.approx(te.accuracy)

    # the server's transcript, recorded from what arrived, equals what the in-process one holds
    got = server["transcript"]
    assert set(got) == set(transcript.chunks)
    for key in transcript.chunks:
        ids = torch.cat([c[0] for c in got[key]])
        values = torch.cat([c[1] for c in got[key]])
        ref_ids, ref_values = transcript.get(key[0], phase=key[1], epoch=key[2])
        assert torch.equal(ids, ref_ids), key
        assert torch.allclose(values, ref_values, atol=1e-5), key
    if ushape:
        assert "labels" not in {k for k, _, _ in got}

    # bytes: both ends count the same, the count is the layout's, beside the in-process count
    expected = _expected_train_bytes(len(y), 32, ushape)
    for party in (server, client):
        per_epoch = party["wire"]["per_epoch"]
        assert [e["train_bytes"] for e in per_epoch] == [expected, expected]
    data_bytes = channel.wire.total(epoch=1, phase="train")  # the five kinds only
    assert 0 < expected - data_bytes <= 3 * HEADER_BYTES + 64
    assert client["history"][0]["wire_train_bytes"] == expected


# ----------------------------------------------------------------------------- K clients


def _shares(beats, k):
    x, y, xt, yt, records = beats
    parts = partition_by_record(records, k)
    datas = [ClientData(x[p], y[p], train_ids=p) for p in parts]
    datas[0].x_test, datas[0].y_test = xt, yt
    return datas


def _reference(datas, config, mode, epochs):
    """The K-client schemes with every party in this process (in-process channels)."""
    ushape = config.topology == "ushape"
    k = len(datas)
    base = build_models(ModelConfig(2), ushape=ushape, seed=config.seed)
    gens = [torch.Generator().manual_seed(config.seed + i) for i in range(k)]
    if mode == "sequential":
        ch = InProcessChannel()
        client = Client(base.client, datas[0].x_train, datas[0].y_train, ch, adam(config.lr),
                        head=base.head)
        server = Server(base.server, ch, adam(config.lr))
        trainer = SplitTrainer.__new__(SplitTrainer)
        trainer.client, trainer.server = client, server
        for _ in range(epochs):
            for d, g in zip(datas, gens, strict=True):
                client.x, client.y = d.x_train, d.y_train
                for ids in batches(len(d.y_train), config.batch_size, g, torch.device("cpu")):
                    trainer.train_step(ids)
        return base.client, base.server
    # splitfed: a client-server pair per client, averaged every round
    pairs = []
    for d in datas:
        models = copy.deepcopy(base)
        ch = InProcessChannel()
        c = Client(models.client, d.x_train, d.y_train, ch, adam(config.lr), head=models.head)
        s = Server(models.server, ch, adam(config.lr))
        t = SplitTrainer.__new__(SplitTrainer)
        t.client, t.server = c, s
        pairs.append((t, models))
    weights = [len(d.y_train) for d in datas]
    from splitpriv.distributed import average_

    for _ in range(epochs):
        for (t, _), d, g in zip(pairs, datas, gens, strict=True):
            for ids in batches(len(d.y_train), config.batch_size, g, torch.device("cpu")):
                t.train_step(ids)
        for part in ("client", "head", "server"):
            if getattr(base, part) is not None:
                average_([getattr(m, part) for _, m in pairs], weights)
    return pairs[0][1].client, pairs[0][1].server


@pytest.mark.parametrize(("mode", "k", "topology"),
                         [("sequential", 2, "vanilla"), ("splitfed", 3, "ushape")])
def test_k_clients_equal_in_process_reference(beats, mode, k, topology, tmp_path):
    datas = _shares(beats, k)
    config = _config(topology)
    results = launch_local(config, datas, mode=mode, workdir=tmp_path, timeout_s=30,
                           deadline_s=DEADLINE_S)
    ref_client, ref_server = _reference(datas, config, mode, epochs=2)
    assert _max_diff(results[0]["state"]["server"], ref_server) < 1e-5
    # client 1 ends with the model of the round (handed back, or averaged)
    assert _max_diff(results[1]["state"]["client"], ref_client) < 1e-5
    if mode == "splitfed":  # every client holds the average
        for r in results[2:]:
            assert _max_diff(r["state"]["client"], ref_client) < 1e-5
    else:  # weights and optimizer state went client to client, never through the server
        assert results[1]["wire"]["handover"]["bytes_total"] > 0
    # the server saw every client's rows under their training-set ids, each epoch
    ids = torch.cat([c[0] for c in results[0]["transcript"][("activations", "train", 2)]])
    assert sorted(ids.tolist()) == list(range(len(beats[1])))
    per_client = results[0]["wire"]["per_client"]
    assert len(per_client) == k and all(v > 0 for v in per_client.values())
    assert "test_accuracy" in results[1]["history"][-1]


# ----------------------------------------------------------------------------- faults


def _fake_client(port: int, behaviour: str) -> None:
    """Rank 1 that speaks the protocol up to a point, then misbehaves."""
    torch.set_num_threads(1)
    spec = DistSpec(rank=1, world_size=2, master_port=port, timeout_s=20, turn_timeout_s=20)
    init_process_group(spec)
    handshake(spec, 0, run_key(_config("vanilla", epochs=1), mode="sequential", world_size=2))
    specs = kind_specs(ushape=False)
    ch = DistChannel(0, specs, timeout_s=20)
    ch.send_control(Op.HELLO, 0, 2, 0)
    ch.epoch = 1
    ch.send_control(Op.PHASE, 1, 0, 1)
    ids = torch.arange(8)
    if behaviour == "bad-shape":
        ch.send(Kind.ACTIVATIONS, torch.zeros(8, 16, 31), ids)
    elif behaviour == "bad-dtype":
        ch.send(Kind.ACTIVATIONS, torch.zeros(8, 16, 32, dtype=torch.float64), ids)
    elif behaviour == "dies":
        os._exit(3)
    elif behaviour == "silent":
        time.sleep(DEADLINE_S)
    time.sleep(5)  # let the server read (and reject) before this side closes
    os._exit(0)


def _fake_server(port: int) -> None:
    """Rank 0 that accepts the client's hello and then dies."""
    torch.set_num_threads(1)
    spec = DistSpec(rank=0, world_size=2, master_port=port, timeout_s=20, turn_timeout_s=20)
    init_process_group(spec)
    handshake(spec, 1, run_key(_config("vanilla", epochs=1), mode="sequential", world_size=2))
    DistChannel(1, kind_specs(ushape=False), timeout_s=20).expect_control(Op.HELLO)
    time.sleep(1)
    os._exit(4)


def _run_pair(tmp_path, server_call, client_call):
    t0 = time.monotonic()
    # wait for the real party only; the fake one is killed once the real one has stopped
    real = 0 if server_call[0] is _party_main else 1
    codes = run_processes([server_call, client_call], deadline_s=DEADLINE_S, wait_for=[real])
    return codes, time.monotonic() - t0


@pytest.mark.parametrize(("behaviour", "error", "match"), [
    ("bad-shape", "WireError", r"'activations' message #2 from rank 1.*expected shape"),
    ("dies", "PeerError", r"'activations' message #2 from rank 1.*closed the connection"),
    ("silent", "PeerError", r"'activations' message #2 from rank 1.*nothing within 3 s"),
])
def test_server_stops_on_a_misbehaving_client(behaviour, error, match, tmp_path):
    port = free_port()
    path = tmp_path / "server.pt"
    spec_kw = {"world_size": 2, "master_port": port, "timeout_s": 3.0, "turn_timeout_s": 20.0}
    codes, elapsed = _run_pair(
        tmp_path,
        (_party_main, (0, spec_kw, _config("vanilla", epochs=1), None, "sequential", str(path))),
        (_fake_client, (port, behaviour)),
    )
    out = torch.load(path, weights_only=True)
    assert not out["ok"]
    assert out["error"] == error, out
    import re

    assert re.search(match, out["message"]), out["message"]
    assert elapsed < 30  # no hang: the server stopped on its own, within its timeout
    assert codes[0] == 0  # the server process reported and exited


def test_client_stops_when_the_server_dies(beats, tmp_path):
    x, y, *_ = beats
    port = free_port()
    path = tmp_path / "client.pt"
    spec_kw = {"world_size": 2, "master_port": port, "timeout_s": 20.0, "turn_timeout_s": 20.0}
    codes, elapsed = _run_pair(
        tmp_path,
        (_fake_server, (port,)),
        (_party_main, (1, spec_kw, _config("vanilla", epochs=1), ClientData(x[:64], y[:64]),
                       "sequential", str(path))),
    )
    out = torch.load(path, weights_only=True)
    assert not out["ok"] and out["error"] == "PeerError"
    assert "rank 0" in out["message"] and "closed the connection" in out["message"]
    assert elapsed < 20  # well before the 20 s timeout: a dead peer is seen at once
    assert codes[1] == 0


def _dir_config(mitdb: str, cache: str, **kw) -> TrainConfig:
    return TrainConfig(**{"depth": 2, "epochs": 1, "train_subset": 128, "test_subset": 64,
                          "device": "cpu", "mitdb_dir": mitdb, "cache_dir": cache} | kw)


def _run_dir_party(rank: int, port: int, out: str, mitdb: str, cache: str) -> None:
    torch.set_num_threads(1)
    spec = DistSpec(rank=rank, world_size=2, master_port=port, timeout_s=20, turn_timeout_s=40)
    run_distributed(_dir_config(mitdb, cache), out, spec, progress=False)


def test_run_directory_of_a_distributed_run(pool_dirs, tmp_path):
    """What ``splitpriv train --role ...`` writes: the client's result.json with the bytes per
    epoch, the server's transcript (recorded on the server) and its own summary."""
    mitdb, cache = pool_dirs
    port, out = free_port(), tmp_path / "run"
    out.mkdir()
    torch.save({"stale": True}, out / "checkpoint.pt")  # an earlier attempt's, of no use here
    codes = run_processes(
        [(_run_dir_party, (r, port, str(out), str(mitdb), str(cache))) for r in (0, 1)],
        deadline_s=DEADLINE_S,
    )
    assert codes == [0, 0]
    result = json.loads((out / "result.json").read_text())
    assert result["n_train_client1"] == 128 and result["n_test"] == 64
    wire = result["wire"]
    assert wire["per_epoch"][0]["train_bytes"] == _expected_train_bytes(128, 32, False)
    assert wire["train_bytes_per_epoch"] == wire["per_epoch"][0]["train_bytes"]
    server = json.loads((out / "server.json").read_text())
    assert server["wire"]["bytes_total"] == wire["bytes_total"]  # both ends counted the same
    transcript = Transcript.load(out / "transcript.npz")
    ids, acts = transcript.get(Kind.ACTIVATIONS, epoch=1)
    assert sorted(ids.tolist()) == list(range(128)) and acts.shape == (128, 16, 32)
    assert TrainConfig(**json.loads((out / "config.json").read_text())).train_subset == 128
    assert not (out / "checkpoint.pt").exists()  # no later run resumes from a stale checkpoint
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1

    # a rerun finds every party finished: nothing joins, nothing is retrained (no peer is
    # running, so a party that tried to join would fail after its 1 s timeout)
    config = _dir_config(str(mitdb), str(cache))
    for rank, record in ((0, "server.json"), (1, "result.json")):
        spec = DistSpec(rank=rank, world_size=2, master_port=free_port(), timeout_s=1,
                        turn_timeout_s=1)
        assert run_distributed(config, out, spec, progress=False) == json.loads(
            (out / record).read_text())
    assert not dist.is_initialized()
    assert run_training(config, out, progress=False) == result  # in-process: finished too


def _killed_party(rank: int, port: int, out: str, mitdb: str, cache: str, kill_rank: int,
                  kill_step: int, topology: str) -> None:
    """A party of a 3-epoch run whose rank ``kill_rank`` dies (os._exit, no clean-up) at its
    ``kill_step``-th training step; the other one fails on the dead link. Rank 1 of a run that
    ends writes the training steps it took to ``out/steps``."""
    torch.set_num_threads(1)
    original_step, taken = Client.apply_gradient, [0]

    def counted(self):
        taken[0] += 1
        return original_step(self)

    Client.apply_gradient = counted
    if rank == kill_rank:
        cls, name = (Client, "apply_gradient") if rank else (Server, "backward" if
                                                              topology == "ushape" else "step")
        original, steps = getattr(cls, name), [0]

        def dying(self, *args, **kw):
            steps[0] += 1
            if steps[0] == kill_step:
                os._exit(9)
            return original(self, *args, **kw)

        setattr(cls, name, dying)
    spec = DistSpec(rank=rank, world_size=2, master_port=port, timeout_s=5, turn_timeout_s=40)
    try:
        run_distributed(_resume_config(mitdb, cache, topology), out, spec, progress=False)
        if rank == 1:
            (Path(out) / "steps").write_text(str(taken[0]))
    except Exception:  # the peer died: this party stops with an error, as it would
        sys.exit(1)


def _resume_config(mitdb: str, cache: str, topology: str) -> TrainConfig:
    return _dir_config(mitdb, cache, epochs=3, record_epochs="all", val_fraction=0.2,
                       topology=topology)


@pytest.mark.parametrize(("kill_rank", "kill_step", "topology"), [
    (1, 6, "vanilla"),  # the client dies in epoch 2 (4 steps an epoch)
    (0, 10, "ushape"),  # the server dies in epoch 3
])
def test_a_killed_distributed_run_resumes_as_one_never_killed(pool_dirs, tmp_path, kill_rank,
                                                             kill_step, topology):
    """Either party killed mid-epoch, then both restarted: the run resumes after the latest
    epoch both hold and ends with the weights, metrics and transcript of a run never killed."""
    mitdb, cache = (str(p) for p in pool_dirs)
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for out, args in ((straight, None), (killed, (kill_rank, kill_step, topology))):
        port = free_port()
        if args is None:
            calls = [(_killed_party, (r, port, str(out), mitdb, cache, -1, 0, topology))
                     for r in (0, 1)]
        else:
            calls = [(_killed_party, (r, port, str(out), mitdb, cache, *args)) for r in (0, 1)]
        codes = run_processes(calls, deadline_s=DEADLINE_S)
        assert codes == ([0, 0] if args is None else sorted([9, 1], reverse=kill_rank == 0))
    assert not (killed / "result.json").exists()
    held = {party: PartyCheckpoints(killed / f"party-{party}.pt").wire()
            for party in ("server", "client-1")}
    resumed = agree(held)  # the latest epoch both hold: 1 or 2 here, never a fresh start
    assert resumed >= 1, held
    port = free_port()
    codes = run_processes([(_killed_party, (r, port, str(killed), mitdb, cache, -1, 0, topology))
                           for r in (0, 1)], deadline_s=DEADLINE_S)
    assert codes == [0, 0]

    def rows(out):
        return [{k: v for k, v in json.loads(line).items() if "seconds" not in k}
                for line in (out / "metrics.jsonl").read_text().splitlines()]

    assert rows(killed) == rows(straight) and len(rows(killed)) == 3
    assert int((killed / "steps").read_text()) == 4 * (3 - resumed)  # only the epochs left
    for name in ("weights.pt", "weights-server.pt", "best.pt"):
        a, b = torch.load(straight / name), torch.load(killed / name)
        for part in a:
            for key, value in a[part].items():
                assert torch.equal(value, b[part][key]), (name, part, key)
    t_straight, t_killed = Transcript.load(straight / "transcript.npz"), Transcript.load(
        killed / "transcript.npz")
    assert t_killed.keys() == t_straight.keys() and len(t_killed.keys()) >= 6
    for kind, phase, epoch in t_straight.keys():
        for x, y in zip(t_straight.get(kind, phase=phase, epoch=epoch),
                        t_killed.get(kind, phase=phase, epoch=epoch), strict=True):
            assert torch.equal(x, y), (kind, phase, epoch)
    for x, y in zip(t_straight.releases.arrays().values(), t_killed.releases.arrays().values(),
                    strict=True):
        assert (x == y).all()


def test_a_bottleneck_cut_crosses_between_processes(beats, tmp_path):
    # --cut-channels 4: (B, 4, 32) activations on the wire, the same training as in one process
    x, y, xt, yt, _ = beats
    config = dataclasses.replace(_config("vanilla", epochs=1), cut_channels=4)
    server, client = launch_local(
        config, [ClientData(x, y, x_test=xt, y_test=yt)], workdir=tmp_path, timeout_s=30,
        deadline_s=DEADLINE_S,
    )
    models = build_models(ModelConfig(2, cut_channels=4), seed=config.seed)
    trainer = SplitTrainer(models, x, y, seed=config.seed)
    trainer.train_epoch(1)
    assert _max_diff(server["state"]["server"], models.server) < 1e-6
    assert _max_diff(client["state"]["client"], models.client) < 1e-6
    ids, acts = Transcript(chunks=server["transcript"]).get("activations")
    assert tuple(acts.shape[1:]) == (4, 32)


def test_distributed_run_refuses_a_foreign_run_directory(pool_dirs, tmp_path):
    """``--out`` onto a directory written for another run is refused by every party before it
    joins or writes anything, as an in-process run refuses it."""
    mitdb, cache = pool_dirs
    out = tmp_path / "run"
    out.mkdir()
    other = _dir_config(str(mitdb), str(cache), depth=3)
    (out / "config.json").write_text(json.dumps(dataclasses.asdict(other)))
    (out / "metrics.jsonl").write_text('{"epoch": 1}\n')  # it trained (else it is no run)
    config = _dir_config(str(mitdb), str(cache))
    for rank in (0, 1):
        spec = DistSpec(rank=rank, world_size=2, master_port=free_port(), timeout_s=1,
                        turn_timeout_s=1)
        with pytest.raises(ValueError, match="another run"):
            run_distributed(config, out, spec, progress=False)
    with pytest.raises(ValueError, match="another run"):
        run_training(config, out, progress=False)
    assert json.loads((out / "config.json").read_text())["depth"] == 3
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "metrics.jsonl"]
    assert not dist.is_initialized()


def test_spec_from_cli(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    spec = spec_from_cli("server", world_size=3, master_port=1234)
    assert (spec.rank, spec.world_size, spec.master_addr, spec.master_port) == (
        0, 3, "127.0.0.1", 1234)
    with pytest.raises(ValueError, match="--rank not given"):
        spec_from_cli("client", world_size=3)
    with pytest.raises(ValueError, match="the server is rank 0"):
        spec_from_cli("client", rank=0, world_size=3)
    monkeypatch.setenv("RANK", "2")
    monkeypatch.setenv("WORLD_SIZE", "3")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "4321")
    spec = spec_from_cli("client", timeout_s=5.0)
    assert (spec.rank, spec.master_port, spec.timeout_s, spec.n_clients) == (2, 4321, 5.0, 2)
    assert spec_from_cli("auto").role == "client"  # torchrun: one command line for all ranks
    monkeypatch.setenv("RANK", "0")
    assert spec_from_cli("auto").role == "server"


def test_rank_checks():
    with pytest.raises(ValueError, match="world_size"):
        DistSpec(rank=0, world_size=1)
    with pytest.raises(ValueError, match="rank must be"):
        DistSpec(rank=3, world_size=3)
    assert not dist.is_initialized()  # the parties ran in their own processes, not in this one
