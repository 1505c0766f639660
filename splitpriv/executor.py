"""Where a sweep's work runs: in this process, in local worker processes, or on a Ray cluster.

Every study and the multi-run benchmarks hand their work to :meth:`Executor.map` as a list of
independent tasks (train a run, or a stacked group of runs, then attack it). A task writes only
its own run directories, which are resumable and skip what is finished
(:class:`splitpriv.run.RunDir`), so the executor changes where the work runs, never what it
produces: the rows come back in task order, the same whichever executor ran them (tested).

* ``local`` (the default): ``jobs`` worker processes (default: one per core this process may use),
  each pinned to ``threads`` torch threads, started with ``spawn`` (a forked torch can deadlock);
  ``jobs=1`` runs the tasks here, in order, with their own progress bars.

Every task runs with this process's fast-kernel switch (:mod:`splitpriv.fast`, ``SPLITPRIV_FAST``).
* ``ray``: each task a Ray task of ``threads`` CPUs (``pip install 'splitpriv[cluster]'``), on the
  cluster at ``address`` (``ray start --head`` there; ``auto`` finds a running one) or, without an
  address, on a local instance of ``jobs`` CPUs started for the sweep. On a cluster every node
  needs splitpriv installed and the output folder on a shared filesystem.

A task that fails in a worker stops the sweep with :class:`TaskFailed`, one line naming the task
and the error (in this process the error propagates as raised); what finished is kept in its run
directory and rerunning resumes. Tasks must be picklable: module-level functions and
dataclass arguments.
"""

from __future__ import annotations

import os
import sys
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")

EXECUTORS = ("local", "ray")
#: local worker processes at most, per core (more only queue for the cores, each with its memory)
JOBS_PER_CORE = 2
#: seconds to reach a Ray cluster's ``--address`` before giving up (Ray itself retries forever)
RAY_CONNECT_S = 10.0


class TaskFailed(RuntimeError):
    """A sweep task raised: its name and the error, in one line (the traceback in ``details``)."""

    def __init__(self, name: str, error: str, details: str = "") -> None:
        super().__init__(f"{name}: {error}")
        self.details = details


def available_cores() -> int:
    """The CPU cores this process may run on (its affinity mask, else the machine's count)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@dataclass
class Executor:
    """How a sweep runs its tasks (the ``--executor``, ``--jobs`` and ``--address`` flags of every
    study)."""

    executor: str = "local"
    """where tasks run: local (worker processes on this machine) or ray (a Ray cluster or a local
    Ray instance; needs the cluster extra)"""
    jobs: int = 0
    """tasks at once (0: one per core of this machine; at most 2 per core, and never more worker
    processes than tasks; with ray and an address: the cluster's CPUs decide)"""
    address: str | None = None
    """ray only: the cluster to join (e.g. auto, or ray://HOST:10001); none starts a local
    instance of --jobs CPUs"""

    _ray_started: bool = field(default=False, init=False, repr=False, compare=False)
    _pool: Any = field(default=None, init=False, repr=False, compare=False)
    _pool_size: int = field(default=0, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.executor not in EXECUTORS:
            raise ValueError(f"--executor must be one of {', '.join(EXECUTORS)}, "
                             f"got {self.executor!r}")
        if self.jobs < 0:
            raise ValueError(f"--jobs must be >= 0 (0: one per core), got {self.jobs}")
        if self.address is not None and self.executor != "ray":
            raise ValueError("--address is for --executor ray")
        cap = JOBS_PER_CORE * available_cores()
        if self.jobs > cap and self.address is None:  # more would only queue for the cores
            print(f"splitpriv: note: --jobs {self.jobs} capped at {cap} ({JOBS_PER_CORE} per "
                  f"core, {available_cores()} cores here)", file=sys.stderr, flush=True)
            self.jobs = cap

    @property
    def workers(self) -> int:
        """How many tasks run at once locally (``jobs``, or one per core)."""
        return self.jobs or available_cores()

    def parallel(self, n_tasks: int) -> bool:
        """Whether ``n_tasks`` tasks would run outside this process (then their own progress
        bars are off and one bar counts finished tasks)."""
        return self.executor == "ray" or (self.workers > 1 and n_tasks > 1)

    def map(self, fn: Callable[[T], R], items: Sequence[T], *, names: Sequence[str] | None = None,
            threads: int | None = 1, desc: str = "tasks", progress: bool = True) -> list[R]:
        """``[fn(item) for item in items]``, run as this executor says, each call with ``threads``
        torch threads (None: leave torch's default); the results in the order of ``items``.
        ``names`` name the tasks in the progress bar and in a failure's message."""
        names = list(names) if names is not None else [f"task {i}" for i in range(len(items))]
        if len(names) != len(items):
            raise ValueError("map: one name per item")
        if not items:
            return []
        from tqdm.auto import tqdm

        bar = tqdm(total=len(items), desc=desc, unit="task", disable=not progress, position=0)
        try:
            if not self.parallel(len(items)):
                return self._here(fn, items, names, threads, bar)
            run = self._ray if self.executor == "ray" else self._local
            return run(fn, items, names, threads, bar)
        finally:
            bar.close()

    def _here(self, fn, items, names, threads, bar) -> list:
        """In this process, in order; an error propagates as it is (its traceback intact)."""
        if threads:
            import torch

            torch.set_num_threads(threads)
        out = []
        for name, item in zip(names, items, strict=True):
            bar.set_postfix_str(name)
            out.append(fn(item))
            bar.update()
        return out

    def _local(self, fn, items, names, threads, bar) -> list:
        import multiprocessing as mp

        size = min(self.workers, len(items))  # never more workers than tasks
        if self._pool is not None and self._pool_size < size:
            self.close()  # a later map with more tasks than the pool has workers
        if self._pool is None:  # one pool serves every map of a sweep (workers start once)
            self._pool = mp.get_context("spawn").Pool(size)
            self._pool_size = size
        results: list[Any] = [None] * len(items)
        args = [(fn, i, item, threads, _fast()) for i, item in enumerate(items)]
        try:
            for i, ok, value, details in self._pool.imap_unordered(_call_packed, args):
                if not ok:
                    raise TaskFailed(names[i], value, details)
                results[i] = value
                bar.set_postfix_str(names[i])
                bar.update()
        except BaseException:  # a failed task or an interrupt: stop the other workers now
            self._pool.terminate()
            self._pool = None
            raise
        return results

    def _ray(self, fn, items, names, threads, bar) -> list:
        try:
            import ray
        except ImportError:
            raise RuntimeError("--executor ray needs Ray: pip install 'splitpriv[cluster]'") \
                from None
        if not ray.is_initialized():
            self._ray_started = True
            kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False)
            if self.address is None:
                kw["num_cpus"] = self.workers
            else:
                check_reachable(self.address)
            ray.init(address=self.address, **kw)
        remote = ray.remote(num_cpus=threads or 1, max_retries=0)(_call)
        pending = {remote.remote(fn, i, item, threads, _fast()): i
                   for i, item in enumerate(items)}
        results: list[Any] = [None] * len(items)
        while pending:
            done, _ = ray.wait(list(pending), num_returns=1)
            i, ok, value, details = ray.get(done[0])
            del pending[done[0]]
            if not ok:
                for ref in pending:
                    ray.cancel(ref, force=True)
                raise TaskFailed(names[i], value, details)
            results[i] = value
            bar.set_postfix_str(names[i])
            bar.update()
        return results

    def close(self) -> None:
        """Stop the worker pool and the Ray instance :meth:`map` started (one of each serves
        every map of a sweep; a cluster joined at ``address`` is left running)."""
        if self._pool is not None:
            self._pool.close()
            self._pool.join()
            self._pool = None
        if self._ray_started:
            import ray

            ray.shutdown()
            self._ray_started = False

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def check_reachable(address: str, timeout_s: float = RAY_CONNECT_S) -> None:
    """Refuse a Ray ``--address`` HOST:PORT (or ``ray://HOST:PORT``) where nothing accepts a
    connection within ``timeout_s`` (``ray.init`` would retry it forever); ``auto`` and other
    forms are left to Ray.

    Raises:
        ValueError: naming the address and why.
    """
    import socket

    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
            pass
    except (OSError, OverflowError) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        raise ValueError(f"--address {address}: no Ray cluster answers there within "
                         f"{timeout_s:g} s ({reason}); start one (ray start --head) or give its "
                         "address") from None


def _fast() -> bool:
    """Whether this process runs the fast kernels (``splitpriv.fast``), for its workers to follow
    (a Ray worker does not inherit the environment; a pool started earlier has an older one)."""
    from splitpriv.fast import fast_enabled

    return fast_enabled()


def _call(fn: Callable[[Any], Any], index: int, item: Any, threads: int | None,
          fast: bool = True) -> tuple[int, bool, Any, str]:
    """Run one task with ``threads`` torch threads and the fast kernels on unless ``fast`` is
    false: ``(index, True, result, "")``, or ``(index, False, "Error: message", traceback)`` if it
    raised (so a worker never dies on it)."""
    from splitpriv.fast import fast_kernels

    if threads:
        import torch

        torch.set_num_threads(threads)
    try:
        with fast_kernels(fast):
            return index, True, fn(item), ""
    except Exception as exc:  # reported by the caller, with the task's name
        return index, False, f"{type(exc).__name__}: {exc}", traceback.format_exc()


def _call_packed(args: tuple) -> tuple[int, bool, Any, str]:
    return _call(*args)
