"""One party's end of a distributed link (:class:`DistChannel`) and :func:`select` over several.

Every wait has a deadline: a peer that goes silent or dies makes the other side raise
:class:`~splitpriv.distributed.wire.PeerError` naming the awaited message, never hang. The
receiver checks every header (kind, dtype, trailing shape, rows equal to the ids, the step's ids,
sequence number, epoch and phase, at most ``max_bytes``), every frame of the body (its message,
index and size) and every float payload (finite), and stops with a
:class:`~splitpriv.distributed.wire.WireError` naming the message; a sender refuses to send a
non-finite tensor too. What crossed (both
directions) is recorded into the transcript on this side, and bytes are counted per message.
"""

from __future__ import annotations

import datetime
from collections.abc import Sequence
from typing import Any

import torch
import torch.distributed as dist

from splitpriv.channel import (
    NOTHING,
    Channel,
    Kind,
    Message,
    Transcript,
    WireCounter,
    message_bytes,
)
from splitpriv.distributed.wire import (
    CHUNK_BYTES,
    DTYPE_OF,
    DTYPES,
    FRAME_BYTES,
    FRAME_MAGIC,
    FRAME_PREFIX,
    HEADER_LEN,
    MAX_NDIM,
    PHASES,
    TAG_BODY,
    TAG_HEADER,
    ChannelError,
    Code,
    Header,
    Op,
    PeerError,
    Spec,
    WireError,
    check_header,
)
from splitpriv.models import N_CLASSES


def finite_or_raise(tensor: torch.Tensor, what: str) -> None:
    """Raise :class:`WireError` if a float ``tensor`` holds NaN or an infinity."""
    if tensor.is_floating_point() and tensor.numel() and not bool(torch.isfinite(tensor).all()):
        raise WireError(f"{what}: non-finite values (NaN or inf) in the payload")


def unframe(h: Header, frames: torch.Tensor, what: str) -> torch.Tensor:
    """The body (uint8) of the message ``h`` from its received ``frames`` (uint8
    ``(n, FRAME_BYTES)``); raises :class:`WireError` on a frame of another message, out of
    order, or a body of another size than ``h`` declares."""
    n = h.body_bytes()
    n_frames = -(-n // CHUNK_BYTES)
    if frames.dtype != torch.uint8 or tuple(frames.shape) != (n_frames, FRAME_BYTES):
        raise WireError(f"{what}: {tuple(frames.shape)} frames, expected ({n_frames}, "
                        f"{FRAME_BYTES})")
    prefixes = frames[:, : 8 * FRAME_PREFIX].contiguous().view(torch.int64)
    chunks = []
    for i in range(n_frames):
        magic, seq, index, total, size = (int(v) for v in prefixes[i])
        expected = min(CHUNK_BYTES, n - i * CHUNK_BYTES)
        if magic != FRAME_MAGIC or seq != h.seq or index != i:
            raise WireError(f"{what}: frame {i} of {n_frames} is not one of this message's "
                            f"(magic {magic:#x}, message #{seq}, frame {index})")
        if total != n or size != expected:
            raise WireError(f"{what}: a payload of {total:,} bytes (frame {i}: {size:,}), "
                            f"the header declared {n:,}")
        chunks.append(frames[i, 8 * FRAME_PREFIX : 8 * FRAME_PREFIX + size])
    return torch.cat(chunks) if chunks else torch.empty(0, dtype=torch.uint8)


def frame(h: Header, body: torch.Tensor, *, pad: bool = False) -> list[torch.Tensor]:
    """The frames (uint8) that carry ``body`` of the message ``h``; ``pad``: each padded to
    FRAME_BYTES (nccl needs equal sizes on both ends; gloo takes a shorter send)."""
    out = []
    for i, start in enumerate(range(0, len(body), CHUNK_BYTES)):
        chunk = body[start : start + CHUNK_BYTES]
        prefix = torch.tensor([FRAME_MAGIC, h.seq, i, len(body), len(chunk)],
                              dtype=torch.int64).view(torch.uint8)
        fill = FRAME_BYTES - len(prefix) - len(chunk) if pad else 0
        out.append(torch.cat([prefix, chunk, torch.zeros(fill, dtype=torch.uint8)]))
    return out


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
            (the runners set them with :meth:`begin_phase`, as the trainer does for the
            in-process channel).
        transcript: what crossed (sent and received), recorded on this side.
        wire: bytes and messages per kind, epoch and phase.
        last: the last tensor received per kind.
        max_bytes: the longest body a received header may declare (default: twice the longest
            message ``specs`` and ``max_rows`` allow; ``max_message_mb`` sets it, and must leave
            room for the longest such message).
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
        max_message_mb: float | None = None,
    ) -> None:
        self.peer, self.specs, self.timeout_s, self.max_rows = peer, specs, timeout_s, max_rows
        longest = max(spec.max_bytes(max_rows) for spec in specs.values())
        self.max_bytes = 2 * longest
        if max_message_mb is not None:
            self.max_bytes = int(max_message_mb * 2**20)
            if self.max_bytes < longest:
                raise ValueError(f"--max-message-mb {max_message_mb:g} is below this run's "
                                 f"longest message ({longest / 2**20:.3f} MB)")
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

    @staticmethod
    def _peer_error(exc: RuntimeError, what: str, timeout_s: float) -> PeerError:
        why = _describe_failure(exc)
        if why == "timed out":
            return PeerError(f"{what}: nothing within {timeout_s:g} s (peer silent or stuck)")
        if why == "closed":
            return PeerError(f"{what}: the peer closed the connection (it died or exited)")
        return PeerError(f"{what}: transfer failed: {str(exc).strip().splitlines()[0]}")

    def _post(self, op: Any, tensor: torch.Tensor, tag: int, what: str, timeout_s: float) -> Any:
        """``dist.isend`` / ``dist.irecv`` to the peer (posting fails at once on a closed link)."""
        try:
            return op(tensor, self.peer, group=self.group, tag=tag)
        except RuntimeError as exc:
            raise self._peer_error(exc, what, timeout_s) from exc

    def _wait(self, work: Any, what: str, timeout_s: float) -> None:
        try:
            ok = work.wait(datetime.timedelta(seconds=timeout_s))
        except RuntimeError as exc:
            raise self._peer_error(exc, what, timeout_s) from exc
        if ok is False:
            raise PeerError(f"{what}: nothing within {timeout_s:g} s (peer silent or stuck)")

    def _send(self, code: Code, tensor: torch.Tensor, ids: torch.Tensor,
              timeout_s: float | None = None) -> None:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        if tensor.dtype not in DTYPES or tensor.dim() > MAX_NDIM:
            raise WireError(f"cannot send {tensor.dtype} tensor of {tensor.dim()} dims")
        what = (f"rank {self.rank} sending {code.label!r} message #{self._send_seq} to rank "
                f"{self.peer} (epoch {self.epoch}, {self.phase})")
        finite_or_raise(tensor, what)
        header = Header(self._send_seq, int(code), DTYPES[tensor.dtype], self.epoch,
                        PHASES.index(self.phase), len(ids), tuple(tensor.shape), tensor.numel())
        body = torch.cat([ids.to(torch.int64).cpu().contiguous().view(torch.uint8),
                          tensor.cpu().contiguous().reshape(-1).view(torch.uint8)])
        self._transmit(header, body, what, timeout_s)
        self.wire.add("sent", code.label, self.epoch, self.phase,
                      message_bytes(tensor, len(ids)))

    def _transmit(self, header: Header, body: torch.Tensor, what: str, timeout_s: float) -> None:
        """Send ``header``, then ``body`` (uint8) in :func:`frame` s."""
        parts = [(header.encode(), TAG_HEADER)]
        parts += [(f, TAG_BODY) for f in frame(header, body, pad=self.backend == "nccl")]
        # a send completes when the peer posts the matching receive; per tag, order is kept
        works = [self._post(dist.isend, t.to(self.wire_device), tag, what, timeout_s)
                 for t, tag in parts]
        for work in works:
            self._wait(work, what, timeout_s)
        self._send_seq += 1

    def _recv_body(self, h: Header, what: str, timeout_s: float) -> torch.Tensor:
        """The body ``h`` declares (uint8), from its frames, each checked against ``h``."""
        n = h.body_bytes()
        n_frames = -(-n // CHUNK_BYTES)
        buf = torch.zeros(n_frames, FRAME_BYTES, dtype=torch.uint8, device=self.wire_device)
        works = [self._post(dist.irecv, buf[i], TAG_BODY, what, timeout_s)
                 for i in range(n_frames)]
        for work in works:
            self._wait(work, what, timeout_s)
        return unframe(h, buf.cpu(), what)

    def post_header(self, what: str, timeout_s: float) -> Any:
        """Start receiving the next header."""
        buf = torch.empty(HEADER_LEN, dtype=torch.int64, device=self.wire_device)
        return buf, self._post(dist.irecv, buf, TAG_HEADER, what, timeout_s)

    def _recv(self, code: Code, timeout_s: float | None = None
              ) -> tuple[torch.Tensor, torch.Tensor]:
        timeout_s = self.timeout_s if timeout_s is None else timeout_s
        what = self._what(code)
        if self._header is not None:
            buf, self._header = self._header, None
        else:
            buf, work = self.post_header(what, timeout_s)
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
                     max_rows=self.max_rows, what=what, max_bytes=self.max_bytes)
        body = self._recv_body(h, what, timeout_s)
        ids = body[: 8 * h.n_ids].view(torch.int64)
        payload = body[8 * h.n_ids :].view(DTYPE_OF[h.dtype]).reshape(h.shape)
        finite_or_raise(payload, what)
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
        classes = self.specs[code].classes or N_CLASSES
        if kind == Kind.LABELS and len(payload) and (
            int(payload.min()) < 0 or int(payload.max()) >= classes
        ):
            raise WireError(f"{self._what(code, self._recv_seq - 1)}: labels outside "
                            f"0..{classes - 1}")
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
    assert work is not None
    src = work._source_rank()
    for ch in channels:
        if ch.peer == src:
            ch._header = buf
            return ch
    raise WireError(f"rank {first.rank}: a header from rank {src}, not one of ranks {ranks}")


__all__ = ["DistChannel", "finite_or_raise", "frame", "select", "unframe"]
