"""The only way across the cut: a channel between client and server, and its transcript.

Every message that crosses carries a kind, the sample ids of its rows, a tensor, the epoch and the
phase (``train``, ``val`` or ``test``). The transcript keeps what crossed, keyed by sample id,
for the attacks that model a curious server. Recording can be limited to some epochs, kinds and
phases so that memory stays bounded.

Bytes are counted as the distributed wire (:mod:`splitpriv.distributed`) carries them: one
header, the ids and the payload per message (:func:`message_bytes`, :class:`WireCounter`); the
in-process :class:`CountingChannel` counts what a two-process run would send.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import numpy as np
import torch

from splitpriv.io import save_npz
from splitpriv.releases import PREFIX as RELEASES_PREFIX
from splitpriv.releases import ReleaseLog

#: the passes of an epoch, in the order the wire codes them
PHASES = ("train", "val", "test")


class Kind(str, Enum):
    """Message kinds. Directions are those of the vanilla and U-shaped topologies."""

    ACTIVATIONS = "activations"  # client -> server, (B, 16, 32)
    LABELS = "labels"  # client -> server, (B,) — vanilla topology only
    ACT_GRAD = "act_grad"  # server -> client, d loss / d activations, (B, 16, 32)
    SERVER_OUTPUT = "server_output"  # server -> client: logits (B, 5) or U-shape hidden (B, 128)
    OUTPUT_GRAD = "output_grad"  # client -> server, d loss / d server output (U-shape)


@dataclass
class Message:
    kind: Kind
    tensor: torch.Tensor
    ids: torch.Tensor  # (B,) int64 sample ids of the rows
    epoch: int
    phase: str


@dataclass(frozen=True)
class RecordPolicy:
    """Which messages the transcript keeps. ``None`` means all.

    Attributes:
        epochs: epochs to keep (1-based).
        kinds: message kinds to keep.
        phases: phases to keep (``train``, ``val``, ``test``).
        releases: blocks of epochs (first, last) over which every training release is kept
            per sample id (:class:`~splitpriv.releases.ReleaseLog`), whatever the other fields
            keep; empty: none.
    """

    epochs: frozenset[int] | None = None
    kinds: frozenset[Kind] | None = None
    phases: frozenset[str] | None = frozenset({"train", "test"})
    releases: tuple[tuple[int, int], ...] = ()

    def wants(self, kind: Kind, epoch: int, phase: str) -> bool:
        return (
            (self.epochs is None or epoch in self.epochs)
            and (self.kinds is None or kind in self.kinds)
            and (self.phases is None or phase in self.phases)
        )


NOTHING = RecordPolicy(epochs=frozenset(), kinds=frozenset(), phases=frozenset())


@dataclass
class Transcript:
    """What crossed the channel: per (kind, phase, epoch), sample ids and tensors.

    Tensors are detached CPU copies. ``get`` concatenates a key's chunks in arrival order.
    ``releases`` keeps every training release per sample id when the policy asks for it
    (:class:`~splitpriv.releases.ReleaseLog`).
    """

    policy: RecordPolicy = field(default_factory=RecordPolicy)
    chunks: dict[tuple[str, str, int], list[tuple[torch.Tensor, torch.Tensor]]] = field(
        default_factory=dict
    )
    releases: ReleaseLog | None = None

    def __post_init__(self) -> None:
        if self.releases is None and self.policy.releases:
            self.releases = ReleaseLog(self.policy.releases)

    def keeps_releases(self, kind: Kind, phase: str) -> bool:
        """Whether messages of ``kind`` and ``phase`` go to the release log (training
        activations, when the transcript keeps one)."""
        return self.releases is not None and kind is Kind.ACTIVATIONS and phase == "train"

    def wants(self, kind: Kind, epoch: int, phase: str) -> bool:
        """Whether :meth:`record` keeps anything of such a message (the policy's messages or
        the release log): a driver that builds messages only for a transcript asks this."""
        return self.policy.wants(kind, epoch, phase) or self.keeps_releases(kind, phase)

    def record(self, msg: Message) -> None:
        if self.keeps_releases(msg.kind, msg.phase):
            assert self.releases is not None
            self.releases.add(msg.ids, msg.tensor, msg.epoch)
        if not self.policy.wants(msg.kind, msg.epoch, msg.phase):
            return
        key = (msg.kind.value, msg.phase, msg.epoch)
        self.chunks.setdefault(key, []).append(
            (msg.ids.detach().to("cpu", copy=True), msg.tensor.detach().to("cpu", copy=True))
        )

    def keys(self) -> list[tuple[str, str, int]]:
        return sorted(self.chunks)

    def kinds(self) -> set[str]:
        return {k for k, _, _ in self.chunks}

    def epochs(self, kind: Kind | str, phase: str = "train") -> list[int]:
        kind = Kind(kind).value
        return sorted(e for k, p, e in self.chunks if k == kind and p == phase)

    def get(
        self, kind: Kind | str, *, phase: str = "train", epoch: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ids (N,) and tensors (N, ...) of one kind, phase and epoch (default: the last recorded).

        Raises:
            KeyError: the transcript holds no such message, with what it does hold.
        """
        kind = Kind(kind).value
        if epoch is None:
            epochs = self.epochs(kind, phase)
            epoch = epochs[-1] if epochs else -1
        key = (kind, phase, epoch)
        if key not in self.chunks:
            raise KeyError(
                f"transcript holds no {kind!r} messages for phase {phase!r}, epoch {epoch}; "
                f"it holds {self.keys()}"
            )
        ids, tensors = zip(*self.chunks[key], strict=True)
        return torch.cat(ids), torch.cat(tensors)

    def save(self, path: str | Path, keys: Iterable[tuple[str, str, int]] | None = None) -> None:
        """Write to ``.npz`` (one ids and one values array per key, and the release log's blocks;
        ``keys``: only those, no release log), atomically."""
        arrays: dict[str, np.ndarray] = {}
        if keys is None and self.releases is not None:
            arrays |= self.releases.arrays()
        for kind, phase, epoch in sorted(self.keys() if keys is None else keys):
            ids, values = self.get(kind, phase=phase, epoch=epoch)
            name = f"{kind}|{phase}|{epoch}"
            arrays[name + "|ids"] = ids.numpy()
            arrays[name + "|values"] = values.numpy()
        save_npz(path, arrays)

    def update(self, other: Transcript) -> None:
        """Take ``other``'s keys (replacing this transcript's chunks of the same keys) and its
        release log, if it has one."""
        self.chunks.update(other.chunks)
        if other.releases is not None:
            self.releases = other.releases

    @classmethod
    def load(cls, path: str | Path) -> Transcript:
        out = cls(policy=RecordPolicy(phases=None))
        with np.load(path, allow_pickle=False) as data:
            out.releases = ReleaseLog.from_arrays(
                {n: data[n] for n in data.files if n.startswith(RELEASES_PREFIX + "|")})
            for name in data.files:
                if name.startswith(RELEASES_PREFIX + "|"):
                    continue
                kind, phase, epoch, part = name.split("|")
                if part != "ids":
                    continue
                ids = torch.from_numpy(data[name])
                values = torch.from_numpy(data[f"{kind}|{phase}|{epoch}|values"])
                out.chunks[(kind, phase, int(epoch))] = [(ids, values)]
        return out


class Channel:
    """The interface both parties talk through. Subclasses move the tensors.

    Attributes:
        epoch, phase: stamped on every message (set by :meth:`begin_phase`).
    """

    epoch: int = 0
    phase: str = "train"

    def begin_phase(self, epoch: int, phase: str) -> None:
        """The messages that follow belong to ``epoch`` and ``phase`` (``train``, ``val``,
        ``test``); the drivers call this before every pass."""
        self.epoch, self.phase = epoch, phase

    def send(self, kind: Kind, tensor: torch.Tensor, ids: torch.Tensor) -> None:
        raise NotImplementedError

    def recv(self, kind: Kind) -> torch.Tensor:
        raise NotImplementedError


class InProcessChannel(Channel):
    """Both parties in one process: a mailbox per kind; every message enters the transcript.

    The receiver gets a detached tensor, never the sender's autograd graph, so nothing but the
    values crosses.
    """

    def __init__(self, transcript: Transcript | None = None) -> None:
        self.transcript = transcript if transcript is not None else Transcript(policy=NOTHING)
        self.epoch = 0
        self.phase = "train"
        self.boxes: dict[Kind, deque[torch.Tensor]] = {k: deque() for k in Kind}

    def send(self, kind: Kind, tensor: torch.Tensor, ids: torch.Tensor) -> None:
        tensor = tensor.detach()
        self.transcript.record(Message(kind, tensor, ids, self.epoch, self.phase))
        self.boxes[kind].append(tensor)

    def recv(self, kind: Kind) -> torch.Tensor:
        box = self.boxes[kind]
        if not box:
            raise RuntimeError(
                f"channel: no {kind.value!r} message waiting (protocol out of order)"
            )
        return box.popleft()


class StackedChannel(InProcessChannel):
    """K runs' in-process channels as one, for K runs stepping as one stacked model
    (``splitpriv.batched``): every message is (K, B, ...), and run k's slice, with its ids
    (``ids[k]`` of (K, B) ids; (B,) ids are every run's), enters run k's own transcript, as its
    channel would record it had it trained alone."""

    def __init__(self, transcripts: list[Transcript]) -> None:
        super().__init__()
        self.transcripts = transcripts

    def send(self, kind: Kind, tensor: torch.Tensor, ids: torch.Tensor) -> None:
        tensor = tensor.detach()
        for k, t in enumerate(self.transcripts):
            if t.wants(kind, self.epoch, self.phase):
                t.record(Message(kind, tensor[k], ids[k] if ids.dim() == 2 else ids, self.epoch,
                                 self.phase))
        self.boxes[kind].append(tensor)


# ----------------------------------------------------------------------------- byte counting

#: the distributed wire's header: int64[16] per message (:mod:`splitpriv.distributed.wire`)
HEADER_LEN = 16
HEADER_BYTES = HEADER_LEN * 8


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
