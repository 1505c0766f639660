"""How one process of a distributed run reaches the others: ranks, rendezvous, timeouts.

The rendezvous is a :class:`torch.distributed.TCPStore` that rank 0 creates itself, on a socket
bound to ``master_addr`` only (not every interface), and hands to ``init_process_group``. Every
rank registers with its world size first, so a lone server, a client of another world size or an
unreachable server fails within ``timeout_s`` with one line naming it. (The store only rendezvous:
who may then take part is the handshake's, :mod:`splitpriv.distributed.handshake`. gloo's own
connections between ranks listen on the address of this host's name, or of
``$GLOO_SOCKET_IFNAME``; torch has no argument to bind them to ``master_addr``.)
"""

from __future__ import annotations

import datetime
import math
import os
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import torch.distributed as dist

from splitpriv.distributed.wire import PeerError

SECRET_ENV = "SPLITPRIV_SECRET"
#: the longest wait a party may be given, in seconds (a week; torch keeps waits in C ints of
#: milliseconds, which overflow at 24.8 days)
MAX_WAIT_S = 7 * 24 * 3600
#: the longest message a peer may be allowed to declare (``--max-message-mb``), in MiB
MAX_MESSAGE_MB = 2**20


@dataclass
class DistSpec:
    """How this process reaches the others. Rank 0 is the server, ranks 1..K the clients.

    Attributes:
        rank, world_size: this process and the number of processes (K + 1).
        master_addr, master_port: the rendezvous (the server's address works).
        backend: ``gloo`` (CPU, TCP) or ``nccl``.
        timeout_s: longest wait for the rendezvous (every rank joining) and for a message
            mid-protocol (a silent peer fails after this).
        turn_timeout_s: longest wait for a turn: the first message, a handed-over model, or the
            end of a SplitFed round (the slowest client's epoch); None: ``timeout_s``.
        secret: the shared secret every party must hold (None: unauthenticated, with a warning);
            never sent, never shown.
        max_message_mb: the longest message body a header may declare (None: twice the run's
            longest message).
    """

    rank: int
    world_size: int
    master_addr: str = "127.0.0.1"
    master_port: int = 29500
    backend: str = "gloo"
    timeout_s: float = 120.0
    turn_timeout_s: float = None  # type: ignore[assignment]  # None: timeout_s (__post_init__)
    secret: str | None = field(default=None, repr=False)
    max_message_mb: float | None = None

    def __post_init__(self) -> None:
        if self.turn_timeout_s is None:
            self.turn_timeout_s = self.timeout_s
        for name, flag, most in (("timeout_s", "--timeout", MAX_WAIT_S),
                                 ("turn_timeout_s", "--turn-timeout", MAX_WAIT_S),
                                 ("max_message_mb", "--max-message-mb", MAX_MESSAGE_MB)):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and 0 < value <= most):
                raise ValueError(f"{flag} must be a finite number in (0, {most:,}], got {value}")
        if self.secret == "":
            raise ValueError(f"the shared secret (--secret / ${SECRET_ENV}) is empty")
        if not 1 <= self.master_port <= 65535:
            raise ValueError(f"--master-port must be in 1..65535, got {self.master_port}"
                             + (" (0 would pick a port no client can know)"
                                if self.master_port == 0 else ""))
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
                   master_port=int(env.get("MASTER_PORT", 29500)),
                   **({"secret": env.get(SECRET_ENV)} | kw))


def spec_from_cli(
    role: str, *, rank: int | None = None, world_size: int | None = None,
    master_addr: str | None = None, master_port: int | None = None, **kw: Any,
) -> DistSpec:
    """A :class:`DistSpec` from command-line values, each missing one from torchrun's variables
    (RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT). The role must agree with the rank; ``auto``
    takes it from the rank (one command line for every process, as torchrun starts them)."""
    env = os.environ

    def pick(value: Any, name: str, default: Any = None) -> Any:
        flag = f"--{name.lower().replace('_', '-')}"
        if value is None and name in env:
            value = env[name]
            flag = f"${name}"
        if value is None:
            if default is None:
                raise ValueError(f"{flag} not given and ${name} unset")
            return default
        if name == "MASTER_ADDR":
            return str(value)
        try:
            return int(value)
        except ValueError:
            raise ValueError(f"{flag}: expected a whole number, got {value!r}") from None

    if kw.get("secret") is None:
        kw["secret"] = env.get(SECRET_ENV)
    if role not in ("server", "client", "auto"):
        raise ValueError(f"role must be server, client or auto, got {role!r}")
    rank = pick(rank, "RANK", 0 if role == "server" else None)
    spec = DistSpec(
        rank=rank, world_size=pick(world_size, "WORLD_SIZE"),
        master_addr=pick(master_addr, "MASTER_ADDR", "127.0.0.1"),
        master_port=pick(master_port, "MASTER_PORT", 29500), **kw,
    )
    if role != "auto" and spec.role != role:
        raise ValueError(f"--role {role} with rank {rank}: the server is rank 0, clients are "
                         f"ranks 1..{spec.world_size - 1}")
    return spec


def _listen(host: str, port: int) -> socket.socket:
    """A listening socket bound to ``host`` only."""
    try:
        family, kind, proto, _, addr = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(addr)
        sock.listen(128)
    except OSError as exc:
        raise PeerError(f"rank 0: cannot listen on {host}:{port} for the rendezvous: "
                        f"{exc.strerror or exc}") from None
    return sock


def _number(store: dist.Store, key: str) -> int | None:
    """The number a store key holds, or None when it holds anything else (anyone who reaches the
    port can write any key before the handshake: garbage there is named, never raised)."""
    text = store.get(key).decode(errors="replace").strip()
    return int(text) if text.isdigit() else None


def rendezvous(spec: DistSpec) -> dist.Store:
    """The run's store: rank 0 opens it on ``master_addr`` and waits for every client rank to
    register with the same world size; a client reaches it, counts itself in for its rank (a
    second process of the same rank is refused, naming it) and checks the world size. Each
    within ``spec.timeout_s`` (module docstring). A registration that is not a number (from a
    process that is not a splitpriv client) is dropped and waited past, and named if the wait
    times out."""
    wait = datetime.timedelta(seconds=spec.timeout_s)
    where = f"{spec.master_addr}:{spec.master_port}"
    within = f"within {spec.timeout_s:g} s (--timeout)"
    if spec.rank == 0:
        if spec.secret is None:
            print(f"splitpriv: warning: no shared secret (--secret / ${SECRET_ENV}): any process "
                  f"that reaches {where} can join this run", file=sys.stderr, flush=True)
        sock = _listen(spec.master_addr, spec.master_port)
        store = dist.TCPStore(spec.master_addr, spec.master_port, None, True, wait,
                              wait_for_workers=False, master_listen_fd=sock.detach())
        store.set("splitpriv/world_size", str(spec.world_size))
        keys = {r: f"splitpriv/join/{r}" for r in range(1, spec.world_size)}
        end, garbage = time.monotonic() + spec.timeout_s, dict[int, str]()
        while True:
            left = end - time.monotonic()
            try:
                store.wait(list(keys.values()), datetime.timedelta(seconds=max(left, 1e-3)))
            except RuntimeError:
                joined = [r for r, k in keys.items() if store.check([k])]
                twice = [r for r in keys if store.add(f"splitpriv/count/{r}", 0) > 1]
                raise PeerError(
                    f"rank 0: rendezvous at {where}: "
                    f"{'client ranks ' + str(joined) if joined else 'no client'} of "
                    f"1..{spec.world_size - 1} joined {within}"
                    + "".join(f"; client rank {r} was started twice (two processes with --rank "
                              f"{r})" for r in twice)
                    + "".join(f"; rank {r}'s registration was {v!r}, not a splitpriv client's"
                              for r, v in garbage.items())) from None
            for r, k in keys.items():
                theirs = _number(store, k)
                if theirs is None:
                    garbage[r] = store.get(k).decode(errors="replace")[:40]
                    store.delete_key(k)
                elif theirs != spec.world_size:
                    raise PeerError(f"rank 0: client rank {r} was started with world size "
                                    f"{theirs}, the server with {spec.world_size}")
            if all(store.check([k]) for k in keys.values()):
                return store
    try:
        store = dist.TCPStore(spec.master_addr, spec.master_port, None, False, wait)
        store.wait(["splitpriv/world_size"], wait)
        theirs = _number(store, "splitpriv/world_size")
        count = store.add(f"splitpriv/count/{spec.rank}", 1)
        if count == 1:
            store.set(f"splitpriv/join/{spec.rank}", str(spec.world_size))  # the server checks
    except RuntimeError:
        raise PeerError(f"rank {spec.rank}: no rendezvous at {where} {within} (is the server, "
                        "rank 0, running there?)") from None
    if count > 1:
        raise PeerError(f"rank {spec.rank}: another process has already joined the rendezvous "
                        f"at {where} as rank {spec.rank}: each client needs its own --rank "
                        f"(1..{spec.world_size - 1})")
    if theirs != spec.world_size:
        raise PeerError(f"rank {spec.rank}: started with world size {spec.world_size}, the "
                        f"server (rank 0) with {theirs if theirs is not None else 'no number'}")
    return store


def init_process_group(spec: DistSpec) -> bool:
    """Join the group (unless already joined) through :func:`rendezvous`; True if this call
    joined it."""
    if dist.is_initialized():
        return False
    store = rendezvous(spec)
    try:
        dist.init_process_group(spec.backend, store=store, rank=spec.rank,
                                world_size=spec.world_size,
                                timeout=datetime.timedelta(seconds=spec.turn_timeout_s))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise PeerError(f"rank {spec.rank}: joining the group at {spec.master_addr}:"
                        f"{spec.master_port} failed: {first}") from None
    return True


__all__ = ["SECRET_ENV", "DistSpec", "init_process_group", "rendezvous", "spec_from_cli"]
