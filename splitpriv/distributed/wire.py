"""The wire format of the distributed channel: header, codes, declared specs, errors.

Each message is three point-to-point transfers (gloo over TCP, or nccl):

    header   int64[16]  magic, version, seq, code, dtype, epoch, phase, n_ids, ndim, shape[4],
                        numel, 0, 0                                     (tag 1)
    ids      int64[n_ids]  the sample ids of the rows                   (tag 2, absent if 0)
    payload  dtype[shape]                                               (tag 2, absent if empty)

No pickle crosses. The receiver checks every header against what it expects next
(:func:`check_header`) before it allocates anything.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

import torch

from splitpriv.channel import HEADER_BYTES, HEADER_LEN, PHASES, Kind
from splitpriv.models import CUT_CHANNELS, CUT_LENGTH, HIDDEN, N_CLASSES

MAGIC = 0x53504C4954  # "SPLIT"
VERSION = 1
MAX_NDIM = 4
TAG_HEADER, TAG_BODY = 1, 2
MODES = ("sequential", "splitfed")


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


__all__ = [
    "DTYPES", "DTYPE_OF", "HEADER_BYTES", "HEADER_LEN", "MAGIC", "MAX_NDIM", "MODES", "PHASES",
    "TAG_BODY", "TAG_HEADER", "VERSION", "ChannelError", "Code", "Header", "Op", "PeerError",
    "Spec", "WireError", "check_header", "kind_specs", "math_prod",
]
