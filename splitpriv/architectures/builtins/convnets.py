"""``cnn1d`` and ``cnn2d``: small convolutional splits for any number of input channels and any
size, the cut after the client's last pool and the server's dense layers sized by probing it.

``cnn1d`` (C leads, length L): client ``Conv1d(C, w, 7, p=3) - LeakyReLU - MaxPool1d(2)`` then
``depth - 1`` times ``Conv1d(w, w, 5, p=2) - LeakyReLU``, then ``MaxPool1d(2)``: (B, w,
L // 4); the paper's layout for C leads. ``cnn2d`` (C planes, H x W): client ``Conv2d(C, w, 3,
p=1) - LeakyReLU - MaxPool2d(2)`` then ``depth - 1`` times ``Conv2d(w, w, 3, p=1) - LeakyReLU``:
(B, w, H // 2, W // 2) (depth 2, the default: the two-convolution client of earlier versions).
Both: server ``Flatten - Linear(cut, hidden) - LeakyReLU``, head ``Linear(hidden, classes)``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from torch import nn

from splitpriv.architectures import MODELS, Architecture, probe_shape


def _server(client: nn.Module, input_shape: tuple[int, ...], hidden: int, n_classes: int,
            what: str) -> tuple[nn.Module, nn.Module]:
    cut = probe_shape(client, input_shape)
    if math.prod(cut) == 0:
        raise ValueError(f"model {what!r}: input {tuple(input_shape)} is too small for its pools "
                         f"(cut {cut})")
    body = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(cut), hidden), nn.LeakyReLU())
    return body, nn.Linear(hidden, n_classes)


def _check(what: str, input_shape: tuple[int, ...], rank: int, width: int, hidden: int) -> None:
    if len(input_shape) != rank:
        raise ValueError(f"model {what!r} takes {'(C, L)' if rank == 2 else '(C, H, W)'} "
                         f"inputs, the data is {tuple(input_shape)}")
    if width < 1 or hidden < 1:
        raise ValueError(f"model {what!r}: width and hidden must be >= 1")


def _check_depth(what: str, depth: int) -> None:
    if depth < 2:
        raise ValueError(f"model {what!r}: depth must be >= 2, got {depth}")


@MODELS.register("cnn1d")
class Cnn1d(Architecture):
    summary = "1D CNN for (C, L) signals: C leads, any length"

    @dataclass
    class Config:
        """Attributes:
        depth: client convolutions, >= 2.
        width: channels of every client convolution.
        hidden: the server's hidden units.
        """

        depth: int = 2
        width: int = 16
        hidden: int = 128

    def build(self, input_shape: tuple[int, ...], n_classes: int, run: Any
              ) -> tuple[nn.Module, nn.Module, nn.Module | None]:
        c = self.config
        _check("cnn1d", input_shape, 2, c.width, c.hidden)
        _check_depth("cnn1d", c.depth)
        layers: list[nn.Module] = [nn.Conv1d(input_shape[0], c.width, 7, padding=3),
                                   nn.LeakyReLU(), nn.MaxPool1d(2)]
        for _ in range(c.depth - 1):
            layers += [nn.Conv1d(c.width, c.width, 5, padding=2), nn.LeakyReLU()]
        client = nn.Sequential(*layers, nn.MaxPool1d(2))
        return (client, *_server(client, input_shape, c.hidden, n_classes, "cnn1d"))


@MODELS.register("cnn2d")
class Cnn2d(Architecture):
    summary = "small 2D CNN for (C, H, W) images"

    @dataclass
    class Config:
        """Attributes:
        depth: client convolutions, >= 2.
        width: channels of every client convolution.
        hidden: the server's hidden units.
        """

        depth: int = 2
        width: int = 16
        hidden: int = 128

    def build(self, input_shape: tuple[int, ...], n_classes: int, run: Any
              ) -> tuple[nn.Module, nn.Module, nn.Module | None]:
        c = self.config
        _check("cnn2d", input_shape, 3, c.width, c.hidden)
        _check_depth("cnn2d", c.depth)
        layers: list[nn.Module] = [nn.Conv2d(input_shape[0], c.width, 3, padding=1),
                                   nn.LeakyReLU(), nn.MaxPool2d(2)]
        for _ in range(c.depth - 1):
            layers += [nn.Conv2d(c.width, c.width, 3, padding=1), nn.LeakyReLU()]
        client = nn.Sequential(*layers)
        return (client, *_server(client, input_shape, c.hidden, n_classes, "cnn2d"))
