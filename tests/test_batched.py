"""K runs trained as one stacked model give each run's own numbers."""

from __future__ import annotations

import pytest
import torch

from splitpriv.batched import BatchedSplitTrainer
from splitpriv.models import ModelConfig, build_models
from splitpriv.trainer import SplitTrainer


@pytest.fixture(scope="module")
def beats(take_beats):
    return take_beats(400, 300)


def test_batched_runs_equal_runs_trained_alone(beats):
    x, y, xt, yt = beats
    seeds = [3, 4, 5]
    cfg = ModelConfig(depth=3)
    batched = BatchedSplitTrainer([build_models(cfg, seed=s) for s in seeds], x, y, seeds=seeds)
    stats = [batched.train_epoch() for _ in range(2)]
    evals = batched.evaluate(xt, yt)
    for k, seed in enumerate(seeds):
        alone = SplitTrainer(build_models(cfg, seed=seed), x, y, seed=seed)
        alone_stats = [alone.train_epoch(e) for e in (1, 2)]
        alone_eval = alone.evaluate(xt, yt, epoch=2, phase="test")
        state = batched.run_state(k)
        for part, module in (("client", alone.models.client), ("server", alone.models.server)):
            for name, value in module.state_dict().items():
                torch.testing.assert_close(state[part][name], value, atol=1e-5, rtol=1e-4)
        assert stats[-1][k].loss == pytest.approx(alone_stats[-1].loss, rel=1e-5)
        assert evals[k].accuracy == pytest.approx(alone_eval.accuracy, abs=0.34)  # <= 1 of 300
    # the runs differ from each other (one seed copied K times would also "match" itself)
    a, b = batched.run_state(0)["client"], batched.run_state(1)["client"]
    assert any((a[n] - b[n]).abs().max() > 1e-3 for n in a)


def test_batched_rejects_mismatched_seeds_and_ushape(beats):
    x, y, _, _ = beats
    with pytest.raises(ValueError, match="seeds"):
        BatchedSplitTrainer([build_models(ModelConfig(), seed=0)], x, y, seeds=[0, 1])
    with pytest.raises(ValueError, match="vanilla"):
        BatchedSplitTrainer([build_models(ModelConfig(), ushape=True, seed=0)], x, y, seeds=[0])
