"""The paper's split 1D CNN (Abuadbba et al., ASIACCS 2020, arXiv 2003.12365).

Client (data owner): ``depth`` convolutional layers, cut after the second max-pool.

    Conv1d(1,16,k=7,p=3) - LeakyReLU - MaxPool1d(2)
    Conv1d(16,16,k=5,p=2) - LeakyReLU - [Conv1d(16,16,k=5,p=2) - LeakyReLU] * (depth-2)
    - MaxPool1d(2)                         -> (B, 16, 32) = 512 values per beat

Server: Linear(512,128) - LeakyReLU - Linear(128,5).

An optional bottleneck at the cut (``cut_channels=c``, a DP-friendly cut): a 1x1 Conv1d(16, c)
after the client's last pool, so that the client sends (B, c, 32) = 32 c values per beat and the
server's first layer is Linear(32 c, 128). Activation DP clips each beat's vector to norm C and
adds noise of the same std to every value: the signal's energy is at most C^2 whatever the cut's
size d, the noise's is d sigma^2, so a smaller cut keeps more of the signal (d = 128 for c = 4
against 512).

The U-shaped topology (Vepakomma et al., arXiv 1812.00564) keeps the last layer on the client:
the server runs Linear(512,128) - LeakyReLU and the client's head runs Linear(128,5).

The original code applied Softmax before CrossEntropyLoss (a double softmax); that is kept behind
``paper_softmax=True``. The default is plain cross-entropy on logits.

The max-pools are :class:`MaxPool2`, ``nn.MaxPool1d(2)`` with the same outputs and gradients bit
for bit (tested, ties and NaN included), computed faster on a CPU where the input is large enough.
These fast kernels, and the first convolution's (:func:`same_conv1d`), are off under
``SPLITPRIV_FAST=0`` (:mod:`splitpriv.fast`), and fall back to torch's own where a private torch
function they call is missing.

The protocol, the model and the paper's numbers are described in ``docs/reference.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from splitpriv.fast import fast_enabled, functorch_active, missing, private

BEAT_LENGTH = 128
N_CLASSES = 5
CUT_CHANNELS = 16
CUT_LENGTH = 32
CUT_FEATURES = CUT_CHANNELS * CUT_LENGTH  # 512
HIDDEN = 128
MIN_DEPTH, MAX_DEPTH = 2, 8
MAX_CUT_CHANNELS = 64


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the split network.

    Attributes:
        depth: number of client conv layers, 2..8 (``docs/reference.md``, "Model").
        paper_softmax: apply Softmax before the loss, as the original code does (double softmax).
        n_classes: outputs of the last layer (the label scheme's class count; the paper's 5).
        cut_channels: channels of a 1x1 bottleneck convolution at the cut, 1..64 (None: no
            bottleneck, the paper's 16 x 32 cut).
    """

    depth: int = 2
    paper_softmax: bool = False
    n_classes: int = N_CLASSES
    cut_channels: int | None = None

    def __post_init__(self) -> None:
        if not MIN_DEPTH <= self.depth <= MAX_DEPTH:
            raise ValueError(f"depth must be in {MIN_DEPTH}..{MAX_DEPTH}, got {self.depth}")
        if self.n_classes < 2:
            raise ValueError(f"n_classes must be >= 2, got {self.n_classes}")
        c = self.cut_channels
        if c is not None and (isinstance(c, bool) or not isinstance(c, int)
                              or not 1 <= c <= MAX_CUT_CHANNELS):
            raise ValueError(f"cut_channels must be an integer in 1..{MAX_CUT_CHANNELS} (None: no "
                             f"bottleneck), got {c!r}")


def cut_shape(cut_channels: int | None = None) -> tuple[int, int]:
    """The (C, L) of the activations at the cut: (16, 32), or (cut_channels, 32)."""
    return (cut_channels or CUT_CHANNELS, CUT_LENGTH)


def _pair_max_forward(x: torch.Tensor, *, eager: bool = False
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over adjacent pairs of the last axis and ``nn.MaxPool1d(2)``'s argmax, (..., L/2).

    The values come from the no-gradient kernel, the argmax from one comparison (ties and NaN
    resolved as the native kernel does: the first of equal values, a NaN wins). ``eager`` (no
    ``torch.func`` transform around, so a host check is allowed): test for NaN on the sum of the
    output, cheap, and look for the NaNs on the strided half only when there is one."""
    with torch.no_grad():
        out = F.max_pool1d(x, 2)  # (..., C, L) -> (..., C, L/2)
        odd, even = x[..., 1::2], x[..., 0::2]
        take = odd > even
        if not eager or out.sum().isnan():  # an output is NaN iff a NaN is in its pair
            take |= odd.isnan()
        # take as int64, plus the even positions in place: ``arange.add(take)`` (int64 + bool,
        # broadcast) is much slower on large inputs
        idx = take.long().add_(torch.arange(0, x.shape[-1], 2, device=x.device))
    return out, idx


def _pool_backward():
    """torch's max-pool backward kernel (private: None, with one warning, where torch lacks it)."""
    return private(torch.ops.aten, "max_pool2d_with_indices_backward",
                   "torch.ops.aten.max_pool2d_with_indices_backward")


def _pair_max_backward(grad: torch.Tensor, x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """The native max-pool backward with the argmax of :func:`_pair_max_forward`."""
    return _pool_backward()(
        grad.unsqueeze(-2), x.unsqueeze(-2), [1, 2], [1, 2], [0, 0], [1, 1], False,
        idx.unsqueeze(-2),
    ).squeeze(-2)


class _PairMax(torch.autograd.Function):
    """Max over adjacent pairs of the last axis, with ``nn.MaxPool1d(2)``'s gradient.

    PyTorch's CPU max-pool with gradient (``max_pool2d_with_indices``) is many times slower
    than its no-gradient kernel; this takes the values and the argmax from
    :func:`_pair_max_forward`, then reuses the native backward with those indices.

    The eager (``ctx``) form: under ``torch.func`` transforms :class:`_PairMaxVmap` runs instead
    (the same computation), since the form those require binds the arguments through
    ``inspect.signature`` on every call, a fixed cost per call.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        out, idx = _pair_max_forward(x, eager=True)
        ctx.save_for_backward(x, idx)
        return out

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        x, idx = ctx.saved_tensors
        return _pair_max_backward(grad, x, idx)


class _PairMaxVmap(torch.autograd.Function):
    """:class:`_PairMax` in the form ``torch.func.vmap`` (batched runs) accepts."""

    @staticmethod
    def forward(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return _pair_max_forward(x)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        ctx.save_for_backward(inputs[0], output[1])
        ctx.mark_non_differentiable(output[1])

    @staticmethod
    def backward(ctx, grad: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
        x, idx = ctx.saved_tensors
        return _pair_max_backward(grad, x, idx)

    @staticmethod
    def vmap(info, in_dims, x: torch.Tensor):
        """Under ``torch.func.vmap``: fold the run axis into the batch axis."""
        x = x.movedim(in_dims[0], 0)
        out, idx = _PairMaxVmap.apply(x.reshape(-1, *x.shape[-2:]))
        return (out.view(*x.shape[:-1], -1), idx.view(*x.shape[:-1], -1)), (0, 0)


#: :class:`_PairMax` pays a fixed cost (three extra small kernels, a Python autograd node) and
#: saves time per input element over the native kernel with gradient, so it wins on inputs above
#: about 16,000 elements (the "max-pool" table of ``python benchmarks/speed.py``).
PAIR_MAX_MIN_NUMEL = 1 << 14


class MaxPool2(nn.Module):
    """``nn.MaxPool1d(2)`` on (B, C, L), L even: the same outputs and gradients, faster on CPU.

    With gradient on a CPU input of more than :data:`PAIR_MAX_MIN_NUMEL` elements (both pools of
    the paper model at batch 32, any pool of batched runs) it runs :class:`_PairMax`; otherwise
    (smaller inputs, evaluation, other devices, the fast kernels off or a private torch function
    they need missing) the native kernel.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if (not torch.is_grad_enabled() or x.device.type != "cpu"
                or x.numel() <= PAIR_MAX_MIN_NUMEL or not fast_enabled()
                or _pool_backward() is None):
            return F.max_pool1d(x, 2)
        transformed = functorch_active()  # vmap (batched runs), grad, ...
        if transformed is None:
            return F.max_pool1d(x, 2)
        if transformed:
            return _PairMaxVmap.apply(x)[0]
        return _PairMax.apply(x)  # (B, C, L) -> (B, C, L/2)


class _OneChannelConv(torch.autograd.Function):
    """K runs' convolutions of one input channel each as one batched matrix product.

    x (B, K, L): row b of run k's single input channel; w (K, Cout, k); b (K, Cout)
    -> (B, K * Cout, L), the layout of ``conv1d(x, w.view(K * Cout, 1, k), groups=K)`` with
    padding k // 2. The gradient of x is not computed (the inputs are data).
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, w: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        b, runs, length = x.shape
        k = w.shape[-1]
        cols = F.pad(x, (k // 2, k // 2)).unfold(-1, length, 1).contiguous()  # (B, K, k, L)
        y = torch.matmul(w, cols)  # (K, Cout, k) @ (B, K, k, L) -> (B, K, Cout, L)
        y += bias.unsqueeze(-1)
        ctx.save_for_backward(cols)
        return y.view(b, -1, length)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        (cols,) = ctx.saved_tensors
        b, runs, _, length = cols.shape
        g = grad.reshape(b, runs, -1, length)  # (B, K, Cout, L)
        grad_w = torch.matmul(g, cols.transpose(-1, -2)).sum(0)  # (B, K, Cout, k) -> (K, Cout, k)
        return None, grad_w, g.sum((0, 3))


def same_conv(layer: nn.Module) -> bool:
    """Whether ``layer`` is a convolution :func:`same_conv1d` computes: an ``nn.Conv1d`` with an
    odd kernel, "same" zero padding, stride 1, no dilation and a bias."""
    return (isinstance(layer, nn.Conv1d) and layer.kernel_size[0] % 2 == 1
            and layer.padding == (layer.kernel_size[0] // 2,) and layer.stride == (1,)
            and layer.dilation == (1,) and layer.bias is not None
            and layer.padding_mode == "zeros")


def same_conv1d(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                groups: int = 1) -> torch.Tensor:
    """``conv1d(x, weight, bias, padding=k // 2, groups=groups)`` (k odd, see :func:`same_conv`),
    (B, groups * Cin, L) -> (B, Cout, L).

    With one input channel per group, an input that needs no gradient (the client's first
    layer, on data) and a gradient being taken on a CPU, it is a batched matrix product
    (:class:`_OneChannelConv`): oneDNN's convolution with one input channel, above all its
    weight gradient, is slow on a CPU (``benchmarks/speed.py``'s "first convolution" table).
    Every other case (more input channels, evaluation, other devices, ``torch.func``
    transforms, the fast kernels off) is the native convolution: for the 16-channel layers
    oneDNN was as fast as anything tried (see the benchmark).
    """
    k = weight.shape[-1]
    if (weight.shape[1] == 1 and not x.requires_grad and torch.is_grad_enabled()
            and x.device.type == "cpu" and fast_enabled() and functorch_active() is False):
        return _OneChannelConv.apply(x, weight.view(groups, -1, k), bias.view(groups, -1))
    return F.conv1d(x, weight, bias, padding=k // 2, groups=groups)


#: The hook tables of a module (and, prefixed ``_global``, of every module): private to torch
_HOOKS = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")


def _plain_call(module: nn.Module) -> bool:
    """Whether calling ``module`` would only run its ``forward``: no hook of its own or global
    (Opacus's per-sample gradients hook the client's layers). False where torch keeps its hooks
    elsewhere (one warning): then the module is called."""
    from torch.nn.modules import module as m

    for owner, prefix in ((module, ""), (m, "_global")):
        for name in _HOOKS:
            hooks = getattr(owner, prefix + name, None)
            if hooks is None:
                missing(f"torch.nn.Module.{prefix + name}")
                return False
            if hooks:
                return False
    return True


class ClientNet(nn.Module):
    """The client's convolutional layers. Shape: (B, 1, 128) -> (B, 16, 32), or
    (B, cut_channels, 32) through the 1x1 bottleneck.

    The convolutions run through :func:`same_conv1d` (the first one faster, the same numbers to
    rounding) unless something hooks them."""

    def __init__(self, depth: int = 2, cut_channels: int | None = None) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            nn.Conv1d(1, 16, kernel_size=7, padding=3),
            nn.LeakyReLU(),
            MaxPool2(),
            nn.Conv1d(16, 16, kernel_size=5, padding=2),
            nn.LeakyReLU(),
        ]
        for _ in range(depth - 2):
            layers += [nn.Conv1d(16, 16, kernel_size=5, padding=2), nn.LeakyReLU()]
        layers.append(MaxPool2())
        if cut_channels is not None:
            layers.append(nn.Conv1d(CUT_CHANNELS, cut_channels, kernel_size=1))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        fast = fast_enabled()
        for layer in self.layers:  # (B, 1, 128) -> (B, 16, 32) or (B, c, 32)
            if (fast and isinstance(layer, nn.Conv1d) and layer.bias is not None
                    and same_conv(layer) and _plain_call(layer)):
                x = same_conv1d(x, layer.weight, layer.bias)
            else:
                x = layer(x)
        return x  # (B, 16, 32) or (B, c, 32)


class ServerNet(nn.Module):
    """The server's dense layers. Shape: (B, 16, 32) -> (B, 5), or (B, 128) when U-shaped
    ((B, cut_channels, 32) in with a bottleneck)."""

    def __init__(self, *, with_head: bool = True, paper_softmax: bool = False,
                 n_classes: int = N_CLASSES, cut_channels: int | None = None) -> None:
        super().__init__()
        features = math.prod(cut_shape(cut_channels))
        layers: list[nn.Module] = [nn.Flatten(), nn.Linear(features, HIDDEN), nn.LeakyReLU()]
        if with_head:
            layers += head_layers(paper_softmax, n_classes)
        self.layers = nn.Sequential(*layers)

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        return self.layers(a)  # (B, 16, 32) -> (B, 512) -> (B, 5) or (B, 128)


class HeadNet(nn.Module):
    """The U-shaped client's head. Shape: (B, 128) -> (B, 5)."""

    def __init__(self, *, paper_softmax: bool = False, n_classes: int = N_CLASSES) -> None:
        super().__init__()
        self.layers = nn.Sequential(*head_layers(paper_softmax, n_classes))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.layers(h)


def head_layers(paper_softmax: bool, n_classes: int = N_CLASSES) -> list[nn.Module]:
    """The last layer, Linear(128, n_classes) (the paper's 5), plus the original code's Softmax
    when reproducing it."""
    layers: list[nn.Module] = [nn.Linear(HIDDEN, n_classes)]
    if paper_softmax:
        layers.append(nn.Softmax(dim=1))
    return layers


@dataclass
class SplitModels:
    """The networks of one run: the client's, the server's and, when U-shaped, the client's head."""

    client: nn.Module  # the paper's ClientNet, or a split architecture's client
    server: nn.Module
    head: nn.Module | None = None

    def modules(self) -> dict[str, nn.Module]:
        out: dict[str, nn.Module] = {"client": self.client, "server": self.server}
        if self.head is not None:
            out["head"] = self.head
        return out

    def state_dicts(self) -> dict[str, dict[str, torch.Tensor]]:
        """``{"client": ..., "server": ..., ["head": ...]}``, as weights.pt stores them."""
        return {k: m.state_dict() for k, m in self.modules().items()}

    def to(self, device: torch.device | str) -> SplitModels:
        for m in self.modules().values():
            m.to(device)
        return self

    def monolithic(self) -> nn.Sequential:
        """The same network unsplit (shares the parameters, does not copy them)."""
        parts: list[nn.Module] = [self.client, self.server]
        if self.head is not None:
            parts.append(self.head)
        return nn.Sequential(*parts)


def build_models(config: ModelConfig, *, ushape: bool = False,
                 seed: int | None = 0) -> SplitModels:
    """Build the client, server (and head) with weights drawn from ``seed`` (None: from torch's
    generator as the caller seeded it).

    The order of construction is fixed so that the unsplit network built from the same seed has the
    same initial weights.
    """
    if seed is not None:
        torch.manual_seed(seed)
    client = ClientNet(config.depth, config.cut_channels)
    server = ServerNet(with_head=not ushape, paper_softmax=config.paper_softmax,
                       n_classes=config.n_classes, cut_channels=config.cut_channels)
    head = (HeadNet(paper_softmax=config.paper_softmax, n_classes=config.n_classes) if ushape
            else None)
    return SplitModels(client=client, server=server, head=head)
