"""Adam with one flat buffer per party: the same numbers as ``torch.optim.Adam``, fewer kernels.

The paper's optimizer is Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8). ``torch.optim.Adam``'s default
CPU path updates each parameter tensor with its own seven elementwise kernels; the split model's
parties hold 4 tensors each, most of them tiny, so a batch-32 step spends more time launching the
optimizer's kernels than in the layers. :class:`FlatAdam` keeps the parameters, ``exp_avg`` and
``exp_avg_sq`` as views into one contiguous buffer each and runs the same elementwise formula once
over the buffer: every element sees the same operations, in the same order, with the same scalars
as in ``torch.optim.Adam``'s single-tensor path, so the result is identical bit for bit (tested on
real training steps). ``torch.optim.Adam(fused=True)`` is faster still but computes differently
(about 5e-4 apart after 50 steps here), so it is not used.

It is a ``torch.optim.Adam``: ``state_dict`` has Adam's format (checkpoints load either way), and
anything outside the fast path (several parameter groups, weight decay, amsgrad, a parameter
without a gradient, parameters that have taken different numbers of steps, a non-float32 or
sparse tensor) falls back to ``torch.optim.Adam.step``.
Opacus's ``DPOptimizer`` wraps it like any Adam: it writes ``p.grad`` and calls ``step``.
"""

from __future__ import annotations

import torch


class FlatAdam(torch.optim.Adam):
    """``torch.optim.Adam`` (default options) whose step runs once over a flat buffer."""

    def __init__(self, params, lr: float = 1e-3, **kwargs) -> None:
        super().__init__(params, lr=lr, **kwargs)
        self._flat: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor] | None = None
        self._views: list[tuple[torch.Tensor, int, torch.Tensor, torch.Tensor]] = []

    def _params(self) -> list[torch.Tensor]:
        return self.param_groups[0]["params"]

    def _fast_path(self) -> bool:
        if len(self.param_groups) != 1:
            return False
        g = self.param_groups[0]
        return (
            g["weight_decay"] == 0 and not g["amsgrad"] and not g["maximize"]
            and not g["capturable"] and not g["differentiable"] and not g["fused"]
            and not isinstance(g["lr"], torch.Tensor)
            and all(
                p.grad is not None and not p.grad.is_sparse and p.dtype == torch.float32
                for p in g["params"]
            )
        )

    def _flat_valid(self) -> bool:
        """Do the parameters and their state still live in the flat buffers?"""
        return self._flat is not None and len(self._views) == len(self._params()) and all(
            p is q and p.data_ptr() == ptr
            and self.state[p].get("exp_avg") is ea and self.state[p].get("exp_avg_sq") is eas
            for p, (q, ptr, ea, eas) in zip(self._params(), self._views, strict=False)
        )

    @torch.no_grad()
    def _flatten(self) -> bool:
        """Move parameters and Adam state into flat buffers; each tensor becomes a view.

        Returns False (nothing moved) when the parameters have taken different numbers of steps
        (one lacked a gradient once): one flat step could not serve them."""
        params = self._params()
        steps = [float(self.state[p]["step"]) if "step" in self.state[p] else 0.0 for p in params]
        if len(set(steps)) > 1:
            return False
        flat_param = torch.cat([p.detach().reshape(-1) for p in params])

        def flat_state(key: str) -> torch.Tensor:
            return torch.cat([
                self.state[p][key].reshape(-1) if key in self.state[p]
                else torch.zeros(p.numel(), dtype=p.dtype, device=p.device)
                for p in params
            ])

        exp_avg, exp_avg_sq = flat_state("exp_avg"), flat_state("exp_avg_sq")
        step = steps[0] if steps else 0.0
        offset = 0
        self._views = []
        for p in params:
            n = p.numel()
            p.data = flat_param[offset:offset + n].view_as(p)
            state = {
                "step": torch.tensor(step, dtype=torch.float32),
                "exp_avg": exp_avg[offset:offset + n].view_as(p),
                "exp_avg_sq": exp_avg_sq[offset:offset + n].view_as(p),
            }
            self.state[p] = state
            self._views.append((p, p.data_ptr(), state["exp_avg"], state["exp_avg_sq"]))
            offset += n
        grad = torch.empty_like(flat_param)
        self._flat = (flat_param, exp_avg, exp_avg_sq, grad)
        return True

    @torch.no_grad()
    def step(self, closure=None):
        if (
            closure is not None or not self._fast_path()
            or not (self._flat_valid() or self._flatten())
        ):
            self._flat = None  # the per-tensor path may replace state tensors
            return super().step(closure)
        param, exp_avg, exp_avg_sq, grad = self._flat
        params = self._params()
        torch.cat([p.grad.reshape(-1) for p in params], out=grad)
        steps = [self.state[p]["step"] for p in params]
        torch._foreach_add_(steps, 1)
        group = self.param_groups[0]
        beta1, beta2 = group["betas"]
        lr, eps = group["lr"], group["eps"]
        # torch.optim.adam._single_tensor_adam, non-capturable branch, on the whole buffer.
        step = steps[0].item()
        exp_avg.lerp_(grad, 1 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        param.addcdiv_(exp_avg, denom, value=-step_size)
        return None

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        self._flat = None  # rebuilt from the loaded state at the next step
