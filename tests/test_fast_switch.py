"""The fast kernels' switch (``splitpriv.fast``): a real MIT-BIH run with them off (``--no-fast``,
the config field) runs only torch's stock kernels and trains to the weights of the run with them
on, to rounding; ``SPLITPRIV_FAST=0`` reaches a fresh process and a study's worker processes; a
torch without one of the private functions the fast kernels call runs the stock kernel, with one
warning, and computes what the stock kernel computes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import splitpriv.fast
from splitpriv import models
from splitpriv.cli import main
from splitpriv.executor import Executor
from splitpriv.fast import FAST_ENV, fast_enabled, fast_kernels
from splitpriv.models import ModelConfig, build_models
from splitpriv.optim import FusedAdam, make_adam
from splitpriv.parties import cross_entropy

#: Weights of the two paths after the run below (2 epochs of 640 beats: 40 Adam steps) may differ
#: by this much, absolutely, per value. Both paths compute the same functions in a different order
#: of floating-point operations (torch's fused Adam against its stock one, about 1e-6 relative per
#: step; the first convolution as a matrix product against oneDNN's), so they agree to rounding:
#: measured here 1.3e-7 at most, median 7e-10, weights of magnitude ~0.1. The bound leaves room
#: for a rounding that flips one max-pool choice (9e-5 after 40 steps, tests/test_fast_paths.py);
#: a wrong kernel is off by far more (a learning-rate step alone is 1e-3). The test accuracies (%)
#: must agree to one beat of the 200.
WEIGHT_ATOL = 1e-4


def _count(monkeypatch, owner, name: str) -> list[int]:
    """Count the calls of ``owner.name`` (calling it)."""
    calls: list[int] = []
    real = getattr(owner, name)

    def counting(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(owner, name, counting)
    return calls


def _train(pool_dirs, out, *flags: str) -> dict[str, dict[str, torch.Tensor]]:
    mitdb, cache = pool_dirs
    assert main(["train", "--protocol", "paper", "--epochs", "2", "--train-subset", "640",
                 "--test-subset", "200", "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
                 "--out", str(out), "--no-progress", *flags]) == 0
    return torch.load(out / "weights.pt")


def test_both_paths_train_to_the_same_weights(pool_dirs, tmp_path, monkeypatch, capsys):
    kernels = (("pair-max", models._PairMax, "apply"),
               ("one-channel conv", models._OneChannelConv, "apply"),
               ("fused Adam", FusedAdam, "_fused_work"))
    spies = {name: _count(monkeypatch, owner, attr) for name, owner, attr in kernels}
    fast = _train(pool_dirs, tmp_path / "fast")
    assert all(spies.values()), {k: len(v) for k, v in spies.items()}  # the fast kernels ran
    for calls in spies.values():
        calls.clear()
    stock = _train(pool_dirs, tmp_path / "stock", "--no-fast")
    assert not any(spies.values()), {k: len(v) for k, v in spies.items()}  # none of them
    assert fast_enabled()  # the switch is the run's only
    diff = max((fast[p][k] - stock[p][k]).abs().max().item() for p in fast for k in fast[p])
    assert diff <= WEIGHT_ATOL, diff
    accs = [json.loads((tmp_path / d / "result.json").read_text())["test_accuracy"]
            for d in ("fast", "stock")]
    assert abs(accs[0] - accs[1]) <= 100 / 200 + 1e-9, accs
    capsys.readouterr()


def test_the_environment_variable_reaches_a_fresh_process():
    env = os.environ | {FAST_ENV: "0"}
    code = "import splitpriv.fast as f; print(f.fast_enabled())"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout
    assert out.strip() == "False"


def _report(_: int) -> bool:
    return fast_enabled()


def test_the_switch_reaches_a_studys_worker_processes():
    with Executor(jobs=2) as ex:
        assert ex.map(_report, [0, 1], progress=False) == [True, True]
        with fast_kernels(False):
            assert os.environ[FAST_ENV] == "0" and not fast_enabled()
            assert ex.map(_report, [0, 1], progress=False) == [False, False]
    assert fast_enabled()


@pytest.fixture
def one_warning(monkeypatch):
    """The warnings about missing private torch functions this test raises (a fresh record)."""
    monkeypatch.setattr(splitpriv.fast, "_WARNED", set())
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield caught


def _missing(caught, what: str) -> int:
    return sum(what in str(w.message) and w.category is RuntimeWarning for w in caught)


def _pool_grads(x: torch.Tensor, pool: nn.Module, monkeypatch=None, owner=None, name: str = ""
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """A pool's output and input gradient; with ``owner.name`` gone during the forward pass,
    where the pool chooses its kernel (torch's own backward needs some of them)."""
    x = x.detach().clone().requires_grad_()
    if monkeypatch is None:
        out = pool(x)
    else:
        with monkeypatch.context() as m:
            m.delattr(owner, name, raising=False)
            m.setattr(owner, name, None, raising=False)
            out = pool(x)
    out.backward(torch.arange(out.numel(), dtype=x.dtype).view_as(out))
    return out.detach(), x.grad


@pytest.mark.parametrize("owner, name, what", [
    (torch._C, "_are_functorch_transforms_active", "_are_functorch_transforms_active"),
    (torch.ops.aten, "max_pool2d_with_indices_backward", "max_pool2d_with_indices_backward"),
])
def test_a_missing_pool_private_runs_the_stock_pool(owner, name, what, one_warning, monkeypatch):
    x = torch.randn(32, 16, 128, generator=torch.Generator().manual_seed(0))
    assert x.numel() > models.PAIR_MAX_MIN_NUMEL  # the pair-max's size
    expected = _pool_grads(x, nn.MaxPool1d(2))
    calls = _count(monkeypatch, models._PairMax, "apply")
    for _ in range(2):
        got = _pool_grads(x, models.MaxPool2(), monkeypatch, owner, name)
        assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert not calls and _missing(one_warning, what) == 1


def test_a_missing_functorch_check_runs_the_stock_first_convolution(one_warning, monkeypatch):
    gen = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(32, 1, 128, generator=gen), torch.randn(16, 1, 7), torch.randn(16)
    w.requires_grad_()
    calls = _count(monkeypatch, models._OneChannelConv, "apply")
    for _ in range(2):
        with monkeypatch.context() as m:  # gone while the kernel is chosen (torch's backward
            m.delattr(torch._C, "_are_functorch_transforms_active")  # needs it)
            out = models.same_conv1d(x, w, b)
        out.sum().backward()
        assert torch.equal(out, F.conv1d(x, w, b, padding=3))
    assert not calls and _missing(one_warning, "_are_functorch_transforms_active") == 1


def _adam_steps(opt_for, steps: int = 3) -> list[torch.Tensor]:
    """``steps`` Adam steps of the 2-conv model on seeded data: its parameters after them."""
    gen = torch.Generator().manual_seed(2)
    x, y = torch.randn(32, 1, 128, generator=gen), torch.randint(0, 5, (32,), generator=gen)
    net = build_models(ModelConfig(), seed=0).monolithic()
    opt = opt_for(list(net.parameters()))
    for _ in range(steps):
        opt.zero_grad()
        cross_entropy(net(x), y).backward()
        opt.step()
    return [p.detach().clone() for p in net.parameters()]


def test_a_missing_fused_adam_kernel_builds_the_stock_adam(one_warning, monkeypatch):
    expected = _adam_steps(lambda p: torch.optim.Adam(p, lr=1e-3))
    monkeypatch.delattr(torch, "_fused_adam_")
    assert type(make_adam([nn.Parameter(torch.zeros(2))])) is torch.optim.Adam
    got = _adam_steps(make_adam)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert _missing(one_warning, "torch._fused_adam_") == 1


def test_a_missing_unwrapped_adam_step_takes_torchs_step(one_warning, monkeypatch):
    torch.optim.Adam([nn.Parameter(torch.zeros(1))])  # hooks Adam.step, as any plain Adam does
    assert getattr(torch.optim.Adam.step, "hooked", False)
    expected = _adam_steps(lambda p: torch.optim.Adam(p, lr=1e-3, fused=True))
    monkeypatch.delattr(torch.optim.Adam.step, "__wrapped__")
    got = _adam_steps(make_adam)  # the first step is torch's (it creates the state)
    assert all(torch.equal(a, b) for a, b in zip(got, expected, strict=True))
    assert _missing(one_warning, "Adam.step.__wrapped__") == 1


def test_hook_tables_torch_keeps_elsewhere_call_the_module(one_warning, monkeypatch):
    client = build_models(ModelConfig(), seed=0).client
    x = torch.randn(32, 1, 128, generator=torch.Generator().manual_seed(3))
    calls = _count(monkeypatch, models._OneChannelConv, "apply")
    client(x).sum().backward()
    assert calls  # the fast first convolution, while torch's hook tables are where we look
    calls.clear()
    monkeypatch.setattr(models, "_HOOKS", ("_renamed_forward_hooks", *models._HOOKS[1:]))
    for _ in range(2):
        client(x).sum().backward()
    assert not calls and _missing(one_warning, "_renamed_forward_hooks") == 1
