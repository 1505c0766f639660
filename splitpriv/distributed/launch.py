"""Starting the parties as processes: on this host for tests and benchmarks (:func:`launch_local`,
:func:`run_processes`), each bounded by a deadline so that a protocol bug fails instead of
hanging."""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from splitpriv.distributed.partition import ClientData
from splitpriv.distributed.runners import run_client, run_server
from splitpriv.distributed.spec import DistSpec
from splitpriv.distributed.wire import ChannelError
from splitpriv.run import TrainConfig


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


def _party_main(rank: int, spec_kw: dict[str, Any], config: TrainConfig, data: ClientData | None,
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
    config: TrainConfig, clients: Sequence[ClientData], *, mode: str = "sequential",
    workdir: str | Path, timeout_s: float = 30.0, deadline_s: float = 60.0,
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


__all__ = ["free_port", "launch_local", "run_processes"]
