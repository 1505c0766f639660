"""Inputs of any shape as the attacks see them: one channel of D values.

The attacks were written for MIT-BIH's (N, 1, 128) beats and (N, C, L) cuts. A run on other
inputs, (N, C, *spatial) (two leads (N, 2, 128), digits (N, 1, 8, 8)), is attacked through a
flattened view: every input row-major as (N, 1, D), D = C x prod(spatial), and every cut as
(N, C', L') with its spatial axes flattened (a dense cut (N, D) as (N, D, 1)). Ridge, the
priors, the linkage game and the metrics then act on the D values; the decoders read and write
that view but are built for the input's and the cut's own shapes (a 2D decoder for images, one
output channel per lead, a fully connected head over a dense cut:
:func:`decoder_shapes`). An attack that pushes inputs through the client
(``match``, ``whitebox``, ``unsplit``) gets the client with :func:`signal_client`'s reshaping
hooks. Reconstructions are saved with the input's shape (``GroundTruth.input_shape``). The
paper's one-lead beats are already (N, 1, 128) and its cut (N, C, L): nothing is reshaped and
no hook is set.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def one_signal(input_shape: tuple[int, ...]) -> bool:
    """Whether inputs of this shape already are one 1D channel, (1, L)."""
    return len(input_shape) == 2 and input_shape[0] == 1


def as_signal(x: torch.Tensor) -> torch.Tensor:
    """(N, C, *spatial) -> (N, 1, C x prod(spatial)), row-major (a view where possible)."""
    return x.reshape(len(x), 1, math.prod(x.shape[1:]))  # explicit: N may be 0


def as_cut(a: torch.Tensor) -> torch.Tensor:
    """A cut (N, C, *spatial) -> (N, C, prod(spatial)); (N, C, L) as it is; a dense cut (N, D)
    (a client ending in a linear layer) -> (N, D, 1): D features without spatial extent, which
    the decoders read through a fully connected head (``attacks.decoder.InverseNet``)."""
    if a.ndim == 2:
        return a.unsqueeze(2)
    return a.flatten(2) if a.ndim > 3 else a


class _Unflatten:
    """Forward pre-hook: (B, 1, D) -> (B, *input_shape)."""

    def __init__(self, input_shape: tuple[int, ...]) -> None:
        self.input_shape = tuple(input_shape)

    def __call__(self, module: nn.Module, args: tuple[Any, ...]) -> tuple[Any, ...]:
        x = args[0]
        return (x.reshape(len(x), *self.input_shape), *args[1:])


def _flatten_cut(module: nn.Module, args: tuple[Any, ...], out: torch.Tensor) -> torch.Tensor:
    return as_cut(out)


def signal_client(net: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """``net`` taking inputs as :func:`as_signal` gives them (a hook, unless they are one
    signal already) and sending its cut as :func:`as_cut` does (a hook); its state dict
    unchanged. (The paper's client, on one-lead beats, is used as it is.)"""
    net = signal_input(net, input_shape)
    net.register_forward_hook(_flatten_cut)
    return net


def signal_input(net: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """``net`` taking inputs as :func:`as_signal` gives them (a hook, unless they are one
    signal already); its outputs as they are."""
    if not one_signal(input_shape):
        net.register_forward_pre_hook(_Unflatten(input_shape))
    return net


def decoder_shapes(view: tuple[int, ...], out_len: int,
                   input_shape: tuple[int, ...] | None = None,
                   cut_shape: tuple[int, ...] | None = None
                   ) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The (cut, input) shapes a decoder of activations seen as ``view`` (C, L) (:func:`as_cut`)
    works in: the cut (C, *spatial) and the input (C_in, *spatial) of ``cut_shape`` and
    ``input_shape`` (``attacks.base.Knowledge``) where these hold the values seen and have one
    or two spatial axes, as many; a cut without spatial extent (a dense cut (D,), seen as (D,
    1)) is (D, 1) beside any such input. Otherwise the view and (1, out_len), the input as the
    attacks see it (:func:`as_signal`). MIT-BIH's beats: ((C, L), (1, 128))."""
    c, length = view
    cut: tuple[int, ...] = (c, length)
    if cut_shape is not None and cut_shape[0] == c and math.prod(cut_shape[1:]) == length:
        cut = tuple(cut_shape)
    out: tuple[int, ...] = (1, out_len)
    if input_shape is not None and len(input_shape) in (2, 3) and math.prod(
            input_shape) == out_len:
        out = tuple(input_shape)
    if length == 1:
        cut = (c, 1)
    elif len(cut) != len(out):  # no convolution from a cut of other axes: as the attacks see it
        cut, out = (c, length), (1, out_len)
    return cut, out


def numel(input_shape: tuple[int, ...]) -> int:
    return math.prod(input_shape)


__all__ = ["as_cut", "as_signal", "decoder_shapes", "numel", "one_signal", "signal_client",
           "signal_input"]
