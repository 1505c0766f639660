"""The two roles of a distributed run: :func:`run_client` (ranks 1..K) and :func:`run_server`
(rank 0), each to its end, over :class:`~splitpriv.distributed.channel.DistChannel` s.

The parties are those of :mod:`splitpriv.parties`, built from the run's config by the same
pipeline as an in-process run (``splitpriv.run``: defenses, server behaviour, topology, models);
only the channel differs. The client evaluates through :func:`splitpriv.trainer.evaluate_client`,
as :meth:`splitpriv.trainer.SplitTrainer.evaluate` does.

Modes with K clients:

* ``sequential`` (Vepakomma et al. 2018): clients take turns, one local epoch each, in rank
  order; after its turn a client hands its weights and optimizer state to the next client
  directly (the server never sees them). Client 1 holds the test set and evaluates after each
  round, once client K has handed the weights back.
* ``splitfed`` (Thapa et al. 2022, SplitFedV1): clients train in parallel, each against its own
  copy of the server network. At the end of each round the clients average their networks among
  themselves (an all-reduce on a clients-only group: the server never sees client weights), the
  server averages its copies; both weighted by the rows each client trained on.

With K = 1 both modes are plain two-party split learning and give the in-process trainer's
numbers. Client k's batch order is drawn from a generator seeded ``seed + k - 1``. Ids on the wire
are training-set row ids (a client maps its local rows through ``ClientData.train_ids``).
"""

from __future__ import annotations

import copy
import datetime
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from splitpriv.channel import Kind, Transcript, WireCounter
from splitpriv.datasets import run_dataset
from splitpriv.distributed.channel import DistChannel, select
from splitpriv.distributed.handshake import handshake, run_key
from splitpriv.distributed.partition import ClientData
from splitpriv.distributed.resume import NONE, PartyCheckpoints, agree, hello, parse_hello
from splitpriv.distributed.spec import DistSpec, init_process_group
from splitpriv.distributed.wire import MODES, PHASES, Code, Op, Spec, WireError, split_specs
from splitpriv.parties import Client, Server, train_step
from splitpriv.run import (
    TrainConfig,
    build_behaviour,
    build_defenses,
    build_run_models,
    defense_reports,
    load_plugin_states,
    resolve_topology,
    stateful_plugins,
)
from splitpriv.run.rundir import phase_fields
from splitpriv.trainer import (
    EVAL_BATCH,
    Accumulator,
    adam,
    batches,
    begin_phase,
    eval_chunks,
    evaluate_client,
)


@dataclass
class PartyResult:
    """What one process ends with: per-epoch metrics, its networks' weights, its wire counts and,
    on the server, the transcript."""

    role: str
    rank: int
    history: list[dict[str, Any]]
    state: dict[str, dict[str, torch.Tensor]]
    wire: dict[str, Any]
    transcript: Transcript | None = None
    defenses: list[dict[str, Any]] = field(default_factory=list)  # the client's claims


def _party_state(net: nn.Module, optimizer: torch.optim.Optimizer) -> dict[str, Any]:
    """A network's and its optimizer's state (copied: the party trains on)."""
    return copy.deepcopy({"net": net.state_dict(), "opt": optimizer.state_dict()})


def _load_party_state(net: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
                      ) -> None:
    net.load_state_dict(state["net"])
    optimizer.load_state_dict(state["opt"])


def _client_modules(client: Client) -> list[nn.Module]:
    return [client.net] + ([client.head] if client.head is not None else [])


def _adam_tensors(modules: list[nn.Module], optimizers: list[torch.optim.Optimizer]
                  ) -> list[torch.Tensor]:
    """Parameters and Adam state, in a fixed order (what sequential SL hands over)."""
    out: list[torch.Tensor] = []
    for module, opt in zip(modules, optimizers, strict=True):
        if not isinstance(opt, torch.optim.Adam) or opt.defaults.get("amsgrad"):
            raise ValueError("sequential hand-over supports the plain Adam optimizer only")
        for p in module.parameters():
            out.append(p.data)
            st = opt.state.get(p)
            if not st:
                raise ValueError("hand-over before the first optimizer step")
            out += [st["exp_avg"], st["exp_avg_sq"], st["step"].reshape(1)]
    return out


def _handover_numel(client: Client) -> int:
    return sum(3 * p.numel() + 1 for m in _client_modules(client) for p in m.parameters())


def _optimizers(client: Client) -> list[torch.optim.Optimizer]:
    return [client.optimizer] + ([client.head_optimizer] if client.head_optimizer else [])


def pack_client_state(client: Client) -> torch.Tensor:
    tensors = _adam_tensors(_client_modules(client), _optimizers(client))
    return torch.cat([t.detach().reshape(-1).float().cpu() for t in tensors])


def unpack_client_state(client: Client, flat: torch.Tensor) -> None:
    i = 0
    for module, opt in zip(_client_modules(client), _optimizers(client), strict=True):
        for p in module.parameters():
            n = p.numel()
            parts = []
            for _ in range(3):
                parts.append(flat[i : i + n].view_as(p).to(p.device).clone())
                i += n
            step = flat[i : i + 1].reshape(()).clone()
            if opt.defaults.get("fused") or opt.defaults.get("capturable"):
                step = step.to(p.device)  # as Adam.load_state_dict places it
            i += 1
            p.data.copy_(parts[0])
            opt.state[p] = {"step": step, "exp_avg": parts[1], "exp_avg_sq": parts[2]}
    assert i == flat.numel()


def average_(modules: Sequence[nn.Module], weights: Sequence[float]) -> None:
    """Set every module's parameters to their weighted mean (float64 accumulation)."""
    total = float(sum(weights))
    for ps in zip(*(list(m.parameters()) for m in modules), strict=True):
        mean = sum(w * p.detach().double() for w, p in zip(weights, ps, strict=True)) / total
        for p in ps:
            p.data.copy_(mean.to(p.dtype))


def _allreduce_average_(modules: Sequence[nn.Module], n_rows: int, group: Any) -> None:
    params = [p for m in modules for p in m.parameters()]
    flat = torch.cat([p.detach().double().reshape(-1).cpu() for p in params] +
                     [torch.tensor([0.0])])
    flat *= n_rows
    flat[-1] = n_rows
    dist.all_reduce(flat, group=group)
    flat = flat[:-1] / flat[-1]
    i = 0
    for p in params:
        p.data.copy_(flat[i : i + p.numel()].view_as(p).to(p.dtype))
        i += p.numel()


def _state(modules: dict[str, nn.Module]) -> dict[str, dict[str, torch.Tensor]]:
    return {k: {n: t.detach().cpu().clone() for n, t in m.state_dict().items()}
            for k, m in modules.items()}


def _client_group(spec: DistSpec, mode: str) -> Any:
    """The clients-only group SplitFed averages over (every rank must call this)."""
    if mode == "splitfed" and spec.n_clients > 1:
        return dist.new_group(list(range(1, spec.world_size)),
                              timeout=datetime.timedelta(seconds=spec.turn_timeout_s))
    return None


@dataclass
class _ClientTurns:
    """A client's end of the rounds: sequential SL's hand-over channels to the previous and next
    client, or SplitFed's clients-only group (both None in two-party training)."""

    k: int
    n_clients: int
    mode: str
    timeout_s: float
    prev: DistChannel | None = None
    nxt: DistChannel | None = None
    group: Any = None

    def receive(self, client: Client, epoch: int) -> None:
        """Before client k's turn (sequential, k > 1): the weights the previous client hands on."""
        if self.prev is not None and self.k > 1:
            self.prev.begin_phase(epoch, "train")
            unpack_client_state(client, self.prev.recv_tensor(Code.WEIGHTS, self.timeout_s))

    def end_round(self, client: Client, channel: DistChannel, epoch: int, n_rows: int) -> None:
        """After the turn: hand the weights on (client 1 then waits for them from client K), or
        average with the other clients and synchronise with the server (SplitFed)."""
        if self.nxt is not None and self.prev is not None:
            self.nxt.begin_phase(epoch, "train")
            self.nxt.send_tensor(Code.WEIGHTS, pack_client_state(client), self.timeout_s)
            if self.k == 1:
                self.prev.begin_phase(epoch, "train")
                unpack_client_state(client, self.prev.recv_tensor(Code.WEIGHTS, self.timeout_s))
        elif self.mode == "splitfed":
            if self.group is not None:
                _allreduce_average_(_client_modules(client), n_rows, self.group)
            channel.send_control(Op.SYNC, epoch)
            channel.expect_control(Op.ACK, self.timeout_s)

    def wire(self, channel: DistChannel) -> dict[str, Any]:
        wire = channel.wire.summary()
        if self.prev is not None and self.nxt is not None:
            handover = WireCounter()
            handover.merge(self.prev.wire)
            handover.merge(self.nxt.wire)
            wire["handover"] = handover.summary()
        return wire


def _client_turns(spec: DistSpec, mode: str, client: Client, group: Any) -> _ClientTurns:
    k, n = spec.rank, spec.n_clients
    turns = _ClientTurns(k, n, mode, spec.turn_timeout_s, group=group)
    if mode == "sequential" and n > 1:
        hand_specs = {Code.WEIGHTS: Spec((_handover_numel(client),), torch.float32, False)}
        turns.prev = DistChannel(n if k == 1 else k - 1, hand_specs, timeout_s=spec.timeout_s,
                                 max_message_mb=spec.max_message_mb)
        turns.nxt = DistChannel(1 if k == n else k + 1, hand_specs, timeout_s=spec.timeout_s,
                                max_message_mb=spec.max_message_mb)
    return turns


def _client_epoch(client: Client, channel: DistChannel, data: ClientData, epoch: int,
                  steps: Sequence[torch.Tensor], ushape: bool) -> dict[str, Any]:
    """One training pass of the client's rows: every batch's :func:`train_step` (the client's
    phases); the training loss from the head (U-shaped) or the server's STATS."""
    begin_phase(channel, (client,), epoch, "train")
    client.train(True)
    acc = Accumulator(data.x_train.device)
    channel.send_control(Op.PHASE, epoch, 0, len(steps))
    for ids in steps:
        out = train_step(ids, ushape=ushape, client=client)
        if out is not None:  # U-shaped: the client holds the loss
            acc.add(*out, data.y_train[ids])
    if ushape:
        return phase_fields("train", acc.stats())
    loss_sum, correct, n = channel.recv_tensor(Code.STATS).tolist()
    return {"train_loss": loss_sum / n, "train_accuracy": 100.0 * correct / n}


@dataclass
class _ClientState:
    """What a client's checkpoint keeps (networks, optimizers, batch generator, stateful
    defenses, history), and its resume."""

    client: Client
    generator: torch.Generator
    plugins: dict[str, Any]

    def state(self, history: list[dict[str, Any]]) -> dict[str, Any]:
        c = self.client
        return {"client": _party_state(c.net, c.optimizer),
                "head": (None if c.head is None or c.head_optimizer is None
                         else _party_state(c.head, c.head_optimizer)),
                "generator": self.generator.get_state(), "history": history,
                "plugins": {k: p.state_dict() for k, p in self.plugins.items()}}

    def resume(self, channel: DistChannel, checkpoints: PartyCheckpoints | None,
               held: tuple[int, int], spec: DistSpec,
               on_resume: Callable[[int, list[dict[str, Any]]], None] | None
               ) -> tuple[list[dict[str, Any]], int]:
        """(history, first epoch to train): holding checkpoints, the epoch the server says every
        party holds, loaded."""
        if held[0] == NONE or checkpoints is None:
            return [], 1
        resumed = channel.expect_control(Op.RESUME, spec.turn_timeout_s)[0]
        if resumed == NONE:
            raise ValueError(f"client rank {spec.rank}: the parties hold no common epoch to "
                             "resume from (the server says which); rerun every party with "
                             "--force to train afresh")
        history: list[dict[str, Any]] = []
        if resumed > 0:
            saved, c = checkpoints.load(resumed), self.client
            _load_party_state(c.net, c.optimizer, saved["client"])
            if c.head is not None and c.head_optimizer is not None:
                _load_party_state(c.head, c.head_optimizer, saved["head"])
            self.generator.set_state(saved["generator"])
            load_plugin_states(self.plugins, saved["plugins"], checkpoints.path)
            history = list(saved["history"])
        if on_resume is not None:
            on_resume(resumed, history)
        return history, resumed + 1


def run_client(
    config: TrainConfig, spec: DistSpec, data: ClientData, *, mode: str = "sequential",
    eval_batch_size: int = EVAL_BATCH, progress: bool = False,
    on_epoch: Callable[[list[dict[str, Any]], Callable[[], dict]], None] | None = None,
    checkpoints: PartyCheckpoints | None = None,
    on_resume: Callable[[int, list[dict[str, Any]]], None] | None = None,
) -> PartyResult:
    """Run one client (rank >= 1) of a distributed split-learning session to its end.

    ``config`` is the run's :class:`~splitpriv.run.TrainConfig` (depth, topology, seed, lr, batch
    size, epochs, defenses); the server must be given the same. ``on_epoch(history, weights)``
    is called after every epoch (the run directory saves it), then the client's state is kept in
    ``checkpoints``; holding some, the client resumes after the epoch the parties agree on
    (:mod:`splitpriv.distributed.resume`), and ``on_resume(epoch, history)`` is told which."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if spec.rank == 0:
        raise ValueError("rank 0 is the server; clients are ranks 1..world_size-1")
    if len(data.y_train) == 0:
        raise ValueError(f"client rank {spec.rank} holds no training rows")
    defenses = build_defenses(config)
    ushape = resolve_topology(config, defenses) == "ushape"
    joined = init_process_group(spec)
    try:
        group = _client_group(spec, mode)
        device = data.x_train.device
        shape = run_dataset(config).describe(config)
        models = build_run_models(config, "ushape" if ushape else "vanilla", device, shape)
        handshake(spec, 0, run_key(config, mode=mode, world_size=spec.world_size))
        channel = DistChannel(
            0, split_specs(ushape, models, *shape), timeout_s=spec.timeout_s,
            max_rows=max(config.batch_size, eval_batch_size), train_ids=data.train_ids,
            device=device, max_message_mb=spec.max_message_mb,
        )
        client = Client(models.client, data.x_train, data.y_train, channel, adam(config.lr),
                        head=models.head, defenses=defenses)
        turns = _client_turns(spec, mode, client, group)
        generator = torch.Generator().manual_seed(config.seed + spec.rank - 1)
        held = checkpoints.wire() if checkpoints is not None else (NONE, NONE)
        channel.send_control(Op.HELLO, *hello(ushape, config.depth, MODES.index(mode), held))

        def evaluate(x: torch.Tensor, y: torch.Tensor, epoch: int, phase: str) -> dict[str, Any]:
            begin_phase(channel, (client,), epoch, phase)
            chunks = eval_chunks(len(y), device, eval_batch_size)
            channel.send_control(Op.PHASE, epoch, PHASES.index(phase), len(chunks))
            return phase_fields(phase, evaluate_client(client, x, y, chunks)[0])

        def weights() -> dict[str, dict[str, torch.Tensor]]:
            return _state({"client": models.client} | ({"head": models.head} if models.head
                                                          else {}))

        saved = _ClientState(client, generator, stateful_plugins(defenses, None, None))
        history, first = saved.resume(channel, checkpoints, held, spec, on_resume)
        for epoch in range(first, config.epochs + 1):
            turns.receive(client, epoch)
            t0 = time.perf_counter()
            steps = batches(len(data.y_train), config.batch_size, generator, device)
            row = {"epoch": epoch, **_client_epoch(client, channel, data, epoch, steps, ushape)}
            client.end_epoch(epoch)
            row["train_seconds"] = time.perf_counter() - t0
            turns.end_round(client, channel, epoch, len(data.y_train))
            if spec.rank == 1 and data.x_test is not None and data.y_test is not None:
                row |= evaluate(data.x_test, data.y_test, epoch, "test")  # client 1 evaluates
                if data.x_val is not None and data.y_val is not None and len(data.y_val):
                    row |= evaluate(data.x_val, data.y_val, epoch, "val")
            row["seconds"] = time.perf_counter() - t0
            row["wire_bytes"] = channel.wire.total(epoch=epoch)
            row["wire_train_bytes"] = channel.wire.total(epoch=epoch, phase="train")
            history.append(row)
            if on_epoch is not None:
                on_epoch(history, weights)
            if checkpoints is not None:
                checkpoints.save(epoch, saved.state(history))
            if progress:
                print(f"client {spec.rank} epoch {epoch}: {json.dumps(row)}", flush=True)
        channel.begin_phase(0, "train")  # STOP is counted with the set-up (epoch 0)
        channel.send_control(Op.STOP)
        return PartyResult("client", spec.rank, history, weights(), turns.wire(channel),
                           defenses=defense_reports(defenses))
    finally:
        if joined:
            dist.destroy_process_group()


@dataclass
class _Serving:
    """The server's state over a session: each client's server (its own copy in SplitFed, one
    shared otherwise), the steps left in each client's phase, the training statistics and the
    SplitFed round in progress; :meth:`serve` handles whatever arrives next."""

    mode: str
    ushape: bool
    servers: dict[int, Server]
    channels: dict[int, DistChannel]
    device: torch.device
    remaining: dict[int, int] = field(default_factory=dict)
    accs: dict[int, Accumulator] = field(default_factory=dict)
    rows: dict[int, int] = field(default_factory=dict)
    synced: dict[int, int] = field(default_factory=dict)
    active: list[int] = field(default_factory=list)
    history: dict[int, dict[str, Any]] = field(default_factory=dict)
    #: called when every client's training of an epoch is done, and when client 1 (which
    #: evaluates) begins the next epoch: where the server's checkpoints are taken
    round_end: Callable[[int], None] | None = None
    next_round: Callable[[int], None] | None = None

    def __post_init__(self) -> None:
        ranks = list(self.channels)
        self.remaining = dict.fromkeys(ranks, 0)
        self.accs = {r: Accumulator(self.device) for r in ranks}
        self.rows = dict.fromkeys(ranks, 0)
        self.active = list(ranks)

    def serve(self, ch: DistChannel) -> None:
        """The next message of client ``ch.peer``: a step of its current phase, or a control."""
        r = ch.peer
        server = self.servers[r]
        server.channel = ch
        if self.remaining[r] > 0:
            self._step(ch, r, server)
        else:
            self._control(ch, r, server)

    def _step(self, ch: DistChannel, r: int, server: Server) -> None:
        ids = ch.next_ids(Kind.ACTIVATIONS)
        self.remaining[r] -= 1
        if ch.phase == "train":
            out = train_step(ids, ushape=self.ushape, server=server)
            if out is not None:  # vanilla: the server holds the loss
                self.accs[r].add(*out, ch.last[Kind.LABELS])
            self.rows[r] += len(ids)
        else:
            server.eval_step(ids)
        if self.remaining[r] == 0:
            self._end_phase(ch, r)

    def _control(self, ch: DistChannel, r: int, server: Server) -> None:
        op, a, b, c = ch.recv_control()
        if op == Op.PHASE:
            if not 0 <= b < len(PHASES) or c < 0:
                raise WireError(f"rank 0: bad PHASE control from rank {r}: {(a, b, c)}")
            begin_phase(ch, (server,), a, PHASES[b])
            self.remaining[r] = c
            server.train(ch.phase == "train")
            if ch.phase == "train":
                self.accs[r] = Accumulator(self.device)
                self.history.setdefault(a, {"epoch": a, "t0": time.perf_counter()})
                if r == 1 and a > 1 and self.next_round is not None:
                    self.next_round(a - 1)
            if c == 0:
                self._end_phase(ch, r)
        elif op == Op.SYNC and self.mode == "splitfed":
            self._sync(r, a)
        elif op == Op.STOP:
            self.active.remove(r)
            if self.synced and len(self.synced) == len(self.active):
                raise WireError(f"rank 0: client rank {r} stopped in the middle of a round")
        else:
            raise WireError(f"rank 0: unexpected control {op.name} from client rank {r}")

    def _sync(self, r: int, epoch: int) -> None:
        """SplitFed: once every active client has synced, average the server copies (weighted
        by the rows each trained on), end the epoch and acknowledge."""
        self.synced[r] = self.rows[r]
        if len(self.synced) < len(self.active):
            return
        if len(self.synced) > 1:
            average_([self.servers[q].net for q in self.synced],
                     [self.synced[q] for q in self.synced])
        for q in self.synced:
            self.servers[q].end_epoch(epoch)
            self.rows[q] = 0
        if self.round_end is not None:
            self.round_end(epoch)
        for q in self.synced:
            self.channels[q].send_control(Op.ACK, epoch)
        self.synced.clear()

    def _end_phase(self, ch: DistChannel, r: int) -> None:
        if ch.phase != "train":
            return
        if not self.ushape:
            acc = self.accs[r]
            ch.send_tensor(Code.STATS, torch.tensor(
                [acc.loss.item(), float(acc.correct.item()), float(acc.n)], dtype=torch.float64))
        h = self.history.setdefault(ch.epoch, {"epoch": ch.epoch})
        h["train_seconds"] = time.perf_counter() - h.get("t0", time.perf_counter())
        if self.mode == "sequential" and r == max(self.channels):
            self.servers[r].end_epoch(ch.epoch)  # the last client's turn ends the epoch
            if self.round_end is not None:
                self.round_end(ch.epoch)

    def result(self, state: dict[str, dict[str, torch.Tensor]], transcript: Transcript
               ) -> PartyResult:
        wire = WireCounter()
        for ch in self.channels.values():
            wire.merge(ch.wire)
        hist = []
        for e in sorted(self.history):
            h = self.history[e]
            h.pop("t0", None)
            h["wire_bytes"] = wire.total(epoch=e)
            h["wire_train_bytes"] = wire.total(epoch=e, phase="train")
            hist.append(h)
        summary = wire.summary()
        summary["per_client"] = {str(r): ch.wire.summary()["bytes_total"]
                                 for r, ch in self.channels.items()}
        return PartyResult("server", 0, hist, state, summary, transcript)


class _ServerState:
    """What the server's checkpoint keeps: every distinct server's network and optimizer, their
    stateful plug-ins and the per-epoch history. Taken when every client has trained an epoch
    (:meth:`take`), kept once client 1 has evaluated it and begins the next (:meth:`keep`)."""

    def __init__(self, serving: _Serving, checkpoints: PartyCheckpoints | None,
                 on_checkpoint: Callable[[int, str], None] | None) -> None:
        self.serving, self.checkpoints, self.on_checkpoint = serving, checkpoints, on_checkpoint
        self.servers = list({id(s): s for s in serving.servers.values()}.values())
        self.plugins = {f"{i}.{k}": p for i, s in enumerate(self.servers)
                        for k, p in stateful_plugins(s.defenses, s.behaviour, None).items()}
        self.taken: dict[int, dict[str, Any]] = {}

    def load(self, epoch: int) -> None:
        assert self.checkpoints is not None
        saved = self.checkpoints.load(epoch)
        for s, state in zip(self.servers, saved["servers"], strict=True):
            _load_party_state(s.net, s.optimizer, state)
        load_plugin_states(self.plugins, saved["plugins"], self.checkpoints.path)
        self.serving.history = {int(e): h for e, h in saved["history"].items()}

    def take(self, epoch: int) -> None:
        self.taken[epoch] = {
            "servers": [_party_state(s.net, s.optimizer) for s in self.servers],
            "plugins": {k: p.state_dict() for k, p in self.plugins.items()},
            "history": copy.deepcopy(self.serving.history)}
        if self.on_checkpoint is not None:
            self.on_checkpoint(epoch, "round")

    def keep(self, epoch: int) -> None:
        if epoch in self.taken and self.checkpoints is not None:
            if self.on_checkpoint is not None:
                self.on_checkpoint(epoch, "kept")
            self.checkpoints.save(epoch, self.taken.pop(epoch))


def _agree_with_clients(held: dict[str, tuple[int, int]], channels: dict[int, DistChannel]
                        ) -> int:
    """The epoch every party resumes after (:func:`~splitpriv.distributed.resume.agree`), sent
    to each client that holds checkpoints (the others start afresh either way); a refusal is
    sent to them too before it is raised here."""
    asking = [r for r in channels if held[f"client rank {r}"][0] != NONE]
    try:
        resumed = agree(held)
    except ValueError:
        for r in asking:
            channels[r].send_control(Op.RESUME, NONE)
        raise
    for r in asking:
        channels[r].send_control(Op.RESUME, resumed)
    return resumed


def run_server(
    config: TrainConfig, spec: DistSpec, *, mode: str = "sequential",
    transcript: Transcript | None = None, eval_batch_size: int = EVAL_BATCH,
    device: torch.device | str = "cpu", checkpoints: PartyCheckpoints | None = None,
    on_resume: Callable[[int], None] | None = None,
    on_checkpoint: Callable[[int, str], None] | None = None,
) -> PartyResult:
    """Serve the K clients of a distributed session (rank 0) until every one has stopped.

    The transcript (``config.record_policy()`` unless given) is recorded here, from what crossed.
    With ``checkpoints``, the server's state is taken when every client has trained an epoch
    (``on_checkpoint(epoch, "round")``: the run directory saves the release log then) and kept
    when client 1 begins the next (``on_checkpoint(epoch, "kept")``: the transcript's part);
    the run resumes after the epoch every party holds (:func:`~splitpriv.distributed.resume.
    agree`), told to ``on_resume(epoch)``."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if spec.rank != 0:
        raise ValueError(f"the server is rank 0, got rank {spec.rank}")
    device = torch.device(device)
    defenses = build_defenses(config)
    topology = resolve_topology(config, defenses)
    ushape = topology == "ushape"
    joined = init_process_group(spec)
    try:
        _client_group(spec, mode)
        shape = run_dataset(config).describe(config)
        models = build_run_models(config, topology, device, shape)
        if transcript is None:
            transcript = Transcript(policy=config.record_policy())
        ranks = list(range(1, spec.world_size))
        key = run_key(config, mode=mode, world_size=spec.world_size)
        for r in ranks:  # every client authenticated, on this run, before any training message
            handshake(spec, r, key)
        channels = {
            r: DistChannel(r, split_specs(ushape, models, *shape),
                           transcript=transcript, timeout_s=spec.timeout_s,
                           max_rows=max(config.batch_size, eval_batch_size), device=device,
                           max_message_mb=spec.max_message_mb)
            for r in ranks
        }

        def serve(net: nn.Module, r: int) -> Server:
            return Server(net, channels[r], adam(config.lr), defenses=build_defenses(config),
                          behaviour=build_behaviour(config))

        if mode == "splitfed":
            servers = {r: serve(models.server if r == 1 else copy.deepcopy(models.server), r)
                       for r in ranks}
        else:
            servers = dict.fromkeys(ranks, serve(models.server, 1))
        mine = (int(ushape), config.depth, MODES.index(mode))
        held = {"the server": checkpoints.wire() if checkpoints is not None else (NONE, NONE)}
        for r in ranks:
            theirs, held[f"client rank {r}"] = parse_hello(
                *channels[r].expect_control(Op.HELLO, spec.turn_timeout_s))
            if theirs != mine:
                raise WireError(
                    f"rank 0: client rank {r} was configured differently (ushape, depth, mode) = "
                    f"{theirs}, the server {mine}"
                )
        serving = _Serving(mode, ushape, servers, channels, device)
        saved = _ServerState(serving, checkpoints, on_checkpoint)
        resumed = _agree_with_clients(held, channels)
        if resumed > 0:
            saved.load(resumed)
        if on_resume is not None:
            on_resume(resumed)
        if checkpoints is not None:
            serving.round_end, serving.next_round = saved.take, saved.keep
        while serving.active:
            serving.serve(select([channels[r] for r in serving.active if r not in serving.synced],
                                 spec.timeout_s))
        return serving.result(_state({"server": models.server}), transcript)
    finally:
        if joined:
            dist.destroy_process_group()


__all__ = ["PartyResult", "average_", "pack_client_state", "run_client", "run_server",
           "unpack_client_state"]
