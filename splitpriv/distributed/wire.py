"""The wire format of the distributed channel: header, codes, declared specs, errors.

Each message is a header and the frames of its body, point-to-point (gloo over TCP, or nccl):

    header   int64[16]  magic, version, seq, code, dtype, epoch, phase, n_ids, ndim, shape[4],
                        numel, 0, 0                                     (tag 1)
    frames   uint8[<= FRAME_BYTES] each: int64[5] prefix (FRAME_MAGIC, seq, index, body bytes,
             bytes in this frame), then that many bytes of the body: the ids (int64[n_ids]) then
             the payload (dtype[shape])                                 (tag 2, none if empty)

No pickle crosses. The receiver checks every header against what it expects next
(:func:`check_header`: kind, order, dtype, shape, at most ``max_bytes``) before it allocates
anything, then posts one receive of FRAME_BYTES per frame the header implies. A frame is never
larger than FRAME_BYTES, so gloo never sees a transfer longer than the buffer posted for it (which
aborts the process, gloo's enforce); a body of the wrong size, or a frame of another message, is
named by the frame prefix and refused with a :class:`WireError`. (A process that bypasses this
module and sends a raw transfer longer than a frame can still abort gloo: that is why peers
authenticate, :mod:`splitpriv.distributed.handshake`, before any training message.)
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum
from typing import Any

import torch

from splitpriv.channel import HEADER_BYTES, HEADER_LEN, PHASES, Kind
from splitpriv.models import CUT_CHANNELS, CUT_LENGTH, HIDDEN, N_CLASSES

MAGIC = 0x53504C4954  # "SPLIT"
VERSION = 1
MAX_NDIM = 4
TAG_HEADER, TAG_BODY = 1, 2
MODES = ("sequential", "splitfed")
FRAME_MAGIC = 0x4652414D45  # "FRAME"
FRAME_PREFIX = 5  # int64s before a frame's bytes
FRAME_BYTES = 256 * 1024  # the largest transfer of a body (prefix included)
CHUNK_BYTES = FRAME_BYTES - 8 * FRAME_PREFIX  # body bytes per frame
CONFIG_BYTES = 64 * 1024  # the longest run config the handshake exchanges (JSON)


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
    NONCE = 19  # uint8 (33,): holds-a-secret flag, 32 random bytes (handshake)
    PROOF = 20  # uint8 (32,): HMAC-SHA256 of the peer's nonce (handshake)
    CONFIG = 21  # uint8 (<= CONFIG_BYTES,): the run's config as JSON (handshake)

    @property
    def label(self) -> str:
        return Kind[self.name].value if self.name in Kind.__members__ else self.name.lower()


class Op(IntEnum):
    """Control operations (``Code.CONTROL`` payload[0])."""

    HELLO = 1  # a=ushape + 2 (latest + 1), b=depth + 16 (previous + 1), c=mode (resume.py)
    PHASE = 2  # a=epoch, b=phase code, c=number of steps that follow
    SYNC = 3  # a=epoch (splitfed: round done, client weights averaged)
    ACK = 4  # a=epoch (server -> client: server copies averaged too)
    STOP = 5
    RESUME = 6  # a=epoch every party resumes after (server -> a client holding checkpoints)


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
    upto: bool = False  # rowless, 1-d: any length 1..shape[0]
    classes: int | None = None  # labels: each in 0..classes-1

    def max_bytes(self, max_rows: int) -> int:
        """The longest body (ids and payload) a message of this kind may have."""
        item = torch.empty((), dtype=self.dtype).element_size()
        if self.rows:
            return max_rows * (8 + math_prod(self.shape) * item)
        return math_prod(self.shape) * item


def kind_specs(ushape: bool, weights_numel: int | None = None, *,
               cut_channels: int | None = None, cut: tuple[int, ...] | None = None,
               n_classes: int = N_CLASSES, hidden: tuple[int, ...] = (HIDDEN,)
               ) -> dict[Code, Spec]:
    """The declared shape and dtype of every kind, for a topology: the activations' ``cut``
    (default the paper model's (16, 32), or its bottleneck's ``(cut_channels, 32)``), the labels'
    ``n_classes`` and, U-shaped, the server's output ``hidden`` (:func:`split_specs` probes them
    from a run's models)."""
    cut = cut or (cut_channels or CUT_CHANNELS, CUT_LENGTH)
    out = hidden if ushape else (n_classes,)
    specs = {
        Code.ACTIVATIONS: Spec(cut, torch.float32),
        Code.LABELS: Spec((), torch.int64, classes=n_classes),
        Code.ACT_GRAD: Spec(cut, torch.float32),
        Code.SERVER_OUTPUT: Spec(out, torch.float32),
        Code.OUTPUT_GRAD: Spec(hidden, torch.float32),
        Code.CONTROL: Spec((4,), torch.int64, rows=False),
        Code.STATS: Spec((3,), torch.float64, rows=False),
    }
    if weights_numel is not None:
        specs[Code.WEIGHTS] = Spec((weights_numel,), torch.float32, rows=False)
    return specs


def split_specs(ushape: bool, models: Any, input_shape: tuple[int, ...], n_classes: int
                ) -> dict[Code, Spec]:
    """:func:`kind_specs` of a run's split models (:class:`~splitpriv.models.SplitModels`):
    the cut's shape probed from the client on inputs ``input_shape``, the server's output from
    the server on it."""
    from splitpriv.architectures import probe_shape

    cut = probe_shape(models.client, input_shape)
    return kind_specs(ushape, cut=cut, n_classes=n_classes,
                      hidden=probe_shape(models.server, cut) if ushape else (HIDDEN,))


#: the messages of the handshake (:mod:`splitpriv.distributed.handshake`)
HANDSHAKE_SPECS = {
    Code.NONCE: Spec((33,), torch.uint8, rows=False),
    Code.PROOF: Spec((32,), torch.uint8, rows=False),
    Code.CONFIG: Spec((CONFIG_BYTES,), torch.uint8, rows=False, upto=True),
}


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
        v = [int(x) for x in buf.reshape(-1).tolist()]
        if len(v) != HEADER_LEN:
            raise WireError(f"a header of {len(v)} values, expected {HEADER_LEN}")
        if v[0] != MAGIC:
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

    def body_bytes(self) -> int:
        """Bytes of the body this header declares (ids and payload); -1 for an unknown dtype."""
        dtype = DTYPE_OF.get(self.dtype)
        if dtype is None:
            return -1
        return 8 * self.n_ids + self.numel * torch.empty((), dtype=dtype).element_size()

    def describe(self) -> str:
        name = Code(self.code).label if self.code in Code._value2member_map_ else f"#{self.code}"
        dtype = DTYPE_OF.get(self.dtype, f"dtype#{self.dtype}")
        return f"{name!r} {tuple(self.shape)} {dtype}"


def math_prod(shape: Iterable[int]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _shape_problem(h: Header, spec: Spec, max_rows: int) -> str | None:
    """What is wrong with the header's shape and ids for ``spec``, or None."""
    if spec.upto:
        if len(h.shape) != 1 or not 0 < h.shape[0] <= spec.shape[0]:
            return f"expected shape (n,) with n in 1..{spec.shape[0]}"
    elif spec.rows:
        if len(h.shape) != 1 + len(spec.shape) or h.shape[1:] != spec.shape:
            return f"expected shape (B, {', '.join(map(str, spec.shape))})".replace(", )", ")")
        if h.shape[0] != h.n_ids:
            return f"{h.shape[0]} rows but {h.n_ids} ids"
        if not 0 < h.n_ids <= max_rows:
            return f"{h.n_ids} rows, expected 1..{max_rows}"
        return None
    elif h.shape != spec.shape:
        return f"expected shape {spec.shape}"
    if h.n_ids != 0:
        return f"{h.n_ids} ids on a message that carries none"
    return None


def check_header(
    h: Header, expect: Code, spec: Spec, *, seq: int, epoch: int | None, phase: str | None,
    max_rows: int, what: str, max_bytes: int | None = None,
) -> None:
    """Raise :class:`WireError` unless ``h`` is the message ``expect`` the receiver awaits (and
    declares at most ``max_bytes`` of body)."""

    def fail(reason: str) -> None:
        raise WireError(f"{what}: got {h.describe()} — {reason}")

    if h.code != expect:
        fail(f"expected kind {expect.label!r}")
    if h.seq != seq:
        fail(f"sequence number {h.seq}, expected {seq} (a message was lost or repeated)")
    if h.dtype != DTYPES[spec.dtype]:
        fail(f"expected dtype {spec.dtype}")
    if max_bytes is not None and h.body_bytes() > max_bytes:
        fail(f"declares {h.body_bytes():,} bytes, more than the maximum {max_bytes:,} "
             "(--max-message-mb)")
    problem = _shape_problem(h, spec, max_rows)
    if problem:
        fail(problem)
    if epoch is not None and h.epoch != epoch:
        fail(f"epoch {h.epoch}, expected {epoch}")
    if phase is not None and h.phase != PHASES.index(phase):
        fail(f"phase code {h.phase}, expected {phase!r}")


__all__ = [
    "CHUNK_BYTES", "CONFIG_BYTES", "DTYPES", "DTYPE_OF", "FRAME_BYTES", "FRAME_MAGIC",
    "FRAME_PREFIX", "HANDSHAKE_SPECS", "HEADER_BYTES", "HEADER_LEN", "MAGIC", "MAX_NDIM", "MODES",
    "PHASES", "TAG_BODY", "TAG_HEADER", "VERSION", "ChannelError", "Code", "Header", "Op",
    "PeerError", "Spec", "WireError", "check_header", "kind_specs", "math_prod",
]
