"""The data owners of a distributed run: each client's share of the run's training rows."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from splitpriv.run import Tensors


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


def client_share(data: Tensors, rank: int, n_clients: int) -> ClientData:
    """Client ``rank``'s (1..n_clients) share of the run's training rows (whole records) and, on
    client 1, the validation and test sets."""
    if n_clients == 1:
        own = torch.arange(len(data.y_train))
    else:
        own = partition_by_record(torch.as_tensor(data.record_train), n_clients)[rank - 1]
    dev = data.x_train.device
    share = ClientData(data.x_train[own.to(dev)], data.y_train[own.to(dev)], train_ids=own)
    if rank == 1:
        share.x_test, share.y_test = data.x_test, data.y_test
        share.x_val, share.y_val = data.x_val, data.y_val
    return share


__all__ = ["ClientData", "client_share", "partition_by_record"]
