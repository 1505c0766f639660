"""``paper``: the paper's split 1D CNN (Abuadbba et al., ASIACCS 2020; :mod:`splitpriv.models`)
on (1, 128) beats, client depth ``--depth`` 2..8, ``--cut-channels`` and ``--paper-softmax``
from the run: the models of every earlier version, built from the same seed to the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

from splitpriv.architectures import MODELS, Architecture
from splitpriv.models import BEAT_LENGTH, ModelConfig, SplitModels, build_models

INPUT_SHAPE = (1, BEAT_LENGTH)


@MODELS.register("paper")
class Paper(Architecture):
    summary = "the paper's 1D CNN on (1, 128) beats, --depth 2..8 (the default)"

    @dataclass
    class Config:
        pass

    def check(self, run: Any) -> None:
        """The run's depth and bottleneck are the paper model's options."""

    def _check_shape(self, input_shape: tuple[int, ...]) -> None:
        if tuple(input_shape) != INPUT_SHAPE:
            raise ValueError(f"model 'paper' takes {INPUT_SHAPE} beats, the data is "
                             f"{tuple(input_shape)}; use --model cnn1d (C leads, any length) or "
                             "cnn2d (images)")

    def build(self, input_shape: tuple[int, ...], n_classes: int, run: Any
              ) -> tuple[nn.Module, nn.Module, nn.Module | None]:
        models = self.assemble(input_shape, n_classes, run, ushape=True)
        return models.client, models.server, models.head

    def assemble(self, input_shape: tuple[int, ...], n_classes: int, run: Any, *,
                 ushape: bool) -> SplitModels:
        """:func:`splitpriv.models.build_models`' networks, without reseeding (the caller
        seeded torch with the run's seed, as ``build_models`` does)."""
        self._check_shape(input_shape)
        config = ModelConfig(run.depth, run.paper_softmax, cut_channels=run.cut_channels,
                             n_classes=n_classes)
        return build_models(config, ushape=ushape, seed=None)
