"""The trainer on a CUDA device: the same protocol as on the CPU (the batch order, the transcript
on the host, the run directory), numbers close to the CPU's (different kernels round differently,
so loosely), and the fused Adam's short path on CUDA against torch's bit for bit.

Skipped where torch sees no CUDA device, except the check that asking for one then fails clearly.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from splitpriv.channel import InProcessChannel, Kind, RecordPolicy, Transcript
from splitpriv.io import resolve_device
from splitpriv.models import ModelConfig, build_models
from splitpriv.optim import FusedAdam, make_adam
from splitpriv.parties import cross_entropy
from splitpriv.trainer import SplitTrainer

CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not CUDA, reason="torch sees no CUDA device")


@pytest.fixture(scope="module")
def beats(take_beats):
    x, y, x_test, y_test = take_beats(640, 400)
    return x, y, x_test, y_test


def test_asking_for_cuda_without_one_fails_clearly():
    if CUDA:
        assert resolve_device("auto").type == "cuda"
        assert resolve_device("cuda").type == "cuda"
    else:
        assert resolve_device("auto").type == "cpu"
        with pytest.raises(ValueError, match="no CUDA device"):
            resolve_device("cuda")


def _trained(beats, device: str, *, ushape: bool = False, epochs: int = 2):
    x, y, x_test, y_test = beats
    transcript = Transcript(policy=RecordPolicy(epochs=frozenset({epochs}), phases=None))
    models = build_models(ModelConfig(), ushape=ushape, seed=4).to(device)
    trainer = SplitTrainer(models, x.to(device), y.to(device), seed=9,
                           channel=InProcessChannel(transcript))
    stats = [trainer.train_epoch(e) for e in range(1, epochs + 1)]
    test = trainer.evaluate(x_test.to(device), y_test.to(device), epoch=epochs, phase="test")
    return trainer, stats, test, transcript


@needs_cuda
@pytest.mark.parametrize("ushape", [False, True])
def test_split_trainer_on_cuda_follows_the_cpu_run(beats, ushape):
    cpu, cpu_stats, cpu_test, cpu_tr = _trained(beats, "cpu", ushape=ushape)
    gpu, gpu_stats, gpu_test, gpu_tr = _trained(beats, "cuda", ushape=ushape)
    # the models, data and optimizer state live on the device
    for m in gpu.models.modules().values():
        assert all(p.device.type == "cuda" for p in m.parameters())
    state = gpu.client.optimizer.state_dict()["state"]
    assert all(s["exp_avg"].device.type == "cuda" for s in state.values())
    # the batch order comes from the CPU generator: the same rows cross in the same order
    cpu_ids, _ = cpu_tr.get(Kind.ACTIVATIONS, epoch=2)
    gpu_ids, gpu_acts = gpu_tr.get(Kind.ACTIVATIONS, epoch=2)
    assert torch.equal(cpu_ids, gpu_ids)
    assert gpu_acts.device.type == "cpu"  # the transcript keeps host copies
    # the numbers: close, not equal (other kernels, other rounding, amplified by 40 steps)
    for a, b in zip(cpu_stats, gpu_stats, strict=True):
        assert math.isfinite(b.loss) and b.first_nonfinite_step is None
        assert b.loss == pytest.approx(a.loss, rel=5e-2)
        assert abs(b.accuracy - a.accuracy) < 5.0
    assert gpu_test.loss == pytest.approx(cpu_test.loss, rel=5e-2)
    assert abs(gpu_test.accuracy - cpu_test.accuracy) < 5.0
    for name, ref in cpu.models.monolithic().state_dict().items():
        got = gpu.models.monolithic().state_dict()[name].cpu()
        assert (got - ref).abs().max().item() < 5e-2 * max(1.0, ref.abs().max().item()), name
    # and a checkpoint of the CUDA run resumes on the CPU
    state = gpu.state_dict()
    resumed = SplitTrainer(build_models(ModelConfig(), ushape=ushape, seed=0), beats[0],
                           beats[1], seed=0)
    resumed.load_state_dict(state)
    assert math.isfinite(resumed.train_epoch(3).loss)


@needs_cuda
def test_fused_adam_short_path_on_cuda_equals_torch_fused_adam(beats):
    x, y = beats[0][:256].cuda(), beats[1][:256].cuda()
    runs = []
    for make in (lambda p: torch.optim.Adam(p, lr=1e-3, fused=True), make_adam):
        torch.manual_seed(0)
        net = build_models(ModelConfig(), seed=2).to("cuda").monolithic()
        opt = make(list(net.parameters()))
        for i in range(8):
            rows = slice(32 * i, 32 * i + 32)
            opt.zero_grad(set_to_none=True)
            cross_entropy(net(x[rows]), y[rows]).backward()
            opt.step()
        runs.append((net, opt))
    (ref, ref_opt), (ours, our_opt) = runs
    assert isinstance(our_opt, FusedAdam)
    for (k, a), (_, b) in zip(ref.state_dict().items(), ours.state_dict().items(), strict=True):
        assert torch.equal(a, b), k


@needs_cuda
def test_run_training_on_cuda_writes_its_directory(pool_dirs, tmp_path):
    from splitpriv.run import TrainConfig, run_training

    mitdb, cache = pool_dirs
    config = TrainConfig(protocol="paper-unique", epochs=2, seed=1, train_subset=1000,
                         test_subset=500, val_fraction=0.1, device="cuda",
                         mitdb_dir=str(mitdb), cache_dir=str(cache))
    result = run_training(config, tmp_path / "run", progress=False)
    assert 0.0 <= result["test_accuracy"] <= 100.0 and math.isfinite(result["test_accuracy"])
    rows = [json.loads(r) for r in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2]
    weights = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    assert all(t.device.type == "cpu" for part in weights.values() for t in part.values())
    assert Transcript.load(tmp_path / "run" / "transcript.npz").keys()


@needs_cuda
def test_batched_trainer_on_cuda_runs(beats):
    from splitpriv.batched import BatchedSplitTrainer

    x, y, x_test, y_test = (t.cuda() for t in beats)
    runs = [build_models(ModelConfig(), seed=s).to("cuda") for s in range(2)]
    trainer = BatchedSplitTrainer(runs, x, y, seeds=[0, 1])
    stats = trainer.train_epoch()
    assert len(stats) == 2 and all(math.isfinite(s.loss) for s in stats)
    evals = trainer.evaluate(x_test, y_test)
    assert all(0.0 <= s.accuracy <= 100.0 for s in evals)
