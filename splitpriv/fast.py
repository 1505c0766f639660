"""The switch of the fast CPU kernels, and the private torch functions they call.

The split model's hot path has hand-written kernels (:class:`splitpriv.models.MaxPool2`,
:func:`splitpriv.models.same_conv1d`, :class:`splitpriv.optim.FusedAdam`), each tested against
the stock torch kernel it replaces. Three of them call torch internals that have no public
spelling: ``torch._fused_adam_`` / ``torch._fused_adamw_`` and ``torch.optim.Adam.step``'s
``__wrapped__`` (the optimizer), ``torch.ops.aten.max_pool2d_with_indices_backward`` (the
max-pool's backward) and ``torch._C._are_functorch_transforms_active`` (whether ``vmap`` or
``grad`` is around, where the eager kernels may not run). A torch release may move any of them,
so each is looked up through :func:`private`: where torch lacks it, the caller runs the stock
kernel instead, and one warning names what is missing.

One switch turns every fast kernel off (torch's stock layers and ``torch.optim.Adam``):
``SPLITPRIV_FAST=0`` in the environment, which every worker process a study starts inherits, or
a run's ``fast=False`` (``TrainConfig``), entered with :func:`fast_kernels`. The two paths give
the same weights to rounding (``tests/test_fast_switch.py``).
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch

#: The environment variable: ``0`` turns the fast kernels off.
FAST_ENV = "SPLITPRIV_FAST"
#: Values of :data:`FAST_ENV` that turn them off.
OFF = ("0", "false", "no", "off")

#: The private names already warned about (one warning each per process).
_WARNED: set[str] = set()


def _from_env() -> bool:
    return os.environ.get(FAST_ENV, "").strip().lower() not in OFF


#: The switch, read from the environment when splitpriv is imported (a worker process reads its
#: parent's) and again by :func:`fast_kernels`; a bool, since the hot path asks on every call.
_enabled = _from_env()


def fast_enabled() -> bool:
    """Whether the fast kernels may run (unless ``$SPLITPRIV_FAST`` is 0 or a run turned them
    off with :func:`fast_kernels`)."""
    return _enabled


@contextmanager
def fast_kernels(on: bool = True) -> Iterator[None]:
    """Run the block with the fast kernels off unless ``on`` (a run's ``TrainConfig.fast``).

    Off sets ``$SPLITPRIV_FAST=0`` for the block, so the processes it starts inherit it; ``on``
    re-reads the environment (one that says 0 keeps them off). Both are restored after."""
    global _enabled
    before, env = _enabled, os.environ.get(FAST_ENV)
    if not on:
        os.environ[FAST_ENV] = "0"
    _enabled = _from_env()
    try:
        yield
    finally:
        _enabled = before
        if env is None:
            os.environ.pop(FAST_ENV, None)
        else:
            os.environ[FAST_ENV] = env


def private(owner: Any, name: str, what: str) -> Any:
    """``getattr(owner, name)``, or None with one warning (naming ``what``) where torch lacks it,
    for the caller to run the stock kernel instead."""
    found = getattr(owner, name, None)
    if found is None:
        missing(what)
    return found


def missing(what: str) -> None:
    """Warn, once per process, that torch lacks the private ``what``: the stock kernel runs."""
    if what in _WARNED:
        return
    _WARNED.add(what)
    warnings.warn(
        f"torch {torch.__version__} has no {what}: splitpriv runs the stock torch kernel instead "
        f"(slower; the same results to rounding); set {FAST_ENV}=0 to silence this",
        RuntimeWarning, stacklevel=3,
    )


def functorch_active() -> bool | None:
    """Whether a ``torch.func`` transform (``vmap``, ``grad``) is active; None where this torch
    cannot tell (then only the stock kernels are safe)."""
    active = private(torch._C, "_are_functorch_transforms_active",
                     "torch._C._are_functorch_transforms_active")
    return None if active is None else bool(active())
