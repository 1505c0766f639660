"""Every release of a training beat, as a curious server can keep it cheaply: per sample id, the
sum of the activations it received over blocks of epochs counted back from the last.

A server that holds a beat's T training releases can average them: under independent noise of
std sigma each, the mean of R releases made by the same map has noise sigma / sqrt(R). The client
changes as it trains, so the best number to combine is a trade-off the attacker makes on its own
beats (``attacks.releases``). Keeping every release costs T times the activations; this log keeps
a few blocks instead, ``windows`` (the default): the last epoch, the one before it, the two
before those, the four before those and the rest, so that the windows "the last 1, 2, 4, 8 epochs
and all of them" are unions of blocks. ``all`` keeps every epoch as its own block (every release,
T times the activations).

A release that is bitwise equal to the one the same id sent before (a replay: formal DP's
release budget re-sends kept releases while the client is frozen) carries nothing new and is not
counted again; the server can tell, since it compares what it holds.

Storage (``transcript.npz``): per block, the mean (float16 unless a value overflows it, then
float32) and the count of each id's fresh releases (uint16): about B x N x D x 2 bytes, 61 MB for
the 5 blocks of a 30-epoch run on 11,921 beats of 512 values (the last epoch's recorded
transcript: 77 MB).

Shape:
    releases (B, *shape) per message; a block's mean (N, *shape), count (N,).
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch

#: how a run keeps its releases (``TrainConfig.record_releases``)
RELEASE_RECORDING = ("none", "windows", "all")
#: the windows ``windows`` keeps: the last 1, 2, 4 and 8 epochs (and all of them)
WINDOW_EPOCHS = (1, 2, 4, 8)
#: the npz key prefix of a block: ``releases|FIRST-LAST|mean`` and ``...|count``
PREFIX = "releases"
_KEY = re.compile(rf"^{PREFIX}\|(\d+)-(\d+)\|(mean|count)$")


def release_blocks(epochs: int, spec: str) -> tuple[tuple[int, int], ...]:
    """The blocks (first epoch, last epoch) a run of ``epochs`` keeps, latest first.

    >>> release_blocks(10, "windows")
    ((10, 10), (9, 9), (7, 8), (3, 6), (1, 2))
    """
    if spec not in RELEASE_RECORDING:
        raise ValueError(f"record_releases must be one of {RELEASE_RECORDING}, got {spec!r}")
    if spec == "none" or epochs < 1:
        return ()
    if spec == "all":
        return tuple((e, e) for e in range(epochs, 0, -1))
    blocks, done = [], 0
    for n in WINDOW_EPOCHS:
        if n >= epochs:
            break
        blocks.append((epochs - n + 1, epochs - done))
        done = n
    return (*blocks, (1, epochs - done))


@functools.lru_cache(maxsize=8)
def _key_weights(d: int) -> np.ndarray:
    return np.random.default_rng(20201).integers(1, 2**63, size=d, dtype=np.uint64) | 1


def _row_keys(rows: torch.Tensor) -> torch.Tensor:
    """A key per float32 row (B, D): its bits as unsigned integers dotted with fixed odd random
    weights, modulo 2^64 (numpy's unsigned arithmetic wraps): exact, so a row has the same key
    however it is batched, equal rows equal keys, and two different rows share one with
    probability about 2^-64. Returned as int64 (the same bits)."""
    bits = np.ascontiguousarray(rows.numpy()).view(np.uint32)
    keys = np.einsum("ij,j->i", bits, _key_weights(rows.shape[1]), dtype=np.uint64)
    return torch.from_numpy(keys.view(np.int64))


@dataclass
class Window:
    """The mean of each id's releases in its last ``blocks`` blocks that hold any.

    Attributes:
        blocks: how many of the latest non-empty blocks it combines (1: the last release).
        mean: (n, *shape) float32 the combined release of each id.
        count: (n,) releases combined per id.
        first, last: the epochs the combined blocks span (over all ids).
    """

    blocks: int
    mean: torch.Tensor
    count: torch.Tensor
    first: int
    last: int

    @property
    def releases(self) -> float:
        """The mean number of releases combined per id."""
        return float(self.count.double().mean()) if len(self.count) else 0.0

    def describe(self) -> dict[str, float | int | list[int]]:
        return {"blocks": self.blocks, "epochs": [self.first, self.last],
                "releases_mean": self.releases, "releases_min": int(self.count.min())
                if len(self.count) else 0}


class ReleaseLog:
    """Per-id sums of the training activations received, by block of epochs (module docstring).

    Args:
        blocks: (first, last) epochs of each block, latest first (:func:`release_blocks`).
    """

    def __init__(self, blocks: tuple[tuple[int, int], ...]) -> None:
        self.blocks = tuple(blocks)
        self.shape: tuple[int, ...] | None = None
        self.sums: dict[int, torch.Tensor] = {}  # block -> (N, D) float32
        self.counts: dict[int, torch.Tensor] = {}  # block -> (N,) int32
        self.keys = torch.empty(0, dtype=torch.int64)  # (N,) each id's last release's key
        self.seen = torch.empty(0, dtype=torch.bool)  # (N,) whether it has sent one
        # the releases not yet folded in: (ids, first row in the buffer) per message, their rows
        # copied into one reused buffer
        self._pending: list[tuple[torch.Tensor, int]] = []
        self._pending_epoch = 0
        self._buffer: torch.Tensor | None = None
        self._filled = 0

    def block_of(self, epoch: int) -> int | None:
        return next((b for b, (lo, hi) in enumerate(self.blocks) if lo <= epoch <= hi), None)

    def _grow(self, n: int) -> None:
        """Room for sample ids below ``n`` in the keys and in every block."""
        if n > len(self.keys):
            extra = n - len(self.keys)
            self.keys = torch.cat([self.keys, torch.zeros(extra, dtype=torch.int64)])
            self.seen = torch.cat([self.seen, torch.zeros(extra, dtype=torch.bool)])
        for b in self.sums:
            short = n - len(self.sums[b])
            if short > 0:
                self.sums[b] = torch.cat([self.sums[b], torch.zeros(short,
                                                                    self.sums[b].shape[1])])
                self.counts[b] = torch.cat([self.counts[b],
                                            torch.zeros(short, dtype=torch.int32)])


    def add(self, ids: torch.Tensor, values: torch.Tensor, epoch: int) -> None:
        """Keep the training releases ``values`` (B, *shape) of sample ``ids`` (B,) of ``epoch``
        (a replayed release, equal to the id's previous one, is not counted again).

        The rows are copied into a buffer and folded in by :meth:`flush` (every reader flushes
        first): one pass over the epoch's releases instead of one per batch."""
        if len(ids) == 0:
            return
        if self._pending and self._pending_epoch != epoch:
            self.flush()
        shape = tuple(values.shape[1:])
        if self.shape is None:
            self.shape = shape
        elif shape != self.shape:
            raise ValueError(f"release log: activations {shape} after {self.shape}")
        self._pending_epoch = epoch
        ids = ids.detach().to("cpu").long()
        d = int(np.prod(shape))
        if self._buffer is None or self._buffer.shape[1] != d:
            self._buffer = torch.empty(max(len(self.keys), 4096), d)
        if self._filled + len(ids) > len(self._buffer):  # room for twice as many
            self._buffer = torch.cat([self._buffer, torch.empty(self._filled + len(ids), d)])
        self._buffer[self._filled:self._filled + len(ids)] = values.detach().to(
            "cpu", torch.float32).reshape(len(ids), -1)
        self._pending.append((ids, self._filled))
        self._filled += len(ids)

    def flush(self) -> None:
        """Fold the releases set aside in, in the order they came: each id's key compared with
        its last release's (a replay is not counted), the fresh ones summed into their epoch's
        block."""
        if not self._pending:
            return
        chunks, epoch, filled, buffer = self._pending, self._pending_epoch, self._filled, \
            self._buffer
        assert buffer is not None
        self._pending, self._filled = [], 0
        ids = torch.cat([i for i, _ in chunks])
        if len(torch.unique(ids)) == len(ids):  # every id once (an epoch): all at once
            self._fold(ids, buffer[:filled], epoch)
        else:  # an id released twice: batch by batch, in order
            for i, at in chunks:
                self._fold(i, buffer[at:at + len(i)], epoch)

    def _fold(self, ids: torch.Tensor, rows: torch.Tensor, epoch: int) -> None:
        """Fold releases ``rows`` (n, D) of the distinct ``ids`` (n,) of ``epoch`` in."""
        self._grow(int(ids.max()) + 1)
        key = _row_keys(rows)
        fresh = (key != self.keys[ids]) | ~self.seen[ids]
        self.keys[ids] = key
        self.seen[ids] = True
        b = self.block_of(epoch)
        if b is None or not bool(fresh.any()):
            return
        if not bool(fresh.all()):
            ids, rows = ids[fresh], rows[fresh]
        if b not in self.sums:
            self.sums[b] = torch.zeros(len(self.keys), rows.shape[1])
            self.counts[b] = torch.zeros(len(self.keys), dtype=torch.int32)
        self.sums[b].index_add_(0, ids, rows)
        self.counts[b].index_add_(0, ids, torch.ones(len(ids), dtype=torch.int32))

    def held(self) -> list[int]:
        """The indices of the blocks that hold a release, latest first."""
        self.flush()
        return sorted(self.sums)

    # -- saving and loading ------------------------------------------------------------------

    def block_arrays(self, b: int) -> dict[str, np.ndarray]:
        """Block ``b`` as npz arrays: its mean per id (float16, float32 if that overflows) and
        the count of releases per id (uint16)."""
        self.flush()
        lo, hi = self.blocks[b]
        count = self.counts[b]
        mean = self.sums[b] / count.clamp(min=1).unsqueeze(1)
        half = mean.half() if float(mean.abs().max()) < 65000 else mean  # else float32
        assert self.shape is not None
        name = f"{PREFIX}|{lo}-{hi}"
        return {f"{name}|mean": half.reshape(len(mean), *self.shape).numpy(),
                f"{name}|count": count.clamp(max=np.iinfo(np.uint16).max).to(
                    torch.int32).numpy().astype(np.uint16)}

    def arrays(self, last_epoch: int | None = None) -> dict[str, np.ndarray]:
        """Every block that holds a release (and ends by ``last_epoch``, if given)."""
        out: dict[str, np.ndarray] = {}
        for b in self.held():
            if last_epoch is None or self.blocks[b][1] <= last_epoch:
                out |= self.block_arrays(b)
        return out

    def state_arrays(self, epoch: int) -> dict[str, np.ndarray]:
        """What a run resumed after ``epoch`` needs beyond the finished blocks: each id's last
        key and the block in progress (exact float32 sums)."""
        self.flush()
        out = {"keys": self.keys.numpy(), "seen": self.seen.numpy(), "epoch": np.array(epoch)}
        b = self.block_of(epoch)
        if b is not None and self.blocks[b][1] > epoch and b in self.sums:
            out |= {"block": np.array(b), "sum": self.sums[b].numpy(),
                    "count": self.counts[b].numpy()}
        return out

    def restore(self, finished: Mapping[str, np.ndarray], state: Mapping[str, np.ndarray]
                ) -> None:
        """Back to the end of the epoch ``state`` was saved after: the finished blocks' arrays
        (:meth:`arrays`) and :meth:`state_arrays`."""
        self.sums.clear()
        self.counts.clear()
        self._pending, self._filled = [], 0
        for b, mean, count in _read_blocks(finished, self.blocks):
            self.shape = tuple(mean.shape[1:])
            n = len(count)
            self.sums[b] = mean.reshape(n, -1) * count.unsqueeze(1).float()
            self.counts[b] = count
        self.keys = torch.as_tensor(np.array(state["keys"]), dtype=torch.int64)
        self.seen = torch.as_tensor(np.array(state["seen"]), dtype=torch.bool)
        if "block" in state:
            b = int(state["block"])
            self.sums[b] = torch.as_tensor(np.array(state["sum"]))
            self.counts[b] = torch.as_tensor(np.array(state["count"]))
        self._grow(len(self.keys))  # a block finished before later ids came: padded

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ReleaseLog | None:
        """A log read back from npz arrays (None when they hold no block)."""
        spans = sorted({(int(m[1]), int(m[2])) for k in arrays if (m := _KEY.match(k))},
                       reverse=True)
        if not spans:
            return None
        log = cls(tuple(spans))
        for b, mean, count in _read_blocks(arrays, log.blocks):
            log.shape = tuple(mean.shape[1:])
            log.sums[b] = mean.reshape(len(count), -1) * count.unsqueeze(1).float()
            log.counts[b] = count
        return log

    # -- the windows an attack combines ------------------------------------------------------

    def released_ids(self) -> torch.Tensor:
        """(n,) the sample ids of which the log holds a release, ascending."""
        held = self.held()
        if not held:
            return torch.empty(0, dtype=torch.long)
        return torch.nonzero(torch.stack([self.counts[b] > 0 for b in held]).any(0)).flatten()

    def windows(self, ids: torch.Tensor) -> list[Window]:
        """For sample ``ids`` (n,), window j = 1, 2, ...: each id's mean release over its
        latest j blocks that hold a release of it (j up to the most any id has).

        Raises:
            KeyError: an id with no release at all.
        """
        held = self.held()  # block indices, latest first
        if not held:
            return []
        ids = ids.long()
        if len(ids) and int(ids.max()) >= len(self.counts[held[0]]):
            raise KeyError(f"release log: no release of sample id {int(ids.max())}")
        counts = torch.stack([self.counts[b][ids] for b in held])  # (B, n)
        sums = torch.stack([self.sums[b][ids] for b in held])  # (B, n, D)
        has = counts > 0
        if len(ids) and not bool(has.any(0).all()):
            missing = ids[~has.any(0)]
            raise KeyError(f"release log: no release of sample id {int(missing[0])}")
        rank = has.cumsum(0)  # the rank of each block among an id's non-empty ones
        out: list[Window] = []
        for j in range(1, int(rank.max()) + 1 if len(ids) else 1):
            take = has & (rank <= j)  # (B, n): every j adds a block for some id
            count = (counts * take).sum(0)
            mean = (sums * take.unsqueeze(2)).sum(0) / count.clamp(min=1).unsqueeze(1)
            spans = [self.blocks[held[i]] for i in range(len(held)) if bool(take[i].any())]
            out.append(Window(j, mean.reshape(len(ids), *(self.shape or ())).float(), count,
                              min(s[0] for s in spans), max(s[1] for s in spans)))
        return out


def _read_blocks(arrays: Mapping[str, np.ndarray], blocks: tuple[tuple[int, int], ...]):
    """(block index, mean (N, *shape) float32, count (N,) int32) of every block in ``arrays``."""
    for b, (lo, hi) in enumerate(blocks):
        name = f"{PREFIX}|{lo}-{hi}"
        if f"{name}|mean" in arrays:
            mean = torch.as_tensor(np.array(arrays[f"{name}|mean"])).float()
            count = torch.as_tensor(np.array(arrays[f"{name}|count"]).astype(np.int32))
            yield b, mean, count


__all__ = ["PREFIX", "RELEASE_RECORDING", "ReleaseLog", "WINDOW_EPOCHS", "Window",
           "release_blocks"]
