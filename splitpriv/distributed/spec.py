"""How one process of a distributed run reaches the others: ranks, rendezvous, timeouts."""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch.distributed as dist


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


__all__ = ["DistSpec", "init_process_group", "spec_from_cli"]
