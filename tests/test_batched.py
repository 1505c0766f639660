"""K runs trained as one stacked model give each run's own numbers, and their run directories
are those of runs trained alone."""

from __future__ import annotations

import json

import pytest
import torch

from defenses import build_defense
from splitpriv.batched import BatchedSplitTrainer, batch_key, batchable, run_training_batched
from splitpriv.channel import Transcript
from splitpriv.models import ModelConfig, build_models
from splitpriv.run import TrainConfig, run_training
from splitpriv.trainer import SplitTrainer


@pytest.fixture(scope="module")
def beats(take_beats):
    return take_beats(400, 300)


#: weights of a stacked run against the run alone after a few steps: Adam divides a near-zero
#: gradient's rounding (the stacked kernels sum in another order) by its own small sqrt(v), so
#: after 4 steps an element can differ by ~1e-5; with another noise stream the largest difference
#: of every tensor was 1.2e-3 to 6.6e-3 (paper DP epsilon 1, 4 steps)
WEIGHT_ATOL = 5e-5


def _assert_weights_close(a: dict, b: dict, atol: float = WEIGHT_ATOL) -> None:
    for name in a:
        torch.testing.assert_close(a[name], b[name], atol=atol, rtol=0)


@pytest.mark.parametrize("explicit", [True, False])
def test_batched_runs_equal_runs_trained_alone(beats, explicit):
    """After a few steps each run's weights equal those of the run trained alone, up to float
    rounding (the stacked kernels sum in another order). Over many steps the rounding grows
    chaotically (a near-tie of a max-pool flips, Adam scales a near-zero gradient to a full
    step), so longer horizons are compared on losses and accuracies."""
    x, y, xt, yt = beats
    seeds = [3, 4, 5]
    cfg = ModelConfig(depth=3)
    batched = BatchedSplitTrainer([build_models(cfg, seed=s) for s in seeds], x[:128], y[:128],
                                  seeds=seeds)
    if not explicit:  # the generic torch.func.vmap path
        batched.client.layers = batched.server.layers = None
    batched.train_epoch()  # 4 steps
    long = BatchedSplitTrainer([build_models(cfg, seed=s) for s in seeds], x, y, seeds=seeds)
    stats = [long.train_epoch() for _ in range(2)]
    evals = long.evaluate(xt, yt)
    for k, seed in enumerate(seeds):
        alone = SplitTrainer(build_models(cfg, seed=seed), x[:128], y[:128], seed=seed)
        alone.train_epoch(1)
        state = batched.run_state(k)
        for part, module in (("client", alone.models.client), ("server", alone.models.server)):
            _assert_weights_close(state[part], module.state_dict())
        alone = SplitTrainer(build_models(cfg, seed=seed), x, y, seed=seed)
        alone_stats = [alone.train_epoch(e) for e in (1, 2)]
        alone_eval = alone.evaluate(xt, yt, epoch=2, phase="test")
        assert stats[0][k].loss == pytest.approx(alone_stats[0].loss, rel=1e-4)
        assert stats[-1][k].loss == pytest.approx(alone_stats[-1].loss, rel=1e-2)
        assert evals[k].accuracy == pytest.approx(alone_eval.accuracy, abs=1.5)  # 4 of 300
    # the runs differ from each other (one seed copied K times would also "match" itself)
    a, b = long.run_state(0)["client"], long.run_state(1)["client"]
    assert any((a[n] - b[n]).abs().max() > 0.1 for n in a)


def test_batched_rejects_mismatched_seeds_and_mixed_topologies(beats):
    x, y, _, _ = beats
    with pytest.raises(ValueError, match="seeds"):
        BatchedSplitTrainer([build_models(ModelConfig(), seed=0)], x, y, seeds=[0, 1])
    with pytest.raises(ValueError, match="mix the vanilla and U-shaped"):
        BatchedSplitTrainer([build_models(ModelConfig(), ushape=True, seed=0),
                             build_models(ModelConfig(), seed=1)], x, y, seeds=[0, 1])


@pytest.mark.parametrize("spec", [None, "dp:mode=paper,epsilon=3"])
def test_batched_ushape_runs_equal_runs_trained_alone(beats, spec):
    """U-shaped runs stacked (the clients' heads stacked too) give each run's client, server
    and head weights, training loss, evaluation and training messages (every kind that crosses)
    of the U-shaped run trained alone, over an epoch of 4 steps; trainer_state(k) resumes as a
    U-shaped SplitTrainer, head optimizer included."""
    from splitpriv.channel import InProcessChannel, RecordPolicy, Transcript

    x, y, xt, yt = beats
    seeds = [3, 4, 5]
    cfg = ModelConfig(depth=2)
    training = RecordPolicy(phases=frozenset({"train"}))

    def defenses() -> list:
        return [d for s in ("ushape", spec) if s for d in _built(s)]

    batched = BatchedSplitTrainer([build_models(cfg, ushape=True, seed=s) for s in seeds],
                                  x[:128], y[:128], seeds=seeds,
                                  defenses=[defenses() for _ in seeds],
                                  transcripts=[Transcript(policy=training) for _ in seeds])
    assert batched.head is not None and batched.head.layers is not None  # explicit stacked head
    stats = batched.train_epoch(1)
    evals = batched.evaluate(xt, yt, epoch=1, phase="test")
    for k, seed in enumerate(seeds):
        sent = Transcript(policy=training)
        alone = SplitTrainer(build_models(cfg, ushape=True, seed=seed), x[:128], y[:128],
                             seed=seed, defenses=defenses(), channel=InProcessChannel(sent))
        assert alone.ushape
        alone_stats = alone.train_epoch(1)
        alone_eval = alone.evaluate(xt, yt, epoch=1, phase="test")
        state = batched.run_state(k)
        assert sorted(state) == ["client", "head", "server"]
        for part, module in alone.models.modules().items():
            _assert_weights_close(state[part], module.state_dict())
        assert stats[k].loss == pytest.approx(alone_stats.loss, rel=1e-5)
        assert evals[k].loss == pytest.approx(alone_eval.loss, rel=1e-4)
        assert evals[k].accuracy == pytest.approx(alone_eval.accuracy, abs=0.7)  # 2 of 300
        kinds = {kind for kind, _, _ in sent.keys()}
        assert kinds == {"activations", "server_output", "output_grad", "act_grad"}
        assert {epoch for _, _, epoch in sent.keys()} == {1}  # all compared to rounding
        _assert_same_messages(batched.transcripts[k], sent)
        resumed = SplitTrainer(build_models(cfg, ushape=True, seed=99), x[:128], y[:128],
                               seed=99)
        resumed.load_state_dict(batched.trainer_state(k))
        head_opt = resumed.client.head_optimizer
        for name, p in resumed.models.head.named_parameters():
            q = batched.head.params[name]
            assert torch.equal(p, q[k])
            assert torch.equal(head_opt.state[p]["exp_avg"],
                               batched.head_opt.state[q]["exp_avg"][k])
            assert head_opt.state[p]["step"].item() == 4
    a, b = batched.run_state(0)["head"], batched.run_state(1)["head"]
    assert any((a[n] - b[n]).abs().max() > 1e-3 for n in a)  # the runs are different runs


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


def _assert_same_run(a_dir, b_dir) -> None:
    """The same run (seed, data, batch order) trained batched and alone: equal up to the
    rounding that grows over ~40 steps (different seeds differ by > 0.1, tested below)."""
    a, b = _weights(a_dir), _weights(b_dir)
    for part in a:
        _assert_weights_close(a[part], b[part], atol=2e-2)
    for r, s in zip(_rows(a_dir), _rows(b_dir), strict=True):
        assert r["epoch"] == s["epoch"]
        assert r["train_loss"] == pytest.approx(s["train_loss"], rel=1e-2)
        assert r["val_accuracy"] == pytest.approx(s["val_accuracy"], abs=5.1)  # 3 of 60


def _assert_same_releases(a_dir, b_dir) -> None:
    """The release logs of one run trained batched and alone (no message recorded, the log
    kept as by default): every id's releases in the same blocks, the first epoch's equal up to
    the stacked kernels' rounding."""
    a = Transcript.load(a_dir / "transcript.npz").releases
    b = Transcript.load(b_dir / "transcript.npz").releases
    assert a is not None and b is not None and a.blocks == b.blocks
    ids = b.released_ids()
    assert torch.equal(a.released_ids(), ids) and len(ids) == 600  # every training row
    for wa, wb in zip(a.windows(ids), b.windows(ids), strict=True):
        assert torch.equal(wa.count, wb.count) and (wa.first, wa.last) == (wb.first, wb.last)
    first = a.blocks.index((1, 1))
    torch.testing.assert_close(a.sums[first], b.sums[first], atol=1e-4, rtol=1e-3)


def _rows(run_dir):
    return [json.loads(r) for r in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _assert_same_messages(batched, alone) -> None:
    """Two transcripts of one run, trained batched and alone: the same (kind, phase, epoch)
    keys, the same ids in the same order, the same labels, and the first epoch's float messages
    equal up to the stacked kernels' rounding (later epochs' rounding has grown)."""
    assert sorted(batched.keys()) == sorted(alone.keys())
    for kind, phase, epoch in alone.keys():
        ids, values = batched.get(kind, phase=phase, epoch=epoch)
        ids_alone, values_alone = alone.get(kind, phase=phase, epoch=epoch)
        assert torch.equal(ids, ids_alone)
        if kind == "labels":
            assert torch.equal(values, values_alone)
        elif epoch == 1:
            torch.testing.assert_close(values, values_alone, atol=1e-4, rtol=1e-3)


def test_batched_run_directories_match_runs_trained_alone(pool_dirs, tmp_path, monkeypatch):
    seeds = [1, 2]
    configs = [_config(pool_dirs, seed=s) for s in seeds]
    dirs = [tmp_path / f"b-s{s}" for s in seeds]
    calls = []
    monkeypatch.setattr(BatchedSplitTrainer, "train_epochs", _counting(calls))
    results = run_training_batched(configs, dirs, progress=False)
    assert len(calls) == 2  # both runs in one batched trainer, one call per epoch
    for config, run_dir, result in zip(configs, dirs, results, strict=True):
        for name in ("config.json", "metrics.jsonl", "result.json", "weights.pt",
                     "checkpoint.pt", "best.pt"):
            assert (run_dir / name).exists(), name
        assert result["batched"] == 2 and result["seed"] == config.seed
        alone = run_training(config, tmp_path / f"alone-s{config.seed}", progress=False)
        _assert_same_run(run_dir, tmp_path / f"alone-s{config.seed}")
        assert result["best_epoch"] == alone["best_epoch"]
        _assert_same_releases(run_dir, tmp_path / f"alone-s{config.seed}")
    # the runs are different runs
    w0, w1 = _weights(dirs[0])["client"], _weights(dirs[1])["client"]
    assert any((w0[k] - w1[k]).abs().max() > 0.1 for k in w0)
    # finished: skipped, nothing retrained
    calls.clear()
    assert run_training_batched(configs, dirs, progress=False) == results and not calls


def _counting(calls):
    original = BatchedSplitTrainer.train_epochs

    def counted(self, *args, **kw):
        calls.append(self.k)
        return original(self, *args, **kw)

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
        _assert_same_run(run_dir, tmp_path / f"alone-{run_dir.name}")


def test_run_training_batched_refuses_what_it_cannot_batch(pool_dirs, tmp_path):
    a = _config(pool_dirs, seed=1)
    cases = [
        ([a, _config(pool_dirs, seed=2, depth=3)], "more than the seed"),
        ([a, _config(pool_dirs, seed=2, defenses=["nopeek:alpha=1"])], "more than the seed"),
        ([a, _config(pool_dirs, seed=2, defenses=["labeldp:epsilon=1"])], "do not stack"),
        ([a, _config(pool_dirs, seed=2, topology="ushape")], "more than the seed"),
        ([a, _config(pool_dirs, seed=2, record_epochs="last")], "transcript"),
    ]
    for configs, match in cases:
        with pytest.raises(ValueError, match=match):
            run_training_batched(configs, [tmp_path / "x", tmp_path / "y"], progress=False)
    assert batchable(a) and batchable(_config(pool_dirs, topology="ushape"))


def test_trainer_state_is_each_runs_own_state(beats):
    """A SplitTrainer loaded with trainer_state(k) holds exactly run k's weights, Adam moments
    and step count, and batch generator."""
    x, y, _, _ = beats
    seeds = [3, 4]
    batched = BatchedSplitTrainer([build_models(ModelConfig(), seed=s) for s in seeds],
                                  x[:96], y[:96], seeds=seeds)
    batched.train_epoch()
    for k in range(len(seeds)):
        alone = SplitTrainer(build_models(ModelConfig(), seed=99), x[:96], y[:96], seed=99)
        alone.load_state_dict(batched.trainer_state(k))
        for part, module, opt, stacked, stacked_opt in (
            ("client", alone.models.client, alone.client.optimizer, batched.client,
             batched.client_opt),
            ("server", alone.models.server, alone.server.optimizer, batched.server,
             batched.server_opt),
        ):
            for name, p in module.named_parameters():
                q = stacked.params[name]
                assert torch.equal(p, q[k]), (part, name)
                mine, theirs = opt.state[p], stacked_opt.state[q]
                assert torch.equal(mine["exp_avg"], theirs["exp_avg"][k])
                assert torch.equal(mine["exp_avg_sq"], theirs["exp_avg_sq"][k])
                assert mine["step"].item() == theirs["step"].item() == 3  # 96 / 32 steps
        assert torch.equal(alone.generator.get_state(), batched.generators[k].get_state())


@pytest.mark.parametrize("paper_softmax", [False, True])
def test_stacked_forward_equals_each_runs_forward(beats, paper_softmax):
    """The explicit stacked layers (grouped conv, batched matmul, the double softmax) compute
    each run's own forward pass."""
    x, _, _, _ = beats
    runs = [build_models(ModelConfig(depth=4, paper_softmax=paper_softmax), seed=s)
            for s in (1, 2, 3)]
    trainer = BatchedSplitTrainer(runs, x[:64], torch.zeros(64, dtype=torch.long),
                                  seeds=[1, 2, 3])
    assert trainer.client.layers is not None and trainer.server.layers is not None
    xs = torch.stack([x[:16], x[16:32], x[32:48]])  # (K, B, 1, 128)
    with torch.no_grad():
        out = trainer.server(trainer.client(xs))  # (K, B, 5)
        for k, r in enumerate(runs):
            torch.testing.assert_close(out[k], r.server(r.client(xs[k])), atol=1e-5, rtol=1e-4)


def test_batch_key_stacks_seeds_and_defense_parameters_of_one_kind(pool_dirs):
    """Seeds and defense parameters may differ within a key; the defenses' kinds (class, in
    order) and everything else may not; what cannot stack has no key."""
    def key(seed=1, **kw):
        return batch_key(_config(pool_dirs, seed=seed, **kw))

    paper = key(defenses=["dp:mode=paper,epsilon=1"])
    assert paper is not None and paper == key(seed=7, defenses=["dp:mode=paper,epsilon=10"])
    formal = key(defenses=["dp:mode=formal,mechanism=gaussian,target_epsilon=2"])
    assert formal == key(seed=2, defenses=["dp:mode=formal,mechanism=laplace,noise_multiplier=1,"
                                           "clip=3,seed=5"])
    nopeek = key(defenses=["nopeek:alpha=1"])
    assert nopeek == key(seed=3, defenses=["nopeek:alpha=0.1"])
    both = key(defenses=["dp:mode=paper,epsilon=1", "nopeek:alpha=1"])
    assert both == key(seed=2, defenses=["dp:mode=paper,epsilon=3", "nopeek:alpha=3"])
    assert both != key(defenses=["nopeek:alpha=1", "dp:mode=paper,epsilon=1"])
    ushape = key(defenses=["ushape"])
    assert ushape is not None and ushape == key(seed=4, defenses=["ushape"])
    ushape_dp = key(defenses=["ushape", "dp:mode=paper,epsilon=1"])
    assert ushape_dp == key(seed=2, defenses=["ushape", "dp:mode=paper,epsilon=5"])
    assert key(topology="ushape") is not None
    assert len({key(), paper, formal, nopeek, both, ushape, ushape_dp,
                key(topology="ushape")}) == 8
    assert key() == key(seed=9) and key() != key(depth=3)
    assert paper != key(depth=3, defenses=["dp:mode=paper,epsilon=1"])
    for kw in (dict(defenses=["dp:mode=formal,noise_multiplier=1,releases=1"]),  # frozen steps
               dict(defenses=["dpsgd:noise_multiplier=1"]), dict(defenses=["labeldp:epsilon=1"]),
               dict(defenses=["maxnorm"]), dict(defenses=["ushape", "marvell"]),
               dict(record_epochs="last"), dict(server="scaled")):
        assert key(**kw) is None, kw
        assert not batchable(_config(pool_dirs, **kw))
    # a spec that does not build (no epsilon) is no config at all: refused when it is made
    with pytest.raises(ValueError, match="paper mode needs epsilon"):
        key(defenses=["dp:mode=paper"])
    assert batchable(_config(pool_dirs, defenses=["nopeek:alpha=1"]))
    # training-only transcripts stack (labels and cut gradients never cross in evaluation)
    for kinds in ("labels", "labels,act_grad"):
        assert key(record_epochs="last", record_kinds=kinds) is not None
        assert key(record_epochs="last", record_kinds=kinds) != key()
    assert key(record_epochs="last", record_kinds="activations") is None  # sent in evaluation


def test_batched_transcripts_equal_runs_trained_alone(pool_dirs, tmp_path):
    """A batched run's transcript holds what the run alone sends in training: the same
    (kind, phase, epoch) keys, the same ids in the same order, the same labels, and cut
    gradients equal up to the rounding of the stacked kernels."""
    from splitpriv.channel import Transcript

    configs = [_config(pool_dirs, seed=s, record_epochs="all", record_kinds="labels,act_grad",
                       defenses=[f"dp:mode=paper,epsilon={e}"])
               for s, e in ((1, 3), (2, 10))]
    dirs = [tmp_path / f"b-s{c.seed}" for c in configs]
    results = run_training_batched(configs, dirs, progress=False)
    assert [r["batched"] for r in results] == [2, 2]
    for config, run_dir in zip(configs, dirs, strict=True):
        run_training(config, tmp_path / f"alone-s{config.seed}", progress=False)
        batched = Transcript.load(run_dir / "transcript.npz")
        alone = Transcript.load(tmp_path / f"alone-s{config.seed}" / "transcript.npz")
        assert len(alone.keys()) == 4  # 2 epochs x (labels, act_grad), train phase only
        _assert_same_messages(batched, alone)
    # the two runs' transcripts differ (own batch orders)
    ids0, _ = Transcript.load(dirs[0] / "transcript.npz").get("labels", epoch=1)
    ids1, _ = Transcript.load(dirs[1] / "transcript.npz").get("labels", epoch=1)
    assert not torch.equal(ids0, ids1)


def test_batched_ushape_run_directories_and_transcripts_equal_runs_trained_alone(pool_dirs,
                                                                              tmp_path):
    """U-shaped runs trained with run_training_batched: each directory holds the head's weights,
    says ``topology: ushape`` and ``batched: 2``, and its transcript holds what the U-shaped run
    alone sends in training (the output's gradient, the label attacks' input, and the cut
    gradient), with the same ids in the same order and values equal up to the stacked kernels'
    rounding. (The server's output also crosses in evaluation: a run recording it trains
    alone.)"""
    from splitpriv.channel import Transcript

    configs = [_config(pool_dirs, seed=s, defenses=["ushape"], record_epochs="all",
                       record_kinds="output_grad,act_grad") for s in (1, 2)]
    dirs = [tmp_path / f"b-s{c.seed}" for c in configs]
    results = run_training_batched(configs, dirs, progress=False)
    for config, run_dir, result in zip(configs, dirs, results, strict=True):
        assert result["batched"] == 2 and result["topology"] == "ushape"
        alone_dir = tmp_path / f"alone-s{config.seed}"
        alone = run_training(config, alone_dir, progress=False)
        assert "batched" not in alone and alone["topology"] == "ushape"
        assert sorted(_weights(run_dir)) == ["client", "head", "server"]
        _assert_same_run(run_dir, alone_dir)
        mine = Transcript.load(alone_dir / "transcript.npz")
        assert len(mine.keys()) == 4  # 2 epochs x (output_grad, act_grad)
        _assert_same_messages(Transcript.load(run_dir / "transcript.npz"), mine)


#: K = 3 runs of one defense kind, each with its own parameters
DEFENDED = {
    "paper-dp": ["dp:mode=paper,epsilon=1", "dp:mode=paper,epsilon=3", "dp:mode=paper,epsilon=10"],
    "formal-dp": ["dp:mode=formal,mechanism=gaussian,target_epsilon=2,clip=2",
                  "dp:mode=formal,mechanism=gaussian,noise_multiplier=0.5,clip=1,seed=7",
                  "dp:mode=formal,mechanism=gaussian,target_epsilon=8,clip=4,standardise=true"],
    "nopeek": ["nopeek:alpha=0.5", "nopeek:alpha=2", "nopeek:alpha=5"],
}


def _built(spec: str, epochs: int = 2) -> list:
    d = build_defense(spec)
    d.configure(epochs=epochs, batch_size=32)  # as splitpriv.run.build_defenses does
    return [d]


def _claims(defenses: list) -> list[dict]:
    return [d.report().to_dict() for d in defenses]


@pytest.mark.parametrize("kind", sorted(DEFENDED))
def test_batched_defended_runs_equal_runs_trained_alone(beats, kind):
    """K defended runs stacked (own seeds, own defense parameters, own noise generators) give
    each run's weights, training loss, noisy evaluation and privacy claim of the run trained
    alone, over an epoch of 4 steps and its evaluation."""
    x, y, xt, yt = beats
    specs, seeds = DEFENDED[kind], [3, 4, 3]  # runs 0 and 2 share a seed: only the defense differs
    cfg = ModelConfig(depth=2)
    batched = BatchedSplitTrainer([build_models(cfg, seed=s) for s in seeds], x[:128], y[:128],
                                  seeds=seeds, defenses=[_built(s) for s in specs])
    stats = batched.train_epoch(1)
    evals = batched.evaluate(xt, yt, epoch=1, phase="test")
    for k, (spec, seed) in enumerate(zip(specs, seeds, strict=True)):
        defenses = _built(spec)
        alone = SplitTrainer(build_models(cfg, seed=seed), x[:128], y[:128], seed=seed,
                             defenses=defenses)
        alone_stats = alone.train_epoch(1)
        alone_eval = alone.evaluate(xt, yt, epoch=1, phase="test")
        state = batched.run_state(k)
        for part, module in (("client", alone.models.client), ("server", alone.models.server)):
            _assert_weights_close(state[part], module.state_dict())
        assert stats[k].loss == pytest.approx(alone_stats.loss, rel=1e-5)
        assert evals[k].loss == pytest.approx(alone_eval.loss, rel=1e-4)
        assert evals[k].accuracy == pytest.approx(alone_eval.accuracy, abs=0.7)  # 2 of 300
        mine, theirs = _claims(batched.defenses[k]), _claims(defenses)
        if kind == "nopeek":  # the per-epoch mean batch dCor: float rounding
            for m, t in zip(mine, theirs, strict=True):
                assert m.pop("train_batch_dcor_per_epoch") == pytest.approx(
                    t.pop("train_batch_dcor_per_epoch"), rel=1e-5)
        assert mine == theirs
        # the defense mattered: the same seed undefended ends elsewhere
        plain = SplitTrainer(build_models(cfg, seed=seed), x[:128], y[:128], seed=seed)
        plain.train_epoch(1)
        assert any((state["client"][n] - w).abs().max() > 1e-4
                   for n, w in plain.models.client.state_dict().items())
    # two runs of one seed but different parameters are different runs
    a, b = batched.run_state(0)["client"], batched.run_state(2)["client"]
    assert any((a[n] - b[n]).abs().max() > 1e-4 for n in a)


def test_batched_refuses_defenses_that_do_not_stack(beats):
    x, y, _, _ = beats
    models = [build_models(ModelConfig(), seed=s) for s in (0, 1)]
    with pytest.raises(ValueError, match="do not stack"):
        BatchedSplitTrainer(models, x, y, seeds=[0, 1],
                            defenses=[[build_defense("labeldp:epsilon=1")], []])
    shared = build_defense("nopeek:alpha=1")
    with pytest.raises(ValueError, match="own defense instances"):
        BatchedSplitTrainer(models, x, y, seeds=[0, 1], defenses=[[shared], [shared]])


def test_batched_defended_run_directories_match_runs_trained_alone(pool_dirs, tmp_path):
    """Formal DP at two target epsilons and two seeds, trained with run_training_batched: each
    directory's accounting (result.json's claim) is exactly that of the run trained alone, and
    its weights and metrics agree as undefended batched runs do."""
    specs = ["dp:mode=formal,mechanism=gaussian,target_epsilon=2,clip=2",
             "dp:mode=formal,mechanism=gaussian,target_epsilon=8,clip=2"]
    configs = [_config(pool_dirs, seed=s, defenses=[spec])
               for s, spec in zip((1, 2), specs, strict=True)]
    dirs = [tmp_path / f"b-{i}" for i in range(2)]
    results = run_training_batched(configs, dirs, progress=False)
    for i, (config, run_dir, result) in enumerate(zip(configs, dirs, results, strict=True)):
        assert result["batched"] == 2
        alone = run_training(config, tmp_path / f"alone-{i}", progress=False)
        assert result["defenses"] == alone["defenses"]
        assert result["defenses"][0]["train"]["releases_per_beat"] == 2
        _assert_same_run(run_dir, tmp_path / f"alone-{i}")
    eps = [r["defenses"][0]["epsilon"] for r in results]
    assert eps == [pytest.approx(2.0, rel=1e-3), pytest.approx(8.0, rel=1e-3)]


def test_batched_defended_checkpoint_resumes_alone(pool_dirs, tmp_path):
    """A formal-DP run trained batched for 2 epochs, then asked for 3, resumes alone from the
    batched checkpoint and accounts for its 3 releases as the run trained alone does."""
    spec = "dp:mode=formal,mechanism=gaussian,noise_multiplier=2,clip=2"
    configs = [_config(pool_dirs, seed=s, defenses=[spec]) for s in (1, 2)]
    dirs = [tmp_path / "s1", tmp_path / "s2"]
    run_training_batched(configs, dirs, progress=False)
    longer = [_config(pool_dirs, seed=s, epochs=3, defenses=[spec]) for s in (1, 2)]
    results = run_training_batched(longer, dirs, progress=False)
    for config, run_dir, result in zip(longer, dirs, results, strict=True):
        assert "batched" not in result  # resumed alone
        alone = run_training(config, tmp_path / f"alone-{run_dir.name}", progress=False)
        assert result["defenses"] == alone["defenses"]
        assert result["defenses"][0]["train"]["releases_per_beat"] == 3
        _assert_same_run(run_dir, tmp_path / f"alone-{run_dir.name}")
