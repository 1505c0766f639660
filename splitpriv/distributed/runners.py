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
from splitpriv.distributed.channel import DistChannel, select
from splitpriv.distributed.handshake import handshake, run_key
from splitpriv.distributed.partition import ClientData
from splitpriv.distributed.spec import DistSpec, init_process_group
from splitpriv.distributed.wire import MODES, PHASES, Code, Op, Spec, WireError, kind_specs
from splitpriv.parties import Client, Server
from splitpriv.run import (
    TrainConfig,
    build_behaviour,
    build_defenses,
    build_run_models,
    defense_reports,
    resolve_topology,
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


def run_client(
    config: TrainConfig, spec: DistSpec, data: ClientData, *, mode: str = "sequential",
    eval_batch_size: int = EVAL_BATCH, progress: bool = False,
    on_epoch: Callable[[list[dict[str, Any]], Callable[[], dict]], None] | None = None,
) -> PartyResult:
    """Run one client (rank >= 1) of a distributed split-learning session to its end.

    ``config`` is the run's :class:`~splitpriv.run.TrainConfig` (depth, topology, seed, lr, batch
    size, epochs, defenses); the server must be given the same. ``on_epoch(history, weights)``
    is called after every epoch (the run directory saves it)."""
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
        models = build_run_models(config, "ushape" if ushape else "vanilla", device)
        handshake(spec, 0, run_key(config, mode=mode, world_size=spec.world_size))
        channel = DistChannel(
            0, kind_specs(ushape, cut_channels=config.cut_channels), timeout_s=spec.timeout_s,
            max_rows=max(config.batch_size, eval_batch_size), train_ids=data.train_ids,
            device=device, max_message_mb=spec.max_message_mb,
        )
        client = Client(models.client, data.x_train, data.y_train, channel, adam(config.lr),
                        head=models.head, defenses=defenses)
        k, n_clients = spec.rank, spec.n_clients
        generator = torch.Generator().manual_seed(config.seed + k - 1)
        sequential = mode == "sequential" and n_clients > 1
        if sequential:
            hand_specs = {Code.WEIGHTS: Spec((_handover_numel(client),), torch.float32, False)}
            prev = DistChannel(n_clients if k == 1 else k - 1, hand_specs,
                               timeout_s=spec.timeout_s, max_message_mb=spec.max_message_mb)
            nxt = DistChannel(1 if k == n_clients else k + 1, hand_specs,
                              timeout_s=spec.timeout_s, max_message_mb=spec.max_message_mb)
        evaluates = k == 1 and data.y_test is not None
        channel.send_control(Op.HELLO, int(ushape), config.depth, MODES.index(mode))

        def evaluate(x: torch.Tensor, y: torch.Tensor, epoch: int, phase: str) -> Any:
            begin_phase(channel, (client,), epoch, phase)
            chunks = eval_chunks(len(y), device, eval_batch_size)
            channel.send_control(Op.PHASE, epoch, PHASES.index(phase), len(chunks))
            return evaluate_client(client, x, y, chunks)

        def weights() -> dict[str, dict[str, torch.Tensor]]:
            return _state({"client": models.client} | ({"head": models.head} if models.head
                                                          else {}))

        history: list[dict[str, Any]] = []
        for epoch in range(1, config.epochs + 1):
            row: dict[str, Any] = {"epoch": epoch}
            if sequential and k > 1:
                prev.begin_phase(epoch, "train")
                unpack_client_state(client, prev.recv_tensor(Code.WEIGHTS, spec.turn_timeout_s))
            t0 = time.perf_counter()
            begin_phase(channel, (client,), epoch, "train")
            client.train(True)
            acc = Accumulator(device)
            steps = batches(len(data.y_train), config.batch_size, generator, device)
            channel.send_control(Op.PHASE, epoch, 0, len(steps))
            for ids in steps:
                client.send_activations(ids)
                if ushape:
                    loss, logits = client.head_step(ids)
                    acc.add(loss, logits, data.y_train[ids])
                client.apply_gradient()
            if ushape:
                row |= phase_fields("train", acc.stats())
            else:
                loss_sum, correct, n = channel.recv_tensor(Code.STATS).tolist()
                row |= {"train_loss": loss_sum / n, "train_accuracy": 100.0 * correct / n}
            client.end_epoch(epoch)
            row["train_seconds"] = time.perf_counter() - t0
            if sequential:
                nxt.begin_phase(epoch, "train")
                nxt.send_tensor(Code.WEIGHTS, pack_client_state(client), spec.turn_timeout_s)
                if k == 1:
                    prev.begin_phase(epoch, "train")
                    unpack_client_state(client,
                                        prev.recv_tensor(Code.WEIGHTS, spec.turn_timeout_s))
            elif mode == "splitfed":
                if group is not None:
                    _allreduce_average_(_client_modules(client), len(data.y_train), group)
                channel.send_control(Op.SYNC, epoch)
                channel.expect_control(Op.ACK, spec.turn_timeout_s)
            if evaluates:
                te = evaluate(data.x_test, data.y_test, epoch, "test")
                row |= phase_fields("test", te)
                if data.y_val is not None and len(data.y_val):
                    row |= phase_fields("val", evaluate(data.x_val, data.y_val, epoch, "val"))
            row["seconds"] = time.perf_counter() - t0
            row["wire_bytes"] = channel.wire.total(epoch=epoch)
            row["wire_train_bytes"] = channel.wire.total(epoch=epoch, phase="train")
            history.append(row)
            if on_epoch is not None:
                on_epoch(history, weights)
            if progress:
                print(f"client {k} epoch {epoch}: {json.dumps(row)}", flush=True)
        channel.begin_phase(0, "train")  # STOP is counted with the set-up (epoch 0)
        channel.send_control(Op.STOP)
        wire = channel.wire.summary()
        if sequential:
            handover = WireCounter()
            handover.merge(prev.wire)
            handover.merge(nxt.wire)
            wire["handover"] = handover.summary()
        return PartyResult("client", spec.rank, history, weights(), wire,
                           defenses=defense_reports(defenses))
    finally:
        if joined:
            dist.destroy_process_group()


def run_server(
    config: TrainConfig, spec: DistSpec, *, mode: str = "sequential",
    transcript: Transcript | None = None, eval_batch_size: int = EVAL_BATCH,
    device: torch.device | str = "cpu",
) -> PartyResult:
    """Serve the K clients of a distributed session (rank 0) until every one has stopped.

    The transcript (``config.record_policy()`` unless given) is recorded here, from what crossed."""
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
        models = build_run_models(config, topology, device)
        if transcript is None:
            transcript = Transcript(policy=config.record_policy())
        ranks = list(range(1, spec.world_size))
        key = run_key(config, mode=mode, world_size=spec.world_size)
        for r in ranks:  # every client authenticated, on this run, before any training message
            handshake(spec, r, key)
        channels = {
            r: DistChannel(r, kind_specs(ushape, cut_channels=config.cut_channels),
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
            shared = serve(models.server, 1)
            servers = dict.fromkeys(ranks, shared)
        for r in ranks:
            a, b, c = channels[r].expect_control(Op.HELLO, spec.turn_timeout_s)
            mine = (int(ushape), config.depth, MODES.index(mode))
            if (a, b, c) != mine:
                raise WireError(
                    f"rank 0: client rank {r} was configured differently (ushape, depth, mode) = "
                    f"{(a, b, c)}, the server {mine}"
                )

        def end_phase(ch: DistChannel, r: int) -> None:
            _end_phase(ch, accs, r, ushape, history)
            if ch.phase == "train" and mode == "sequential" and r == ranks[-1]:
                servers[r].end_epoch(ch.epoch)  # the last client's turn ends the epoch

        remaining = dict.fromkeys(ranks, 0)
        accs = {r: Accumulator(device) for r in ranks}
        rows = dict.fromkeys(ranks, 0)
        synced: dict[int, int] = {}
        active = list(ranks)
        history: dict[int, dict[str, Any]] = {}
        while active:
            pollable = [channels[r] for r in active if r not in synced]
            ch = select(pollable, spec.timeout_s)
            r = ch.peer
            server = servers[r]
            server.channel = ch
            if remaining[r] > 0:
                ids = ch.next_ids(Kind.ACTIVATIONS)
                remaining[r] -= 1
                if ch.phase == "train":
                    if ushape:
                        server.forward(ids)
                        server.backward(ids)
                    else:
                        loss, logits = server.step(ids)
                        accs[r].add(loss, logits, ch.last[Kind.LABELS])
                    rows[r] += len(ids)
                else:
                    server.eval_step(ids)
                if remaining[r] == 0:
                    end_phase(ch, r)
                continue
            op, a, b, c = ch.recv_control()
            if op == Op.PHASE:
                if not 0 <= b < len(PHASES) or c < 0:
                    raise WireError(f"rank 0: bad PHASE control from rank {r}: {(a, b, c)}")
                begin_phase(ch, (server,), a, PHASES[b])
                remaining[r] = c
                server.train(ch.phase == "train")
                if ch.phase == "train":
                    accs[r] = Accumulator(device)
                    history.setdefault(a, {"epoch": a, "t0": time.perf_counter()})
                if c == 0:
                    end_phase(ch, r)
            elif op == Op.SYNC and mode == "splitfed":
                synced[r] = rows[r]
                if len(synced) == len(active):
                    if len(synced) > 1:
                        average_([servers[q].net for q in synced], [synced[q] for q in synced])
                    for q in synced:
                        servers[q].end_epoch(a)
                        rows[q] = 0
                        channels[q].send_control(Op.ACK, a)
                    synced.clear()
            elif op == Op.STOP:
                active.remove(r)
                if synced and len(synced) == len(active):
                    raise WireError(f"rank 0: client rank {r} stopped in the middle of a round")
            else:
                raise WireError(f"rank 0: unexpected control {op.name} from client rank {r}")
        wire = WireCounter()
        for ch in channels.values():
            wire.merge(ch.wire)
        hist = []
        for e in sorted(history):
            h = history[e]
            h.pop("t0", None)
            h["wire_bytes"] = wire.total(epoch=e)
            h["wire_train_bytes"] = wire.total(epoch=e, phase="train")
            hist.append(h)
        summary = wire.summary()
        summary["per_client"] = {str(r): channels[r].wire.summary()["bytes_total"] for r in ranks}
        return PartyResult("server", 0, hist, _state({"server": models.server}), summary,
                           transcript)
    finally:
        if joined:
            dist.destroy_process_group()


def _end_phase(ch: DistChannel, accs: dict, r: int, ushape: bool,
               history: dict[int, dict[str, Any]]) -> None:
    if ch.phase != "train":
        return
    if not ushape:
        acc = accs[r]
        ch.send_tensor(Code.STATS, torch.tensor(
            [acc.loss.item(), float(acc.correct.item()), float(acc.n)], dtype=torch.float64))
    h = history.setdefault(ch.epoch, {"epoch": ch.epoch})
    h["train_seconds"] = time.perf_counter() - h.get("t0", time.perf_counter())


__all__ = ["PartyResult", "average_", "pack_client_state", "run_client", "run_server",
           "unpack_client_state"]
