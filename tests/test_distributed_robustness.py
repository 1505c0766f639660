"""Distributed runs against peers that misbehave: no secret or a wrong one, a header declaring
too much, a body of the wrong size, NaN activations, a lone server, another world size, another
run's config. Every case is refused with one line naming the peer, the message or the field, and
the refusing process survives (it reports and exits 0). Listed in docs/robustness.md.

Everything binds to 127.0.0.1; every process is bounded by ``run_processes``' deadline.
"""

from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from splitpriv.distributed import (
    ClientData,
    Code,
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
    run_key,
    run_processes,
)
from splitpriv.distributed.channel import finite_or_raise, frame, unframe
from splitpriv.distributed.handshake import first_difference
from splitpriv.distributed.wire import FRAME_BYTES, HEADER_LEN, MAGIC, VERSION
from splitpriv.run import TrainConfig

DEADLINE_S = 60.0
CONFIG = TrainConfig(depth=2, epochs=1, seed=5, device="cpu")


def _data(n: int = 64) -> ClientData:
    g = torch.Generator().manual_seed(0)
    return ClientData(torch.randn(n, 1, 128, generator=g), torch.randint(0, 5, (n,), generator=g))


def _pair(tmp_path: Path, server_kw: dict, client_kw: dict, *, server_config=CONFIG,
          client_config=CONFIG, client_call=None, wait_for=(0, 1)):
    """Rank 0 and rank 1 (real parties unless ``client_call``); their outcomes and the time."""
    port = free_port()
    base = {"master_port": port, "timeout_s": 5.0, "turn_timeout_s": 20.0}
    paths = [str(tmp_path / f"rank{r}.pt") for r in (0, 1)]
    calls = [(_party_main, (0, base | {"world_size": 2} | server_kw, server_config, None,
                            "sequential", paths[0]))]
    if client_call is None:
        calls.append((_party_main, (1, base | {"world_size": 2} | client_kw, client_config,
                                    _data(), "sequential", paths[1])))
    else:
        calls.append((client_call[0], (port, *client_call[1:])))
    t0 = time.monotonic()
    codes = run_processes(calls, deadline_s=DEADLINE_S, wait_for=list(wait_for))
    elapsed = time.monotonic() - t0
    outs = [torch.load(p, weights_only=True) if Path(p).exists() else None for p in paths]
    return outs, codes, elapsed


# ----------------------------------------------------------------------------- the secret


@pytest.mark.parametrize(("server_secret", "client_secret", "server_match", "client_match"), [
    ("s3cret", None, "client rank 1 holds no shared secret",
     "the server, rank 0 requires a shared secret and this side holds none"),
    ("s3cret", "guess", "client rank 1 answered the challenge wrongly", "handshake"),
    (None, "s3cret", "client rank 1 requires a shared secret",
     "the server, rank 0 holds no shared secret"),
])
def test_a_peer_without_the_secret_is_refused_before_training(
        tmp_path, server_secret, client_secret, server_match, client_match):
    (server, client), codes, elapsed = _pair(
        tmp_path, {"secret": server_secret}, {"secret": client_secret})
    assert codes == [0, 0] and elapsed < 30
    assert not server["ok"] and re.search(server_match, server["message"]), server
    assert not client["ok"] and re.search(client_match, client["message"]), client
    assert "s3cret" not in server["message"] + client["message"]  # the secret never shows


def test_peers_holding_the_secret_train(tmp_path):
    (server, client), codes, _ = _pair(tmp_path, {"secret": "s3cret"}, {"secret": "s3cret"})
    assert codes == [0, 0] and server["ok"] and client["ok"], (server, client)
    assert len(client["history"]) == 1
    assert "s3cret" not in repr(DistSpec(rank=0, world_size=2, secret="s3cret"))


def test_the_handshake_proof_binds_nonce_rank_and_world():
    from splitpriv.distributed.handshake import proof

    p = proof("k", "client", b"n" * 32, 1, 2)
    assert len(p) == 32
    assert p != proof("k", "client", b"m" * 32, 1, 2) != proof("k", "client", b"n" * 32, 2, 2)
    assert p != proof("k", "server", b"n" * 32, 1, 2) != proof("j", "client", b"n" * 32, 1, 2)
    assert p != proof("k", "client", b"n" * 32, 1, 3)
    with pytest.raises(ValueError, match="secret .* is empty"):
        DistSpec(rank=0, world_size=2, secret="")


# ----------------------------------------------------------------------------- the run's config


def test_a_client_on_another_run_config_is_refused_naming_the_field(tmp_path):
    (server, client), codes, _ = _pair(
        tmp_path, {}, {}, client_config=dataclasses.replace(CONFIG, lr=1e-2))
    assert codes == [0, 0]
    for out in (server, client):
        assert not out["ok"] and out["error"] == "WireError"
        assert re.search(r"another run: lr = 0\.0(1|01) there, 0\.0(01|1) here", out["message"])
    assert "client rank 1" in server["message"] and "the server, rank 0" in client["message"]


def test_first_difference_and_local_fields():
    a = run_key(CONFIG, mode="sequential", world_size=2)
    assert first_difference(a, dict(a)) is None
    local = dataclasses.replace(CONFIG, device="cuda", threads=4, mitdb_dir="/x", cache_dir="/y")
    assert first_difference(a, run_key(local, mode="sequential", world_size=2)) is None
    for change, field in ((dict(epochs=2), "epochs"), (dict(seed=6), "seed"),
                          (dict(batch_size=16), "batch_size"), (dict(defenses=["nopeek"]),
                                                                "defenses"),
                          (dict(topology="ushape"), "topology"), (dict(server="scaled"),
                                                                  "server")):
        b = run_key(dataclasses.replace(CONFIG, **change), mode="sequential", world_size=2)
        assert first_difference(a, b) == field
    assert first_difference(a, run_key(CONFIG, mode="splitfed", world_size=2)) == "clients_mode"


# ----------------------------------------------------------------------------- rendezvous


def test_a_lone_server_times_out_within_its_timeout(tmp_path):
    path = str(tmp_path / "server.pt")
    spec_kw = {"world_size": 2, "master_port": free_port(), "timeout_s": 2.0}
    t0 = time.monotonic()
    codes = run_processes([(_party_main, (0, spec_kw, CONFIG, None, "sequential", path))],
                          deadline_s=DEADLINE_S)
    elapsed = time.monotonic() - t0
    out = torch.load(path, weights_only=True)
    assert codes == [0] and not out["ok"] and out["error"] == "PeerError"
    assert re.search(r"rank 0: rendezvous at 127\.0\.0\.1:\d+: no client of 1\.\.1 joined "
                     r"within 2 s", out["message"]), out
    assert elapsed < 15  # 2 s and the processes' start, not turn_timeout's hour


def test_a_client_without_a_server_times_out_within_its_timeout(tmp_path):
    path = str(tmp_path / "client.pt")
    spec_kw = {"world_size": 2, "master_port": free_port(), "timeout_s": 2.0}
    t0 = time.monotonic()
    codes = run_processes([(_party_main, (1, spec_kw, CONFIG, _data(), "sequential", path))],
                          deadline_s=DEADLINE_S)
    out = torch.load(path, weights_only=True)
    assert codes == [0] and not out["ok"] and out["error"] == "PeerError"
    assert re.search(r"rank 1: no rendezvous at 127\.0\.0\.1:\d+ within 2 s", out["message"])
    assert time.monotonic() - t0 < 20


def test_a_client_of_another_world_size_is_refused(tmp_path):
    (server, client), codes, elapsed = _pair(tmp_path, {}, {"world_size": 3})
    assert codes == [0, 0] and elapsed < 30
    assert "client rank 1 was started with world size 3, the server with 2" in server["message"]
    assert "started with world size 3, the server (rank 0) with 2" in client["message"]


def _listen_addresses(port: int) -> list[str]:
    """The local addresses (hex, /proc/net/tcp) listening on ``port``."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not os.path.exists(table):
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hexport = local.split(":")
            if state == "0A" and int(hexport, 16) == port:
                found.append(addr)
    return found


def test_the_rendezvous_store_listens_on_the_given_address_only(tmp_path):
    if not os.path.exists("/proc/net/tcp"):
        pytest.skip("needs Linux /proc/net/tcp")
    port = free_port()
    path = str(tmp_path / "server.pt")
    spec_kw = {"world_size": 2, "master_port": port, "timeout_s": 6.0}
    import multiprocessing as mp

    proc = mp.get_context("spawn").Process(
        target=_party_main, args=(0, spec_kw, CONFIG, None, "sequential", path), daemon=True)
    proc.start()
    try:
        end = time.monotonic() + 30
        while not _listen_addresses(port) and time.monotonic() < end:
            time.sleep(0.1)
        assert _listen_addresses(port) == ["0100007F"]  # 127.0.0.1, not 0.0.0.0 or ::
    finally:
        proc.join(30)
        if proc.is_alive():
            proc.kill()


def test_a_lone_server_from_the_cli_fails_with_one_line(tmp_path):
    env = os.environ | {"PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    env.pop("SPLITPRIV_SECRET", None)
    proc = subprocess.run(
        [sys.executable, "-m", "splitpriv.cli", "train", "--role", "server", "--world-size", "2",
         "--master-port", str(free_port()), "--timeout", "2", "--epochs", "1", "--device", "cpu",
         "--out", str(tmp_path / "run")], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    ours = [ln for ln in proc.stderr.splitlines() if ln.startswith("splitpriv:")]
    assert ours[0].startswith("splitpriv: warning: no shared secret")
    assert re.match(r"splitpriv: error: rank 0: rendezvous .* no client .* within 2 s", ours[1])
    assert "Traceback" not in proc.stderr


def _in_thread(fn, *args):
    """Start ``fn(*args)`` in a thread; its outcome (a value or the exception) in ``out[0]``."""
    import threading

    out: list = []

    def run():
        try:
            out.append(fn(*args))
        except Exception as exc:  # the outcome the test reads
            out.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, out


def _store(port: int):
    import datetime

    import torch.distributed as dist

    return dist.TCPStore("127.0.0.1", port, None, False, datetime.timedelta(seconds=20))


def test_garbage_at_the_rendezvous_is_named_and_never_crashes_the_server():
    from splitpriv.distributed import PeerError
    from splitpriv.distributed.spec import rendezvous

    port = free_port()
    server, out = _in_thread(rendezvous, DistSpec(rank=0, world_size=2, master_port=port,
                                                  timeout_s=3.0))
    _store(port).set("splitpriv/join/1", "abc")  # an unauthenticated process, before any client
    import socket

    for junk in (b"abc\n", b"\xff" * 100_000):  # and raw bytes, not the store's protocol
        with socket.create_connection(("127.0.0.1", port)) as raw:
            raw.sendall(junk)
    server.join(30)
    assert isinstance(out[0], PeerError), out
    assert "no client of 1..1 joined within 3 s" in str(out[0])
    assert "rank 1's registration was 'abc', not a splitpriv client's" in str(out[0])


def _garbage_then_client(port: int, path: str) -> None:
    """Writes garbage where a client registers, then runs the real client rank 1."""
    _store(port).set("splitpriv/join/1", "abc")
    time.sleep(1.0)  # the server reads the garbage first
    _party_main(1, {"world_size": 2, "master_port": port, "timeout_s": 5.0,
                    "turn_timeout_s": 20.0}, CONFIG, _data(), "sequential", path)


def test_the_real_client_trains_after_garbage_at_the_rendezvous(tmp_path):
    (server, _), codes, _ = _pair(tmp_path, {}, {}, client_call=(
        _garbage_then_client, str(tmp_path / "rank1.pt")))
    client = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert codes == [0, 0] and server["ok"] and client["ok"], (server, client)


def test_a_second_client_of_the_same_rank_is_named():
    from splitpriv.distributed import PeerError
    from splitpriv.distributed.spec import rendezvous

    port = free_port()
    kw = {"world_size": 3, "master_port": port, "timeout_s": 3.0}
    server, out = _in_thread(rendezvous, DistSpec(rank=0, **kw))
    rendezvous(DistSpec(rank=1, **kw))
    with pytest.raises(PeerError, match=r"rank 1: another process has already joined the "
                                        r"rendezvous at 127\.0\.0\.1:\d+ as rank 1"):
        rendezvous(DistSpec(rank=1, **kw))
    server.join(30)
    assert isinstance(out[0], PeerError)
    assert "client rank 1 was started twice (two processes with --rank 1)" in str(out[0])


@pytest.mark.parametrize(("port", "named"), [
    ("0", "--master-port must be in 1..65535, got 0 (0 would pick a port no client can know)"),
    ("70000", "--master-port must be in 1..65535, got 70000"),
])
def test_a_master_port_out_of_range_is_one_line(tmp_path, capsys, port, named):
    from splitpriv.cli import main

    assert main(["train", "--role", "server", "--world-size", "2", "--master-port", port,
                 "--epochs", "1", "--out", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err.strip()
    assert named in err and "\n" not in err
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- bad messages


def _bad_client(port: int, behaviour: str) -> None:
    """Rank 1 that authenticates and agrees on the run, then sends a bad first training step."""
    torch.set_num_threads(1)
    spec = DistSpec(rank=1, world_size=2, master_port=port, timeout_s=20)
    init_process_group(spec)
    handshake(spec, 0, run_key(CONFIG, mode="sequential", world_size=2))
    ch = DistChannel(0, kind_specs(ushape=False), timeout_s=20)
    ch.send_control(Op.HELLO, 0, 2, 0)
    ch.epoch = 1
    ch.send_control(Op.PHASE, 1, 0, 1)
    ids = torch.arange(8)

    def header(rows: int) -> Header:
        return Header(ch._send_seq, int(Code.ACTIVATIONS), 1, 1, 0, rows, (rows, 16, 32),
                      rows * 512)

    def body(x: torch.Tensor) -> torch.Tensor:
        return torch.cat([ids.view(torch.uint8), x.reshape(-1).view(torch.uint8)])

    what = "bad client"
    if behaviour == "too-much":  # declares 10^6 rows (2 GB), sends nothing more
        ch._transmit(header(10**6), torch.empty(0, dtype=torch.uint8), what, 20)
    elif behaviour == "longer":  # declares 8 rows, sends 16
        ch._transmit(header(8), body(torch.zeros(16, 16, 32)), what, 20)
    elif behaviour == "shorter":  # declares 8 rows, sends 4
        ch._transmit(header(8), body(torch.zeros(4, 16, 32)), what, 20)
    elif behaviour == "nan":
        x = torch.zeros(8, 16, 32)
        x[3, 2, 1] = float("nan")
        ch._transmit(header(8), body(x), what, 20)
    time.sleep(5)  # let the server read (and refuse) before this side closes
    os._exit(0)


@pytest.mark.parametrize(("behaviour", "match"), [
    ("too-much", r"declares 2,056,000,000 bytes, more than the maximum [\d,]+ "
                 r"\(--max-message-mb\)"),
    ("longer", r"a payload of 32,832 bytes .* the header declared 16,448"),
    ("shorter", r"a payload of 8,256 bytes .* the header declared 16,448"),
    ("nan", r"non-finite values \(NaN or inf\)"),
])
def test_a_bad_message_is_refused_and_the_server_survives(tmp_path, behaviour, match):
    (server, _), codes, elapsed = _pair(tmp_path, {}, {}, client_call=(_bad_client, behaviour),
                                        wait_for=(0,))
    assert codes[0] == 0 and elapsed < 30  # no SIGABRT: the server reported and exited
    assert not server["ok"] and server["error"] == "WireError", server
    assert "'activations' message #2 from rank 1" in server["message"]
    assert re.search(match, server["message"]), server["message"]


def test_max_message_mb_below_the_run_s_longest_message_is_refused_up_front():
    import torch.distributed as dist

    store = dist.HashStore()
    dist.init_process_group("gloo", store=store, rank=0, world_size=1)
    try:
        with pytest.raises(ValueError, match=r"--max-message-mb 0\.1 is below"):
            DistChannel(0, kind_specs(ushape=False), max_rows=512, max_message_mb=0.1)
        ch = DistChannel(0, kind_specs(ushape=False), max_rows=512, max_message_mb=8)
        assert ch.max_bytes == 8 * 2**20
    finally:
        dist.destroy_process_group()
    with pytest.raises(ValueError, match="--max-message-mb must be a finite"):
        DistSpec(rank=0, world_size=2, max_message_mb=float("nan"))
    with pytest.raises(ValueError, match="--timeout must be a finite"):
        DistSpec(rank=0, world_size=2, timeout_s=float("inf"))


@pytest.mark.parametrize(("flag", "value"), [("--timeout", "1e308"),
                                           ("--turn-timeout", "3e6"),
                                           ("--max-message-mb", "1e308")])
def test_waits_and_sizes_beyond_what_torch_takes_are_one_line(tmp_path, capsys, flag, value):
    from splitpriv.cli import main

    assert main(["train", "--role", "server", "--world-size", "2", "--master-port",
                 str(free_port()), "--epochs", "1", "--out", str(tmp_path / "run"), flag,
                 value]) == 2
    err = capsys.readouterr().err.strip()
    assert f"{flag} must be a finite number in (0, " in err and "\n" not in err
    assert not (tmp_path / "run").exists()


def test_non_finite_tensors_are_refused():
    for bad in (float("nan"), float("inf"), -float("inf")):
        with pytest.raises(WireError, match=r"sending 'act_grad'.*non-finite"):
            finite_or_raise(torch.tensor([0.0, bad]), "sending 'act_grad' #3")
    finite_or_raise(torch.tensor([1, 2]), "ids")  # integers are not checked
    finite_or_raise(torch.zeros(3), "fine")


# ----------------------------------------------------------------------------- properties

_SPEC = kind_specs(ushape=False)[Code.ACTIVATIONS]
_VALID = Header(seq=2, code=int(Code.ACTIVATIONS), dtype=1, epoch=1, phase=0, n_ids=8,
                shape=(8, 16, 32), numel=8 * 512)
_INT64 = st.integers(-(2**63), 2**63 - 1)


def _receive_header(buf: torch.Tensor) -> Header:
    h = Header.decode(buf)
    check_header(h, Code.ACTIVATIONS, _SPEC, seq=2, epoch=1, phase="train", max_rows=64,
                 what="awaiting", max_bytes=2 * 64 * (8 + 512 * 4))
    return h


@settings(max_examples=300, deadline=None)
@given(st.lists(_INT64, min_size=0, max_size=2 * HEADER_LEN))
def test_random_headers_are_accepted_or_refused_with_a_wire_error(values):
    _accepted_only_if_awaited(torch.tensor(values, dtype=torch.int64))


def _accepted_only_if_awaited(buf: torch.Tensor) -> None:
    """A header is refused with a WireError (any other exception fails the test) or, if
    accepted, is the message awaited: our magic and version, activations of (B, 16, 32),
    1..64 rows."""
    try:
        h = _receive_header(buf)
    except WireError:
        return
    assert len(buf) == HEADER_LEN and (int(buf[0]), int(buf[1])) == (MAGIC, VERSION)
    assert h.code == Code.ACTIVATIONS and h.shape[1:] == (16, 32) and 0 < h.n_ids <= 64


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, HEADER_LEN - 1),
                          st.one_of(_INT64, st.integers(-3, 2**20))), min_size=1, max_size=4))
def test_mutated_headers_are_accepted_or_refused_with_a_wire_error(mutations):
    buf = _VALID.encode()
    for i, v in mutations:
        buf[i] = v
    _accepted_only_if_awaited(buf)


@settings(max_examples=200, deadline=None)
@given(rows=st.integers(1, 64), sent_rows=st.integers(0, 300),
       mutations=st.lists(st.tuples(st.integers(0, 39), st.integers(0, 255)), max_size=3))
def test_mutated_frames_are_accepted_or_refused_with_a_wire_error(rows, sent_rows, mutations):
    h = dataclasses.replace(_VALID, n_ids=rows, shape=(rows, 16, 32), numel=rows * 512)
    body = torch.randint(0, 256, (sent_rows * (8 + 2048),), dtype=torch.uint8)
    frames = frame(h, body, pad=True)
    n_frames = -(-h.body_bytes() // (FRAME_BYTES - 40))
    frames = (frames + [torch.zeros(FRAME_BYTES, dtype=torch.uint8)] * n_frames)[:n_frames]
    buf = torch.stack(frames)
    for i, v in mutations:  # the prefix of the first frame
        buf[0, i] = v
    try:
        got = unframe(h, buf, "awaiting")
    except WireError:
        return
    assert sent_rows == rows and torch.equal(got, body)
