"""Client and server as separate processes over torch.distributed; one server, K clients.

The parties' code is that of :mod:`splitpriv.parties`; only the channel differs. A
:class:`DistChannel` moves each message as three point-to-point transfers (gloo over TCP, or nccl):

    header   int64[16]  magic, version, seq, code, dtype, epoch, phase, n_ids, ndim, shape[4],
                        numel, 0, 0                                     (tag 1)
    ids      int64[n_ids]  the sample ids of the rows                   (tag 2, absent if 0)
    payload  dtype[shape]                                               (tag 2, absent if empty)

No pickle crosses. The receiver checks every header against what it expects next (the kind, the
dtype and trailing shape declared for that kind, rows equal to the ids, the step's ids, the
sequence number, epoch and phase) before it allocates anything, and stops with a
:class:`WireError` naming the message. Every wait has a deadline: a peer that goes silent or dies
makes the other side raise :class:`PeerError` naming the awaited message, never hang.

Ranks: 0 is the server, 1..K the clients (one per data owner). Modes with K clients:

* ``sequential`` (Vepakomma et al. 2018): clients take turns, one local epoch each, in rank
  order; after its turn a client hands its weights and optimizer state to the next client
  directly (the server never sees them). Client 1 holds the test set and evaluates after each
  round, once client K has handed the weights back.
* ``splitfed`` (Thapa et al. 2022, SplitFedV1): clients train in parallel, each against its own
  copy of the server network. At the end of each round the clients average their networks among
  themselves (an all-reduce on a clients-only group: the server never sees client weights), the
  server averages its copies; both weighted by the rows each client trained on.

With K = 1 both modes are plain two-party split learning and give the in-process trainer's
numbers. Client k's batch order is drawn from a generator seeded ``seed + k - 1``.

The server's channel records what crossed (both directions) into the server's transcript, from
what arrived, so an attack reads exactly what crossed. Ids on the wire are training-set row ids
(a client maps its local rows through ``ClientData.train_ids``). Bytes are counted per message
(header, ids and payload) per kind, epoch and phase.
"""

from __future__ import annotations

import copy
import dataclasses
import datetime
import json
import os
import time
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from splitpriv.channel import NOTHING, Channel, InProcessChannel, Kind, Message, Transcript
from splitpriv.models import CUT_CHANNELS, CUT_LENGTH, HIDDEN, N_CLASSES, ModelConfig
from splitpriv.parties import Client, Server
from splitpriv.trainer import EVAL_BATCH

MAGIC = 0x53504C4954  # "SPLIT"
VERSION = 1
HEADER_LEN = 16
MAX_NDIM = 4
HEADER_BYTES = HEADER_LEN * 8
TAG_HEADER, TAG_BODY = 1, 2
MODES = ("sequential", "splitfed")
PHASES = ("train", "val", "test")


class Code(IntEnum):
    """Wire codes: the five :class:`Kind` s plus this module's control kinds."""

    ACTIVATIONS = 1
    LABELS = 2
    ACT_GRAD = 3
    SERVER_OUTPUT = 4
    OUTPUT_GRAD = 5
    CONTROL = 16  # int64 (4,): op, a, b, c
    STATS = 17  # float64 (3,): loss sum, correct, rows (vanilla: server -> client)
    WEIGHTS = 18  # float32 (n,): client state handed from client to client (sequential)

    @property
    def label(self) -> str:
        return Kind[self.name].value if self.name in Kind.__members__ else self.name.lower()


class Op(IntEnum):
    """Control operations (``Code.CONTROL`` payload[0])."""

    HELLO = 1  # a=ushape, b=depth, c=mode
    PHASE = 2  # a=epoch, b=phase code, c=number of steps that follow
    SYNC = 3  # a=epoch (splitfed: round done, client weights averaged)
    ACK = 4  # a=epoch (server -> client: server copies averaged too)
    STOP = 5


DTYPES: dict[torch.dtype, int] = {
    torch.float32: 1, torch.float64: 2, torch.int64: 3, torch.float16: 4, torch.bfloat16: 5,
    torch.int32: 6, torch.uint8: 7,
}
DTYPE_OF = {v: k for k, v in DTYPES.items()}


class ChannelError(RuntimeError):
    """The distributed channel stopped: a malformed message, or a peer that died or went silent."""


class WireError(ChannelError):
    """A message that is not what the protocol expects (kind, dtype, shape, size, order)."""


class PeerError(ChannelError):
    """The peer died, closed the connection, or sent nothing within the timeout."""


@dataclass(frozen=True)
class Spec:
    """What a kind must look like. ``rows``: dim 0 is the batch, equal to the ids sent with it;
    ``shape`` is then the trailing shape, else the whole shape."""

    shape: tuple[int, ...]
    dtype: torch.dtype
    rows: bool = True


def kind_specs(ushape: bool, weights_numel: int | None = None) -> dict[Code, Spec]:
    """The declared shape and dtype of every kind, for a topology."""
    cut = (CUT_CHANNELS, CUT_LENGTH)
    out = (HIDDEN,) if ushape else (N_CLASSES,)
    specs = {
        Code.ACTIVATIONS: Spec(cut, torch.float32),
        Code.LABELS: Spec((), torch.int64),
        Code.ACT_GRAD: Spec(cut, torch.float32),
        Code.SERVER_OUTPUT: Spec(out, torch.float32),
        Code.OUTPUT_GRAD: Spec((HIDDEN,), torch.float32),
        Code.CONTROL: Spec((4,), torch.int64, rows=False),
        Code.STATS: Spec((3,), torch.float64, rows=False),
    }
    if weights_numel is not None:
        specs[Code.WEIGHTS] = Spec((weights_numel,), torch.float32, rows=False)
    return specs


# ----------------------------------------------------------------------------- the header


@dataclass(frozen=True)
class Header:
    seq: int
    code: int
    dtype: int
    epoch: int
    phase: int
    n_ids: int
    shape: tuple[int, ...]
    numel: int

    def encode(self) -> torch.Tensor:
        dims = list(self.shape) + [0] * (MAX_NDIM - len(self.shape))
        return torch.tensor(
            [MAGIC, VERSION, self.seq, self.code, self.dtype, self.epoch, self.phase, self.n_ids,
             len(self.shape), *dims, self.numel, 0, 0],
            dtype=torch.int64,
        )

    @classmethod
    def decode(cls, buf: torch.Tensor) -> Header:
        """Parse a received header; raises :class:`WireError` on a malformed layout."""
        v = [int(x) for x in buf.tolist()]
        if len(v) != HEADER_LEN or v[0] != MAGIC:
            raise WireError(f"bad magic {v[0]:#x} (not a splitpriv header)")
        if v[1] != VERSION:
            raise WireError(f"wire version {v[1]}, this side speaks {VERSION}")
        ndim = v[8]
        if not 0 <= ndim <= MAX_NDIM:
            raise WireError(f"ndim {ndim} outside 0..{MAX_NDIM}")
        shape = tuple(v[9 : 9 + ndim])
        if not 0 <= v[6] < len(PHASES):
            raise WireError(f"phase code {v[6]} outside 0..{len(PHASES) - 1}")
        if any(d < 0 for d in shape) or v[7] < 0:
            raise WireError(f"negative size in shape {shape} / n_ids {v[7]}")
        h = cls(seq=v[2], code=v[3], dtype=v[4], epoch=v[5], phase=v[6], n_ids=v[7],
                shape=shape, numel=v[13])
        if math_prod(shape) != h.numel:
            raise WireError(f"numel {h.numel} does not match shape {shape}")
        return h

    def describe(self) -> str:
        name = Code(self.code).label if self.code in Code._value2member_map_ else f"#{self.code}"
        dtype = DTYPE_OF.get(self.dtype, f"dtype#{self.dtype}")
        return f"{name!r} {tuple(self.shape)} {dtype}"


def math_prod(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def check_header(
    h: Header, expect: Code, spec: Spec, *, seq: int, epoch: int | None, phase: str | None,
    max_rows: int, what: str,
) -> None:
    """Raise :class:`WireError` unless ``h`` is the message ``expect`` the receiver awaits."""

    def fail(reason: str) -> None:
        raise WireError(f"{what}: got {h.describe()} — {reason}")

    if h.code != expect:
        fail(f"expected kind {expect.label!r}")
    if h.seq != seq:
        fail(f"sequence number {h.seq}, expected {seq} (a message was lost or repeated)")
    if h.dtype != DTYPES[spec.dtype]:
        fail(f"expected dtype {spec.dtype}")
    if spec.rows:
        if len(h.shape) != 1 + len(spec.shape) or h.shape[1:] != spec.shape:
            fail(f"expected shape (B, {', '.join(map(str, spec.shape))})".replace(", )", ")"))
        if h.shape[0] != h.n_ids:
            fail(f"{h.shape[0]} rows but {h.n_ids} ids")
        if not 0 < h.n_ids <= max_rows:
            fail(f"{h.n_ids} rows, expected 1..{max_rows}")
    else:
        if h.shape != spec.shape:
            fail(f"expected shape {spec.shape}")
        if h.n_ids != 0:
            fail(f"{h.n_ids} ids on a message that carries none")
    if epoch is not None and h.epoch != epoch:
        fail(f"epoch {h.epoch}, expected {epoch}")
    if phase is not None and h.phase != PHASES.index(phase):
        fail(f"phase code {h.phase}, expected {phase!r}")


# ----------------------------------------------------------------------------- byte counting


def message_bytes(tensor: torch.Tensor, n_ids: int) -> int:
    """Bytes one message takes on the wire: header, ids and payload."""
    return HEADER_BYTES + 8 * n_ids + tensor.numel() * tensor.element_size()


@dataclass
class WireCounter:
    """Messages and bytes per (direction, kind, epoch, phase)."""

    counts: dict[tuple[str, str, int, str], list[int]] = field(
        default_factory=lambda: defaultdict(lambda: [0, 0])
    )

    def add(self, direction: str, kind: str, epoch: int, phase: str, nbytes: int) -> None:
        c = self.counts[(direction, kind, epoch, phase)]
        c[0] += 1
        c[1] += nbytes

    def merge(self, other: WireCounter) -> None:
        for key, (n, b) in other.counts.items():
            c = self.counts[key]
            c[0] += n
            c[1] += b

    def total(self, *, epoch: int | None = None, phase: str | None = None,
              direction: str | None = None) -> int:
        return sum(
            b for (d, _, e, p), (_, b) in self.counts.items()
            if (epoch is None or e == epoch) and (phase is None or p == phase)
            and (direction is None or d == direction)
        )

    def summary(self) -> dict[str, Any]:
        """JSON-ready: totals, per epoch (train and eval separately) and per kind."""
        epochs = sorted({e for _, _, e, _ in self.counts if e > 0})
        per_epoch = []
        for e in epochs:
            per_epoch.append({
                "epoch": e,
                "train_bytes": self.total(epoch=e, phase="train"),
                "eval_bytes": self.total(epoch=e) - self.total(epoch=e, phase="train"),
                "sent": self.total(epoch=e, direction="sent"),
                "received": self.total(epoch=e, direction="received"),
            })
        by_kind: dict[str, dict[str, int]] = defaultdict(lambda: {"messages": 0, "bytes": 0})
        for (d, k, _, _), (n, b) in self.counts.items():
            by_kind[f"{d}:{k}"]["messages"] += n
            by_kind[f"{d}:{k}"]["bytes"] += b
        train = [r["train_bytes"] for r in per_epoch]
        return {
            "bytes_total": self.total(),
            "bytes_sent": self.total(direction="sent"),
            "bytes_received": self.total(direction="received"),
            "train_bytes_per_epoch": sum(train) / len(train) if train else 0.0,
            "per_epoch": per_epoch,
            "by_kind": dict(sorted(by_kind.items())),
        }


class CountingChannel(InProcessChannel):
    """The in-process channel, counting the bytes the distributed channel would put on the wire
    (one direction per message: the bytes that cross)."""

    def __init__(self, transcript: Transcript | None = None) -> None:
        super().__init__(transcript)
        self.wire = WireCounter()

    def send(self, kind: Kind, tensor: torch.Tensor, ids: torch.Tensor) -> None:
        self.wire.add("sent", kind.value, self.epoch, self.phase, message_bytes(tensor, len(ids)))
        super().send(kind, tensor, ids)


# ----------------------------------------------------------------------------- the channel


def _describe_failure(exc: BaseException) -> str:
    text = str(exc)
    if "Timed out" in text or "timed out" in text or "timeout" in text.lower():
        return "timed out"
    if "closed" in text.lower() or "reset" in text.lower() or "EOF" in text:
        return "closed"
    return "failed"


class DistChannel(Channel):
    """One party's end of the link to one peer rank, over torch.distributed point-to-point.

    Attributes:
        epoch, phase: stamped on every message sent and checked on every message received
            (the runners set them, as the trainer sets those of the in-process channel).
        transcript: what crossed (sent and received), recorded on this side.
        wire: bytes and messages per kind, epoch and phase.
        last: the last tensor received per kind.
    """

    def __init__(
        self,
        peer: int,
        specs: dict[Code, Spec],
        *,
        transcript: Transcript | None = None,
        timeout_s: float = 120.0,
        max_rows: int = 65536,
        train_ids: torch.Tensor | None = None,
        device: torch.device | str = "cpu",
        group: Any = None,
    ) -> None:
        self.peer, self.specs, self.timeout_s, self.max_rows = peer, specs, timeout_s, max_rows
        self.transcript = transcript if transcript is not None else Transcript(policy=NOTHING)
        self.train_ids = train_ids.cpu() if train_ids is not None else None
        self.device = torch.device(device)
        self.group = group
        self.backend = dist.get_backend(group)
        self.wire_device = (
            torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl"
            else torch.device("cpu")
        )
        self.rank = dist.get_rank()
        self.epoch, self.phase = 0, "train"
        self.wire = WireCounter()
        self.last: dict[Kind, torch.Tensor] = {}
        self._send_seq = self._recv_seq = 0
        self._step_ids: torch.Tensor | None = None  # wire ids of the step in progress
        self._inbox: list[tuple[Code, torch.Tensor, torch.Tensor]] = []
        self._header: torch.Tensor | None = None  # a header already received (select)

    # -- what the parties call
    def send(self, kind: Kind, tensor: torch.Tensor, ids: torch.Tensor) -> None:
        tensor = tensor.detach()
        wire_ids = ids.cpu()
        if self.phase == "train" and self.train_ids is not None:
            wire_ids = self.train_ids[wire_ids]
        if kind == Kind.ACTIVATIONS:
            self._step_ids = wire_ids
        self._send(Code[kind.name], tensor, wire_ids)
        self.transcript.record(Message(kind, tensor, wire_ids, self.epoch, self.phase))

    def recv(self, kind: Kind) -> torch.Tensor:
        code = Code[kind.name]
        if self._inbox:
            got, payload, _ = self._inbox.pop(0)
            if got != code:
                raise WireError(f"{self._what(code)}: a {got.label!r} message is waiting instead")
            return payload
        payload, _ = self._recv_data(code)
        return payload

    def next_ids(self, kind: Kind) -> torch.Tensor:
        """Receive the next message (of ``kind``) now, keep it for :meth:`recv`; return its ids.

        The server learns a step's batch from the activations' ids this way."""
        code = Code[kind.name]
        payload, ids = self._recv_data(code)
        self._inbox.append((code, payload, ids))
        return ids

    # -- control
    def send_control(self, op: Op, a: int = 0, b: int = 0, c: int = 0) -> None:
        self._send(Code.CONTROL, torch.tensor([int(op), a, b, c]), torch.empty(0, dtype=torch.long))

    def recv_control(self, timeout_s: float | None = None) -> tuple[Op, int, int, int]:
        payload, _ = self._recv(Code.CONTROL, timeout_s=timeout_s)
        op, a, b, c = (int(v) for v in payload.tolist())
        if op not in Op._value2member_map_:
            raise WireError(f"{self._what(Code.CONTROL)}: unknown control op {op}")
        return Op(op), a, b, c

    def expect_control(self, op: Op, timeout_s: float | None = None) -> tuple[int, int, int]:
        got, a, b, c = self.recv_control(timeout_s)
        if got != op:
            raise WireError(
                f"{self._what(Code.CONTROL)}: control {got.name}, expected {op.name}"
            )
        return a, b, c

    def send_tensor(self, code: Code, tensor: torch.Tensor,
                    timeout_s: float | None = None) -> None:
        """A rowless message (``STATS``, ``WEIGHTS``)."""
        self._send(code, tensor, torch.empty(0, dtype=torch.long), timeout_s=timeout_s)

    def recv_tensor(self, code: Code, timeout_s: float | None = None) -> torch.Tensor:
        return self._recv(code, timeout_s=timeout_s)[0]

    # -- the wire
    def _what(self, code: Code, seq: int | None = None) -> str:
        seq = self._recv_seq if seq is None else seq
        return (f"rank {self.rank} awaiting {code.label!r} message #{seq} from rank {self.peer} "
                f"(epoch {self.epoch}, {self.phase})")

    def _wait(self, work: Any, what: str, timeout_s: float) -> None:
        try:
            ok = work.wait(datetime.timedelta(seconds=timeout_s))
        except RuntimeError as exc:
            why = _describe_failure(exc)
            if why == "timed out":
                raise PeerError(f"{what}: nothing within {timeout_s:g} s (peer silent or stuck)"
                                ) from exc
            if why == "closed":
                raise PeerError(f"{what}: the peer closed the connection (it died or exited)"
                                ) from exc
            raise PeerError(f"{what}: transfer failed: {exc}") from exc
        if ok is False:
            raise PeerError(f"{what}: nothing within {timeout_s:g} s (peer silent or stuck)")

    def _send(self, code: Code, tensor: torch.Tensor, ids: torch.Tensor,
              timeout_s: float | None = None) -> None:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if tensor.dtype not in DTYPES or tensor.dim() > MAX_NDIM:
            raise WireError(f"cannot send {tensor.dtype} tensor of {tensor.dim()} dims")
        payload = tensor.to(self.wire_device).contiguous()
        header = Header(self._send_seq, int(code), DTYPES[tensor.dtype], self.epoch,
                        PHASES.index(self.phase), len(ids), tuple(tensor.shape), tensor.numel())
        parts = [(header.encode().to(self.wire_device), TAG_HEADER)]
        if len(ids):
            parts.append((ids.to(self.wire_device, torch.int64).contiguous(), TAG_BODY))
        if payload.numel():
            parts.append((payload, TAG_BODY))
        what = (f"rank {self.rank} sending {code.label!r} message #{self._send_seq} to rank "
                f"{self.peer} (epoch {self.epoch}, {self.phase})")
        # a send completes when the peer posts the matching receive; per tag, order is kept
        works = [dist.isend(t, self.peer, group=self.group, tag=tag) for t, tag in parts]
        for work in works:
            self._wait(work, what, timeout_s)
        self._send_seq += 1
        self.wire.add("sent", code.label, self.epoch, self.phase,
                      message_bytes(tensor, len(ids)))

    def post_header(self) -> Any:
        """Start receiving the next header (used by :func:`select`)."""
        buf = torch.empty(HEADER_LEN, dtype=torch.int64, device=self.wire_device)
        return buf, dist.irecv(buf, self.peer, group=self.group, tag=TAG_HEADER)

    def _recv(self, code: Code, timeout_s: float | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        what = self._what(code)
        if self._header is not None:
            buf, self._header = self._header, None
        else:
            buf, work = self.post_header()
            self._wait(work, what, timeout_s)
        try:
            h = Header.decode(buf.cpu())
        except WireError as exc:
            raise WireError(f"{what}: {exc}") from None
        spec = self.specs.get(code)
        if spec is None:
            raise WireError(f"{what}: this side does not accept {code.label!r} messages")
        data_kind = code.name in Kind.__members__
        check_header(h, code, spec, seq=self._recv_seq,
                     epoch=self.epoch if data_kind else None,
                     phase=self.phase if data_kind else None,
                     max_rows=self.max_rows, what=what)
        ids = torch.empty(h.n_ids, dtype=torch.int64, device=self.wire_device)
        payload = torch.empty(h.shape, dtype=DTYPE_OF[h.dtype], device=self.wire_device)
        works = [dist.irecv(t, self.peer, group=self.group, tag=TAG_BODY)
                 for t in (ids, payload) if t.numel()]
        for work in works:
            self._wait(work, what, timeout_s)
        self._recv_seq += 1
        # counted under the epoch and phase the sender stamped, as the sender counts it
        self.wire.add("received", code.label, h.epoch, PHASES[h.phase],
                      message_bytes(payload, h.n_ids))
        return payload.to(self.device), ids.cpu()

    def _recv_data(self, code: Code) -> tuple[torch.Tensor, torch.Tensor]:
        payload, ids = self._recv(code)
        kind = Kind[code.name]
        if kind == Kind.ACTIVATIONS:
            self._step_ids = ids
        elif self._step_ids is None or not torch.equal(ids, self._step_ids):
            raise WireError(
                f"{self._what(code, self._recv_seq - 1)}: its ids are not those of the step's "
                "activations"
            )
        if kind == Kind.LABELS and len(payload) and (
            int(payload.min()) < 0 or int(payload.max()) >= N_CLASSES
        ):
            raise WireError(f"{self._what(code, self._recv_seq - 1)}: labels outside "
                            f"0..{N_CLASSES - 1}")
        self.transcript.record(Message(kind, payload, ids, self.epoch, self.phase))
        self.last[kind] = payload
        return payload, ids


def select(channels: Sequence[DistChannel], timeout_s: float) -> DistChannel:
    """The channel whose peer sends next (any-source receive of the next header).

    Peers not in ``channels`` must not send a header meanwhile (the protocol ensures it)."""
    if len(channels) == 1:
        return channels[0]
    first = channels[0]
    if first.backend != "gloo":
        raise ChannelError("several clients need gloo (any-source receive); one client can use "
                           f"{first.backend}")
    buf = torch.empty(HEADER_LEN, dtype=torch.int64, device=first.wire_device)
    work = dist.irecv(buf, None, group=first.group, tag=TAG_HEADER)
    ranks = ", ".join(str(c.peer) for c in channels)
    first._wait(work, f"rank {first.rank} awaiting a message from any of ranks {ranks}",
                timeout_s)
    src = work._source_rank()
    for ch in channels:
        if ch.peer == src:
            ch._header = buf
            return ch
    raise WireError(f"rank {first.rank}: a header from rank {src}, not one of ranks {ranks}")


# ----------------------------------------------------------------------------- the runners


@dataclass
class DistSpec:
    """How this process reaches the others. Rank 0 is the server, ranks 1..K the clients.

    Attributes:
        rank, world_size: this process and the number of processes (K + 1).
        master_addr, master_port: the rendezvous (the server's address works).
        backend: ``gloo`` (CPU, TCP) or ``nccl``.
        timeout_s: longest wait for a message mid-protocol (a silent peer fails after this).
        turn_timeout_s: longest wait for a turn: the first message, a handed-over model, or the
            end of a SplitFed round (the slowest client's epoch).
    """

    rank: int
    world_size: int
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    backend: str = "gloo"
    timeout_s: float = 120.0
    turn_timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if self.world_size < 2:
            raise ValueError(f"world_size must be >= 2 (a server and a client), got "
                             f"{self.world_size}")
        if not 0 <= self.rank < self.world_size:
            raise ValueError(f"rank must be in 0..{self.world_size - 1}, got {self.rank}")

    @property
    def role(self) -> str:
        return "server" if self.rank == 0 else "client"

    @property
    def n_clients(self) -> int:
        return self.world_size - 1

    @classmethod
    def from_env(cls, **kw: Any) -> DistSpec:
        """From torchrun's variables RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT."""
        env = os.environ
        return cls(rank=int(env["RANK"]), world_size=int(env["WORLD_SIZE"]),
                   master_addr=env.get("MASTER_ADDR", "127.0.0.1"),
                   master_port=int(env.get("MASTER_PORT", 29500)), **kw)


def spec_from_cli(
    role: str, *, rank: int | None = None, world_size: int | None = None,
    master_addr: str | None = None, master_port: int | None = None, **kw: Any,
) -> DistSpec:
    """A :class:`DistSpec` from command-line values, each missing one from torchrun's variables
    (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). The role must agree with the rank; ``auto``
    takes it from the rank (one command line for every process, as torchrun starts them)."""
    env = os.environ

    def pick(value: Any, name: str, default: Any = None) -> Any:
        if value is not None:
            return value
        if name in env:
            return env[name]
        if default is None:
            raise ValueError(f"--{name.lower().replace('_', '-')} not given and ${name} unset")
        return default

    if role not in ("server", "client", "auto"):
        raise ValueError(f"role must be server, client or auto, got {role!r}")
    rank = int(pick(rank, "RANK", 0 if role == "server" else None))
    spec = DistSpec(
        rank=rank, world_size=int(pick(world_size, "WORLD_SIZE")),
        master_addr=str(pick(master_addr, "MASTER_ADDR", "127.0.0.1")),
        master_port=int(pick(master_port, "MASTER_PORT", 29500)), **kw,
    )
    if role != "auto" and spec.role != role:
        raise ValueError(f"--role {role} with rank {rank}: the server is rank 0, clients are "
                         f"ranks 1..{spec.world_size - 1}")
    return spec


def init_process_group(spec: DistSpec) -> bool:
    """Join the group (unless already joined); True if this call joined it."""
    if dist.is_initialized():
        return False
    dist.init_process_group(
        spec.backend, init_method=f"tcp://{spec.master_addr}:{spec.master_port}",
        rank=spec.rank, world_size=spec.world_size,
        timeout=datetime.timedelta(seconds=spec.turn_timeout_s),
    )
    return True


@dataclass
class ClientData:
    """One data owner's rows. ``train_ids``: their ids in the whole training set (what the wire
    carries; default: the local row numbers). Evaluation sets only on the evaluating client."""

    x_train: torch.Tensor  # (n, 1, 128) float32
    y_train: torch.Tensor  # (n,) int64
    train_ids: torch.Tensor | None = None
    x_test: torch.Tensor | None = None
    y_test: torch.Tensor | None = None
    x_val: torch.Tensor | None = None
    y_val: torch.Tensor | None = None


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


def _topology(config: Any) -> str:
    if config.defenses:
        from splitpriv.run import build_defenses

        return next((d.topology for d in build_defenses(config) if d.topology), config.topology)
    return config.topology


def _models(config: Any, ushape: bool, device: torch.device):
    from splitpriv.models import build_models

    models = build_models(ModelConfig(config.depth, config.paper_softmax), ushape=ushape,
                          seed=config.seed)
    for m in models.modules().values():
        m.to(device)
    return models


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
    config: Any, spec: DistSpec, data: ClientData, *, mode: str = "sequential",
    eval_batch_size: int = EVAL_BATCH, progress: bool = False,
) -> PartyResult:
    """Run one client (rank >= 1) of a distributed split-learning session to its end.

    ``config`` is a :class:`~splitpriv.run.TrainConfig` (depth, topology, seed, lr, batch size,
    epochs, defenses); the server must be given the same."""
    from splitpriv.trainer import Accumulator, adam, batches

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if spec.rank == 0:
        raise ValueError("rank 0 is the server; clients are ranks 1..world_size-1")
    if len(data.y_train) == 0:
        raise ValueError(f"client rank {spec.rank} holds no training rows")
    joined = init_process_group(spec)
    try:
        group = _client_group(spec, mode)
        device = data.x_train.device
        defenses = []
        if config.defenses:
            from splitpriv.run import build_defenses

            defenses = build_defenses(config)
        topology = next((d.topology for d in defenses if d.topology), config.topology)
        ushape = topology == "ushape"
        models = _models(config, ushape, device)
        channel = DistChannel(
            0, kind_specs(ushape), timeout_s=spec.timeout_s,
            max_rows=max(config.batch_size, eval_batch_size), train_ids=data.train_ids,
            device=device,
        )
        client = Client(models.client, data.x_train, data.y_train, channel, adam(config.lr),
                        head=models.head, defenses=defenses)
        k, n_clients = spec.rank, spec.n_clients
        generator = torch.Generator().manual_seed(config.seed + k - 1)
        sequential = mode == "sequential" and n_clients > 1
        if sequential:
            hand_specs = {Code.WEIGHTS: Spec((_handover_numel(client),), torch.float32, False)}
            prev = DistChannel(n_clients if k == 1 else k - 1, hand_specs,
                               timeout_s=spec.timeout_s)
            nxt = DistChannel(1 if k == n_clients else k + 1, hand_specs,
                              timeout_s=spec.timeout_s)
        evaluates = k == 1 and data.y_test is not None
        channel.send_control(Op.HELLO, int(ushape), config.depth, MODES.index(mode))

        def evaluate(x: torch.Tensor, y: torch.Tensor, epoch: int, phase: str) -> Any:
            channel.epoch, channel.phase = epoch, phase
            client.train(False)
            chunks = torch.arange(len(y), device=device).split(eval_batch_size)
            channel.send_control(Op.PHASE, epoch, PHASES.index(phase), len(chunks))
            acc = Accumulator(device)
            from splitpriv.parties import cross_entropy

            with torch.no_grad():
                for chunk in chunks:
                    client.send_eval(x[chunk], chunk)
                    logits = client.receive_eval()
                    acc.add(cross_entropy(logits, y[chunk]), logits, y[chunk])
            return acc.stats()

        history: list[dict[str, Any]] = []
        for epoch in range(1, config.epochs + 1):
            row: dict[str, Any] = {"epoch": epoch}
            if sequential and k > 1:
                channel.epoch = prev.epoch = epoch
                unpack_client_state(client, prev.recv_tensor(Code.WEIGHTS, spec.turn_timeout_s))
            t0 = time.perf_counter()
            channel.epoch, channel.phase = epoch, "train"
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
                stats = acc.stats()
                row |= {"train_loss": stats.loss, "train_accuracy": stats.accuracy}
            else:
                loss_sum, correct, n = channel.recv_tensor(Code.STATS).tolist()
                row |= {"train_loss": loss_sum / n, "train_accuracy": 100.0 * correct / n}
            for d in client.defenses:
                d.end_epoch(epoch)
            row["train_seconds"] = time.perf_counter() - t0
            if sequential:
                nxt.epoch = epoch
                nxt.send_tensor(Code.WEIGHTS, pack_client_state(client), spec.turn_timeout_s)
                if k == 1:
                    prev.epoch = epoch
                    unpack_client_state(client,
                                        prev.recv_tensor(Code.WEIGHTS, spec.turn_timeout_s))
            elif mode == "splitfed":
                if group is not None:
                    _allreduce_average_(_client_modules(client), len(data.y_train), group)
                channel.send_control(Op.SYNC, epoch)
                channel.expect_control(Op.ACK, spec.turn_timeout_s)
            if evaluates:
                te = evaluate(data.x_test, data.y_test, epoch, "test")
                row |= {"test_loss": te.loss, "test_accuracy": te.accuracy}
                if data.y_val is not None and len(data.y_val):
                    va = evaluate(data.x_val, data.y_val, epoch, "val")
                    row |= {"val_loss": va.loss, "val_accuracy": va.accuracy}
            row["seconds"] = time.perf_counter() - t0
            row["wire_bytes"] = channel.wire.total(epoch=epoch)
            row["wire_train_bytes"] = channel.wire.total(epoch=epoch, phase="train")
            history.append(row)
            if progress:
                print(f"client {k} epoch {epoch}: {json.dumps(row)}", flush=True)
        channel.epoch, channel.phase = 0, "train"  # STOP is counted with the set-up (epoch 0)
        channel.send_control(Op.STOP)
        wire = channel.wire.summary()
        if sequential:
            handover = WireCounter()
            handover.merge(prev.wire)
            handover.merge(nxt.wire)
            wire["handover"] = handover.summary()
        names = {"client": models.client} | ({"head": models.head} if models.head else {})
        return PartyResult("client", spec.rank, history, _state(names), wire)
    finally:
        if joined:
            dist.destroy_process_group()


def run_server(
    config: Any, spec: DistSpec, *, mode: str = "sequential", transcript: Transcript | None = None,
    eval_batch_size: int = EVAL_BATCH, device: torch.device | str = "cpu",
) -> PartyResult:
    """Serve the K clients of a distributed session (rank 0) until every one has stopped.

    The transcript (``config.record_policy()`` unless given) is recorded here, from what crossed."""
    from splitpriv.trainer import Accumulator, adam

    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    if spec.rank != 0:
        raise ValueError(f"the server is rank 0, got rank {spec.rank}")
    device = torch.device(device)
    joined = init_process_group(spec)
    try:
        _client_group(spec, mode)
        topology = _topology(config)
        ushape = topology == "ushape"
        models = _models(config, ushape, device)
        if transcript is None:
            transcript = Transcript(policy=config.record_policy())
        ranks = list(range(1, spec.world_size))
        channels = {
            r: DistChannel(r, kind_specs(ushape), transcript=transcript, timeout_s=spec.timeout_s,
                           max_rows=max(config.batch_size, eval_batch_size), device=device)
            for r in ranks
        }
        if mode == "splitfed":
            nets = {r: models.server if r == 1 else copy.deepcopy(models.server) for r in ranks}
            servers = {r: Server(nets[r], channels[r], adam(config.lr)) for r in ranks}
        else:
            shared = Server(models.server, channels[1], adam(config.lr))
            servers = dict.fromkeys(ranks, shared)
        for r in ranks:
            a, b, c = channels[r].expect_control(Op.HELLO, spec.turn_timeout_s)
            mine = (int(ushape), config.depth, MODES.index(mode))
            if (a, b, c) != mine:
                raise WireError(
                    f"rank 0: client rank {r} was configured differently (ushape, depth, mode) = "
                    f"{(a, b, c)}, the server {mine}"
                )
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
                    _end_phase(ch, accs, r, ushape, history)
                continue
            op, a, b, c = ch.recv_control()
            if op == Op.PHASE:
                if not 0 <= b < len(PHASES) or c < 0:
                    raise WireError(f"rank 0: bad PHASE control from rank {r}: {(a, b, c)}")
                ch.epoch, ch.phase, remaining[r] = a, PHASES[b], c
                server.train(ch.phase == "train")
                if ch.phase == "train":
                    accs[r] = Accumulator(device)
                    history.setdefault(a, {"epoch": a, "t0": time.perf_counter()})
                if c == 0:
                    _end_phase(ch, accs, r, ushape, history)
            elif op == Op.SYNC and mode == "splitfed":
                synced[r] = rows[r]
                if len(synced) == len(active):
                    if len(synced) > 1:
                        average_([servers[q].net for q in synced], [synced[q] for q in synced])
                    for q in synced:
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


# ----------------------------------------------------------------------------- local launch


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now (for a loopback rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


_PRELOAD = ["torch", "torch.distributed", "splitpriv.distributed", "splitpriv.trainer"]


def run_processes(calls: Sequence[tuple[Any, tuple]], *, deadline_s: float = 60.0,
                  wait_for: Sequence[int] | None = None) -> list[int]:
    """Run each ``fn(*args)`` in its own process (forkserver: torch is imported once); wait at
    most ``deadline_s`` for those in ``wait_for`` (default: all), then kill what is left.
    Returns the exit codes (-9: killed)."""
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(_PRELOAD)
    procs = [ctx.Process(target=fn, args=args, daemon=True) for fn, args in calls]
    for p in procs:
        p.start()
    end = time.monotonic() + deadline_s
    for i in range(len(procs)) if wait_for is None else wait_for:
        procs[i].join(max(0.0, end - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join(5)
    return [p.exitcode if p.exitcode is not None else -9 for p in procs]


def _party_main(rank: int, spec_kw: dict[str, Any], config: Any, data: ClientData | None,
                mode: str, path: str) -> None:
    """A spawned party: run it, save what it ended with (or its error) to ``path``."""
    torch.set_num_threads(1)
    try:
        spec = DistSpec(rank=rank, **spec_kw)
        if rank == 0:
            res = run_server(config, spec, mode=mode)
        else:
            assert data is not None
            res = run_client(config, spec, data, mode=mode)
        out = {"ok": True, "history": res.history, "state": res.state, "wire": res.wire,
               "transcript": dict(res.transcript.chunks) if res.transcript else None}
    except Exception as exc:  # reported to the parent, which raises
        out = {"ok": False, "error": type(exc).__name__, "message": str(exc)}
    torch.save(out, path)


def launch_local(
    config: Any, clients: Sequence[ClientData], *, mode: str = "sequential", workdir: str | Path,
    timeout_s: float = 30.0, deadline_s: float = 60.0,
) -> list[dict[str, Any]]:
    """A server and ``len(clients)`` clients as processes on this host (loopback, gloo).

    Returns each rank's outcome (``ok``, ``history``, ``state``, ``wire``, the server's
    ``transcript`` chunks). Raises :class:`ChannelError` if a party failed or overran."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    spec_kw = {"world_size": len(clients) + 1, "master_port": free_port(),
               "timeout_s": timeout_s, "turn_timeout_s": max(timeout_s, deadline_s)}
    paths = [str(workdir / f"rank{r}.pt") for r in range(len(clients) + 1)]
    calls = [(_party_main, (r, spec_kw, config, None if r == 0 else clients[r - 1], mode,
                            paths[r])) for r in range(len(clients) + 1)]
    codes = run_processes(calls, deadline_s=deadline_s)
    results = []
    for r, path in enumerate(paths):
        if not Path(path).exists():
            raise ChannelError(f"rank {r} left no result (exit code {codes[r]})")
        results.append(torch.load(path, weights_only=True))
    failed = [f"rank {r}: {res['error']}: {res['message']}" for r, res in enumerate(results)
              if not res["ok"]]
    if failed:
        raise ChannelError("; ".join(failed))
    return results


# ----------------------------------------------------------------------------- data and CLI


def partition_by_record(records: Sequence[int] | torch.Tensor, k: int) -> list[torch.Tensor]:
    """Row indices of ``k`` data owners, each holding whole records (patients).

    Records are dealt largest first to the owner with the fewest rows so far (ties: lowest
    owner), so the shares are balanced and deterministic."""
    records = torch.as_tensor(records)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    uniq, counts = torch.unique(records, return_counts=True)
    if len(uniq) < k:
        raise ValueError(f"{len(uniq)} records cannot be split across {k} clients")
    order = sorted(range(len(uniq)), key=lambda i: (-int(counts[i]), int(uniq[i])))
    load = [0] * k
    owner: dict[int, int] = {}
    for i in order:
        j = min(range(k), key=lambda q: (load[q], q))
        owner[int(uniq[i])] = j
        load[j] += int(counts[i])
    who = torch.tensor([owner[int(r)] for r in records.tolist()])
    return [torch.nonzero(who == j).flatten() for j in range(k)]


def load_client_data(config: Any, spec: DistSpec, device: torch.device) -> tuple[ClientData,
                                                                                   dict[str, Any]]:
    """This client's share of the protocol's training rows (whole records), and, on client 1,
    the validation and test sets."""
    from splitpriv.data import dataset_card, load_pool, make_split

    pool = load_pool(config.mitdb_dir, cache_dir=config.cache_dir)
    split = make_split(pool, config.protocol, val_fraction=config.resolved_val_fraction,
                       seed=config.data_seed)
    card = dataset_card(pool, split)
    n = config.train_subset
    x = torch.as_tensor(split.x_train[:n]).float().reshape(-1, 1, 128)
    y = torch.as_tensor(split.y_train[:n]).long()
    if spec.n_clients == 1:
        own = torch.arange(len(y))
    else:
        own = partition_by_record(torch.as_tensor(split.record_train[:n]), spec.n_clients)[
            spec.rank - 1]
    data = ClientData(x[own].to(device), y[own].to(device), train_ids=own)
    if spec.rank == 1:
        m = config.test_subset
        data.x_test = torch.as_tensor(split.x_test[:m]).float().reshape(-1, 1, 128).to(device)
        data.y_test = torch.as_tensor(split.y_test[:m]).long().to(device)
        data.x_val = torch.as_tensor(split.x_val).float().reshape(-1, 1, 128).to(device)
        data.y_val = torch.as_tensor(split.y_val).long().to(device)
    return data, card


def run_distributed(
    config: Any, out_dir: str | Path, spec: DistSpec, *, mode: str = "sequential",
    progress: bool = True,
) -> dict[str, Any]:
    """One process of a distributed run, writing its part of the run directory.

    Client 1 writes config.json, distributed.json, metrics.jsonl, weights.pt (client networks)
    and result.json (last, with the bytes on its link per epoch); the server writes
    transcript.npz, weights-server.pt and server.json (bytes over all links); client k > 1 writes
    client-k.json. No resume: a run that dies is rerun."""
    from splitpriv.io import resolve_device, torch_save, write_json, write_text
    from splitpriv.run import summarize

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    device = resolve_device(config.device)
    info = {"mode": mode, "clients": spec.n_clients, "backend": spec.backend,
            "world_size": spec.world_size}
    if spec.role == "server":
        res = run_server(config, spec, mode=mode, device=device)
        if res.transcript is not None and res.transcript.chunks:
            res.transcript.save(out / "transcript.npz")
        torch_save(res.state, out / "weights-server.pt")
        summary = {"role": "server", **info, "history": res.history, "wire": res.wire}
        write_json(out / "server.json", summary)
        return summary
    data, card = load_client_data(config, spec, device)
    res = run_client(config, spec, data, mode=mode, progress=progress)
    if spec.rank != 1:
        summary = {"role": "client", "rank": spec.rank, **info, "n_train": len(data.y_train),
                   "history": res.history, "wire": res.wire}
        write_json(out / f"client-{spec.rank}.json", summary)
        return summary
    write_json(out / "config.json", dataclasses.asdict(config))
    write_json(out / "distributed.json", {**info, "master_addr": spec.master_addr,
                                          "master_port": spec.master_port})
    write_text(out / "metrics.jsonl", "".join(json.dumps(h) + "\n" for h in res.history))
    torch_save(res.state, out / "weights.pt")
    has_val = data.y_val is not None and len(data.y_val) > 0
    result = {
        "protocol": config.protocol, "depth": config.depth, "seed": config.seed,
        "topology": _topology(config), "epochs": config.epochs,
        **summarize(res.history, has_val),
        "seconds": sum(h["seconds"] for h in res.history),
        "train_seconds_per_epoch": sum(h["train_seconds"] for h in res.history)
        / len(res.history),
        "n_train_client1": len(data.y_train),
        "n_val": 0 if data.y_val is None else len(data.y_val),
        "n_test": len(data.y_test), "device": str(device), "dataset": card,
        "distributed": info,
        "wire": res.wire,
    }
    write_json(out / "result.json", result)
    return result


__all__ = [
    "ChannelError", "ClientData", "Code", "CountingChannel", "DistChannel", "DistSpec", "Header",
    "Op", "PartyResult", "PeerError", "Spec", "WireCounter", "WireError", "check_header",
    "free_port", "init_process_group", "kind_specs", "launch_local", "load_client_data",
    "message_bytes", "run_processes",
    "partition_by_record", "run_client", "run_distributed", "run_server", "select",
    "spec_from_cli",
]
