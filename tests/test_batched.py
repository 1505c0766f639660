"""K runs trained as one stacked model give each run's own numbers, and their run directories
are those of runs trained alone."""

from __future__ import annotations

import json

import pytest
import torch

from splitpriv.batched import BatchedSplitTrainer, batchable, run_training_batched
from splitpriv.models import ModelConfig, build_models
from splitpriv.run import TrainConfig, run_training
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


def _config(pool_dirs, **kw) -> TrainConfig:
    mitdb, cache = pool_dirs
    base = dict(
        protocol="paper-unique", epochs=2, seed=1, train_subset=600, test_subset=300,
        val_fraction=0.1, device="cpu", record_epochs="none", mitdb_dir=str(mitdb),
        cache_dir=str(cache),
    )
    return TrainConfig(**(base | kw))


def _weights(run_dir):
    return torch.load(run_dir / "weights.pt", weights_only=True)


def _rows(run_dir):
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_batched_run_directories_match_runs_trained_alone(pool_dirs, tmp_path, monkeypatch):
    seeds = [1, 2]
    configs = [_config(pool_dirs, seed=s) for s in seeds]
    dirs = [tmp_path / f"b-s{s}" for s in seeds]
    calls = []
    monkeypatch.setattr(BatchedSplitTrainer, "train_epoch", _counting(calls))
    results = run_training_batched(configs, dirs, progress=False)
    assert len(calls) == 2  # both runs in one batched trainer, one call per epoch
    for config, run_dir, result in zip(configs, dirs, results, strict=True):
        for name in ("config.json", "metrics.jsonl", "result.json", "weights.pt",
                     "checkpoint.pt", "best.pt"):
            assert (run_dir / name).exists(), name
        assert result["batched"] == 2 and result["seed"] == config.seed
        alone = run_training(config, tmp_path / f"alone-s{config.seed}", progress=False)
        a, b = _weights(run_dir), _weights(tmp_path / f"alone-s{config.seed}")
        for part in a:
            for k in a[part]:
                torch.testing.assert_close(a[part][k], b[part][k], atol=1e-5, rtol=1e-4)
        for r, s in zip(_rows(run_dir), _rows(tmp_path / f"alone-s{config.seed}"), strict=True):
            assert r["train_loss"] == pytest.approx(s["train_loss"], rel=1e-5)
            assert r["val_accuracy"] == pytest.approx(s["val_accuracy"], abs=1.7)  # 1 of 60
        assert result["best_epoch"] == alone["best_epoch"]
    # the runs are different runs
    w0, w1 = _weights(dirs[0])["client"], _weights(dirs[1])["client"]
    assert any((w0[k] - w1[k]).abs().max() > 1e-3 for k in w0)
    # finished: skipped, nothing retrained
    calls.clear()
    assert run_training_batched(configs, dirs, progress=False) == results and not calls


def _counting(calls):
    original = BatchedSplitTrainer.train_epoch

    def counted(self):
        calls.append(self.k)
        return original(self)

    return counted


def test_batched_checkpoint_resumes_alone(pool_dirs, tmp_path):
    """A run trained batched for 2 epochs and then asked for 3 resumes alone from the batched
    checkpoint (a SplitTrainer loads it), ending where a run trained alone for 3 epochs does."""
    configs = [_config(pool_dirs, seed=s) for s in (1, 2)]
    dirs = [tmp_path / "s1", tmp_path / "s2"]
    run_training_batched(configs, dirs, progress=False)
    longer = [_config(pool_dirs, seed=s, epochs=3) for s in (1, 2)]
    results = run_training_batched(longer, dirs, progress=False)
    assert all("batched" not in r for r in results)  # resumed alone
    for config, run_dir in zip(longer, dirs, strict=True):
        assert [r["epoch"] for r in _rows(run_dir)] == [1, 2, 3]
        run_training(config, tmp_path / f"alone-{run_dir.name}", progress=False)
        a, b = _weights(run_dir), _weights(tmp_path / f"alone-{run_dir.name}")
        for part in a:
            for k in a[part]:
                torch.testing.assert_close(a[part][k], b[part][k], atol=1e-5, rtol=1e-4)


def test_run_training_batched_refuses_what_it_cannot_batch(pool_dirs, tmp_path):
    a = _config(pool_dirs, seed=1)
    cases = [
        ([a, _config(pool_dirs, seed=2, depth=3)], "more than the seed"),
        ([a, _config(pool_dirs, seed=2, defenses=["nopeek:alpha=1"])], "defenses"),
        ([a, _config(pool_dirs, seed=2, topology="ushape")], "U-shape"),
        ([a, _config(pool_dirs, seed=2, record_epochs="last")], "transcript"),
    ]
    for configs, match in cases:
        with pytest.raises(ValueError, match=match):
            run_training_batched(configs, [tmp_path / "x", tmp_path / "y"], progress=False)
    assert batchable(a) and not batchable(_config(pool_dirs, topology="ushape"))
