"""The paper's optimizer: Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8), as torch's fused kernel.

``torch.optim.Adam``'s default CPU path launches several elementwise kernels per parameter tensor;
the split model's parties hold 4 tensors each, most of them tiny, so a batch-32 step spent more
time in the optimizer than in the layers. ``fused=True`` (on CPU since torch 2.4) updates all of
them in one kernel (timings: ``benchmarks/speed.py``'s comments and the README's speed table).

The fused kernel computes the same formula in a different order of floating-point operations:
its numbers differ from the stock path's by rounding (about 1e-6 relative per step, growing
slowly over training, as between two machines), not in distribution.

:class:`FusedAdam` is ``torch.optim.Adam(fused=True)`` whose ``step`` hands the lists straight to
the same two kernels torch's fused path launches (``_foreach_add_`` on the step counts, then
``_fused_adam_``), skipping the generic bookkeeping around them (``_init_group``, the functional
``adam`` dispatch, grouping by device and dtype): the same kernel on the same arguments, so the
same numbers bit for bit (``tests/test_fast_paths.py``). Whatever the short path does not cover (a
first step, which creates the state; a closure; amsgrad's or a gradient scaler's extra tensors; a
tensor learning rate; parameters on several devices or dtypes; a group loaded from a stock
Adam's checkpoint) takes torch's own step.

Where the parameters' device or dtype has no fused kernel, where torch lacks the private
``torch._fused_adam_`` (one warning, :mod:`splitpriv.fast`) or with the fast kernels off
(``SPLITPRIV_FAST=0``), :func:`make_adam` builds the stock Adam. Either way the optimizer is a
``torch.optim.Adam``: its ``state_dict`` has Adam's format (and carries the ``fused`` flag: a
checkpoint resumes with the flag it was written with), step hooks run as for any optimizer, and
Opacus's ``DPOptimizer`` wraps it like any Adam.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from splitpriv.fast import fast_enabled, private
from splitpriv.parties import OptimizerFactory


class FusedAdam(torch.optim.Adam):
    """``torch.optim.Adam(..., fused=True)`` with a shorter path to the same fused kernel."""

    def step(self, closure=None):  # type: ignore[override]
        if closure is None and not (getattr(self, "grad_scale", None) is not None
                                    or getattr(self, "found_inf", None) is not None):
            work = self._fused_work()
            add = private(torch, "_foreach_add_", "torch._foreach_add_")
            if work is not None and add is not None:
                with torch.no_grad():
                    for group, fused, params, grads, exp_avgs, exp_avg_sqs, steps in work:
                        beta1, beta2 = group["betas"]
                        add(steps, 1)
                        fused(params, grads, exp_avgs, exp_avg_sqs, [], steps,
                              amsgrad=False, lr=group["lr"], beta1=beta1, beta2=beta2,
                              weight_decay=group["weight_decay"], eps=group["eps"],
                              maximize=group["maximize"], grad_scale=None, found_inf=None)
                return None
        return _stock_adam_step(self, closure)

    def _fused_work(self) -> list[tuple] | None:
        """Per group: (group, kernel, params, grads, exp_avgs, exp_avg_sqs, steps) of the
        parameters with a gradient, or None where torch's own step must run (see the module
        docstring, and where torch lacks the kernel)."""
        work = []
        for group in self.param_groups:
            if (not group["fused"] or group["amsgrad"] or group["capturable"]
                    or group["differentiable"] or isinstance(group["lr"], torch.Tensor)):
                return None
            name = "_fused_adamw_" if group.get("decoupled_weight_decay", False) else "_fused_adam_"
            kernel = private(torch, name, f"torch.{name}")
            if kernel is None:
                return None
            params, grads, exp_avgs, exp_avg_sqs, steps = [], [], [], [], []
            kind = None
            for p in group["params"]:
                g = p.grad
                if g is None:
                    continue
                state = self.state.get(p)
                if not state or g.is_sparse or p.is_complex():
                    return None  # a first step creates the state: torch's path does it
                if kind is None:
                    kind = (p.device, p.dtype)
                elif (p.device, p.dtype) != kind:
                    return None
                params.append(p)
                grads.append(g)
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                steps.append(state["step"])
            if params:
                work.append((group, kernel, params, grads, exp_avgs, exp_avg_sqs, steps))
        return work

    def zero_grad(self, set_to_none: bool = True) -> None:
        """As ``Optimizer.zero_grad``; ``set_to_none`` (the default) without its bookkeeping."""
        if not set_to_none:
            return super().zero_grad(set_to_none=False)
        for group in self.param_groups:
            for p in group["params"]:
                p.grad = None
        return None


def _stock_adam_step(opt: torch.optim.Adam, closure):
    """``torch.optim.Adam.step`` without torch's step-hook wrapper (the caller's own wrapper,
    which torch put around :meth:`FusedAdam.step`, already runs the hooks)."""
    step = torch.optim.Adam.step
    if getattr(step, "hooked", False):  # wrapped once a plain Adam was built in this process
        # where torch no longer exposes the unwrapped step (one warning), the wrapped one runs:
        # this optimizer's step hooks then run twice
        step = private(step, "__wrapped__", "torch.optim.Adam.step.__wrapped__") or step
    return step(opt, closure)


def make_adam(params: Iterable[torch.Tensor], lr: float = 1e-3) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr)``, fused (:class:`FusedAdam`) where the parameters' device
    and dtype allow it, the fast kernels are on and torch has its fused kernel."""
    params = list(params)
    if fast_enabled() and private(torch, "_fused_adam_", "torch._fused_adam_") is not None:
        try:
            return FusedAdam(params, lr=lr, fused=True)
        except RuntimeError:  # "`fused=True` requires all the params to be floating point
            pass  # Tensors of supported devices"
    return torch.optim.Adam(params, lr=lr)


def adam(lr: float) -> OptimizerFactory:
    """The paper's optimizer as a factory: :func:`make_adam` with learning rate ``lr``."""
    return lambda params: make_adam(params, lr=lr)
