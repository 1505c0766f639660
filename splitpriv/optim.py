"""The paper's optimizer: Adam (lr 1e-3, betas 0.9/0.999, eps 1e-8), as torch's fused kernel.

``torch.optim.Adam``'s default CPU path launches several elementwise kernels per parameter tensor;
the split model's parties hold 4 tensors each, most of them tiny, so a batch-32 step spent more
time in the optimizer than in the layers. ``fused=True`` (on CPU since torch 2.4) updates all of
them in one kernel. Measured here (one thread, the server's 4 tensors, one step):
fused 72-81 us, the stock single-tensor path 195-199 us, the project's former flat-buffer Adam
152-157 us, so it was removed.

The fused kernel computes the same formula in a different order of floating-point operations:
its numbers differ from the stock path's by rounding (about 1e-6 relative per step, growing
slowly over training, as between two machines), not in distribution.

Where the parameters' device or dtype has no fused kernel, :func:`adam` builds the stock Adam.
Either way the optimizer is a plain ``torch.optim.Adam``: its ``state_dict`` has Adam's format
(and carries the ``fused`` flag: a checkpoint resumes with the flag it was written with), and
Opacus's ``DPOptimizer`` wraps it like any Adam.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch

from splitpriv.parties import OptimizerFactory


def make_adam(params: Iterable[torch.Tensor], lr: float = 1e-3) -> torch.optim.Adam:
    """``torch.optim.Adam(params, lr)``, fused where the parameters' device and dtype allow it."""
    params = list(params)
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except RuntimeError:  # "`fused=True` requires all the params to be floating point Tensors
        return torch.optim.Adam(params, lr=lr)  # of supported devices"


def adam(lr: float) -> OptimizerFactory:
    """The paper's optimizer as a factory: :func:`make_adam` with learning rate ``lr``."""
    return lambda params: make_adam(params, lr=lr)
