"""The CPU fast paths: the project's Adam (torch's fused kernel) against the stock
torch.optim.Adam (real training steps, checkpoints, skipped gradients) and, bit for bit, against
torch's own fused path; MaxPool2 against nn.MaxPool1d(2) bit for bit; the first convolution as a
matrix product against nn.Conv1d; the trainer's deferred Accumulator against the running sum it
replaced."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import vmap

from splitpriv.models import (
    PAIR_MAX_MIN_NUMEL,
    ClientNet,
    MaxPool2,
    ModelConfig,
    build_models,
    same_conv1d,
)
from splitpriv.optim import FusedAdam, make_adam
from splitpriv.parties import cross_entropy
from splitpriv.trainer import Accumulator

#: Fused Adam evaluates the same formula as the stock single-tensor path in a different order of
#: floating-point operations, so the two agree to rounding, not bit for bit. Measured here: weights
#: 1.5e-8 apart after 10 batch-32 steps; trained on, each on its own gradients, two runs then drift
#: apart as any two machines' runs do (a rounding flips a max-pool choice: 9e-5 after 40 steps), so
#: long comparisons feed both optimizers the same gradients (:func:`_lockstep`).
ATOL, RTOL = 1e-6, 1e-5


def stock_adam(params, lr: float = 1e-3) -> torch.optim.Adam:
    return torch.optim.Adam(params, lr=lr)


@pytest.fixture(scope="module")
def beats(take_beats):
    x, y, _, _ = take_beats(320)
    return x, y


def _train(make_opt, beats, steps: int, *, state=None, models=None):
    """`steps` batch-32 steps of the 2-conv model, one optimizer per party (as the trainer)."""
    models = models or build_models(ModelConfig(), seed=3)
    opts = [make_opt(list(m.parameters()), lr=1e-3) for m in (models.client, models.server)]
    if state is not None:
        for o, s in zip(opts, state, strict=True):
            o.load_state_dict(s)
    _steps(models, opts, beats, range(steps))
    return models, opts


def _steps(models, opts, beats, batches) -> None:
    """Batch-32 steps numbered ``batches`` (batch i: rows 32 i .. 32 i + 31, wrapping)."""
    x, y = beats
    for i in batches:
        ids = torch.arange(i * 32, i * 32 + 32) % len(y)
        loss = cross_entropy(models.monolithic()(x[ids]), y[ids])
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        for o in opts:
            o.step()


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=RTOL, atol=ATOL)


def _assert_same(a, b, opts_a, opts_b):
    for (ka, va), (kb, vb) in zip(a.monolithic().state_dict().items(),
                                  b.monolithic().state_dict().items(), strict=True):
        assert ka == kb and _close(va, vb), ka
    for oa, ob in zip(opts_a, opts_b, strict=True):
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for k in sa:
            assert torch.equal(sa[k]["step"], sb[k]["step"]), (k, "step")
            for name in ("exp_avg", "exp_avg_sq"):
                assert _close(sa[k][name], sb[k][name]), (k, name)


def _lockstep(runs, beats, batches) -> None:
    """Batch-32 steps numbered ``batches`` of several (models, optimizers) runs, all fed the
    first run's gradients: what differs between them is the optimizers alone."""
    x, y = beats
    net = runs[0][0].monolithic()
    for i in batches:
        ids = torch.arange(i * 32, i * 32 + 32) % len(y)
        net.zero_grad(set_to_none=True)
        cross_entropy(net(x[ids]), y[ids]).backward()
        for models, _ in runs[1:]:
            for p, q in zip(net.parameters(), models.monolithic().parameters(), strict=True):
                q.grad = p.grad.clone()
        for _, opts in runs:
            for o in opts:
                o.step()


def test_adam_equals_torch_adam_to_rounding(beats):
    (ref, ref_opts), (fused, fused_opts) = runs = [_train(m, beats, 0)
                                                   for m in (stock_adam, make_adam)]
    _lockstep(runs, beats, range(40))
    _assert_same(ref, fused, ref_opts, fused_opts)
    # the CPU float32 parameters really take the fused kernel (the point of make_adam)
    assert all(o.defaults["fused"] for o in fused_opts)


def test_adam_state_dicts_interchange_with_torch_adam(beats):
    """A checkpoint written by either optimizer resumes in the other with the same numbers (and,
    as torch restores a group's options from the checkpoint, with the writer's ``fused`` flag)."""
    (ref, ref_opts), (fused, fused_opts) = runs = [_train(m, beats, 0)
                                                   for m in (stock_adam, make_adam)]
    _lockstep(runs, beats, range(10))
    # continue each from the other's state (deep copies of the weights)
    a, a_opts = _train(make_adam, beats, 0, models=copy.deepcopy(ref),
                       state=[o.state_dict() for o in ref_opts])
    b, b_opts = _train(stock_adam, beats, 0, models=copy.deepcopy(fused),
                       state=[o.state_dict() for o in fused_opts])
    assert all(o.param_groups[0]["fused"] for o in b_opts)
    assert not any(o.param_groups[0]["fused"] for o in a_opts)
    _lockstep([(b, b_opts), (a, a_opts)], beats, range(10, 25))
    _assert_same(a, b, a_opts, b_opts)


def test_adam_skips_a_parameter_without_gradient_as_torch_adam(beats):
    """A parameter left without a gradient is skipped exactly as torch.optim.Adam skips it."""
    x, y = beats
    results = []
    for make_opt in (stock_adam, make_adam):
        models = build_models(ModelConfig(), seed=5)
        opt = make_opt(list(models.server.parameters()), lr=1e-3)
        for i in range(6):
            a = models.client(x[i * 32:(i + 1) * 32]).detach()
            loss = cross_entropy(models.server(a), y[i * 32:(i + 1) * 32])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if i % 2:
                models.server.layers[1].bias.grad = None  # (128,) bias: no gradient this step
            opt.step()
        results.append((models.server.state_dict(), opt.state_dict()["state"]))
    for k in results[0][0]:
        assert _close(results[0][0][k], results[1][0][k]), k
    for k, st in results[0][1].items():  # the skipped bias took 3 steps, the others 6
        assert torch.equal(st["step"], results[1][1][k]["step"]), k


def test_adam_follows_weights_and_state_replaced_from_outside(beats):
    """Sequential SL's hand-over copies weights into the parameters and replaces the optimizer's
    state entries; the next step must use them, as torch.optim.Adam does."""
    donor, donor_opts = _train(stock_adam, beats, 4)
    runs = []
    for make_opt in (stock_adam, make_adam):
        models, opts = _train(make_opt, beats, 2)
        for mine, theirs, opt, donor_opt in zip(
            (models.client, models.server), (donor.client, donor.server), opts, donor_opts,
            strict=True,
        ):
            for p, q in zip(mine.parameters(), theirs.parameters(), strict=True):
                p.data.copy_(q.data)
                opt.state[p] = {k: v.clone() for k, v in donor_opt.state[q].items()}
        _steps(models, opts, beats, range(2, 5))  # the 3 batches after the 2 trained before
        runs.append((models, opts))
    _assert_same(runs[0][0], runs[1][0], runs[0][1], runs[1][1])


def _pool_inputs(beats) -> torch.Tensor:
    """Real first-layer activations (32, 16, 128) plus pairs made equal (ties) and NaNs."""
    x, _ = beats
    conv = build_models(ModelConfig(), seed=0).client.layers[:2]
    with torch.no_grad():
        a = conv(x[:32]).clone()
    tie = torch.rand(a[..., 1::2].shape, generator=torch.Generator().manual_seed(0)) < 0.2
    a[..., 1::2] = torch.where(tie, a[..., 0::2], a[..., 1::2])
    a[0, 0, 5] = a[0, 1, 2] = a[1, 2, 2] = a[1, 2, 3] = float("nan")  # odd, even and both
    return a


# the pair-max kernel on both pools' inputs at batch 32, and the native one below its size
@pytest.mark.parametrize("length", [128, 64, 32])
@pytest.mark.parametrize("batched", [False, True])
@pytest.mark.parametrize("nan", [True, False])  # the eager kernel looks for NaNs only if any
def test_maxpool2_equals_nn_maxpool1d_with_gradients(beats, batched, length, nan):
    a = _pool_inputs(beats)[..., :length].contiguous()
    if not nan:
        a = a.nan_to_num(nan=0.0)
    assert (a.numel() > PAIR_MAX_MIN_NUMEL) == (length != 32)
    g = torch.randn(*a.shape[:-1], a.shape[-1] // 2, generator=torch.Generator().manual_seed(1))
    if batched:  # three "runs" under vmap, as BatchedSplitTrainer stacks them
        a, g = torch.stack([a, a.flip(0), a * 2]), torch.stack([g, g, -g])
    results = []
    for pool in (nn.MaxPool1d(2), MaxPool2()):
        x = a.clone().requires_grad_()
        out = vmap(pool)(x) if batched else pool(x)
        out.backward(g)
        results.append((out.detach(), x.grad))
    (ref_out, ref_grad), (out, grad) = results
    assert torch.equal(ref_out.isnan(), out.isnan())
    assert torch.equal(ref_out.nan_to_num(), out.nan_to_num())
    assert torch.equal(ref_grad, grad)
    assert (ref_grad != 0).sum() == ref_out.numel()  # one input per output gets its gradient
    with torch.no_grad():  # evaluation takes the native kernel
        a3 = a.reshape(-1, *a.shape[-2:])
        assert torch.equal(MaxPool2()(a3).nan_to_num(), nn.MaxPool1d(2)(a3).nan_to_num())


def test_fused_adam_short_path_equals_torch_fused_adam_bit_for_bit(beats):
    """FusedAdam's step launches the kernel torch's fused path launches, on the same arguments:
    the same weights and state bit for bit, a parameter without gradient skipped alike, and
    registered step hooks run once per step."""
    def fused_torch(params, lr=1e-3):
        return torch.optim.Adam(params, lr=lr, fused=True)

    (ref, ref_opts), (ours, our_opts) = runs = [_train(m, beats, 0)
                                                for m in (fused_torch, make_adam)]
    assert all(isinstance(o, FusedAdam) for o in our_opts)
    calls = []
    our_opts[1].register_step_pre_hook(lambda *_: calls.append("pre"))
    our_opts[1].register_step_post_hook(lambda *_: calls.append("post"))
    _lockstep(runs, beats, range(6))
    for models, _ in runs:  # a step where one bias has no gradient
        models.server.layers[1].bias.grad = None
    for _, opts in runs:
        for o in opts:
            o.step()
    _lockstep(runs, beats, range(6, 12))
    for (ka, va), (kb, vb) in zip(ref.monolithic().state_dict().items(),
                                  ours.monolithic().state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    for oa, ob in zip(ref_opts, our_opts, strict=True):
        sa, sb = oa.state_dict(), ob.state_dict()
        assert sa["param_groups"] == sb["param_groups"]
        for k in sa["state"]:
            for name, v in sa["state"][k].items():
                assert torch.equal(v, sb["state"][k][name]), (k, name)
    assert calls == ["pre", "post"] * 13
    our_opts[0].zero_grad()
    assert all(p.grad is None for p in ours.client.parameters())


def test_accumulator_sums_as_the_running_sum_did():
    """The deferred Accumulator reports the loss a float32 running sum on the device gave, bit for
    bit, the confusion matrix and the first non-finite step."""
    gen = torch.Generator().manual_seed(0)
    acc, running = Accumulator(torch.device("cpu")), torch.zeros(())
    for step in range(50):
        b = 32 if step < 49 else 29
        loss = torch.rand((), generator=gen) * 3
        if step == 40:
            loss = torch.tensor(float("inf"))
        logits, y = torch.randn(b, 5, generator=gen), torch.randint(0, 5, (b,), generator=gen)
        acc.add(loss, logits, y)
        running += loss * len(y)
    stats = acc.stats()
    assert stats.loss == running.item() / acc.n and stats.first_nonfinite_step == 41
    assert acc.loss.item() == running.item()
    assert sum(map(sum, stats.confusion)) == acc.n == 49 * 32 + 29
    assert int(acc.correct) == sum(stats.confusion[i][i] for i in range(5))


def test_maxpool2_takes_the_eager_pair_max_outside_transforms():
    x = torch.randn(32, 16, 64, requires_grad=True)
    assert "_PairMax" in type(MaxPool2()(x).grad_fn).__name__


@pytest.mark.parametrize("runs", [1, 3])
def test_one_channel_conv_equals_conv1d_with_gradients(beats, runs):
    """The first convolution as a batched matrix product: nn.Conv1d's outputs and weight and bias
    gradients to float rounding, for one run and for 3 stacked runs (grouped), each run on its
    own beats; the inputs get no gradient, as data."""
    x, _ = beats
    gen = torch.Generator().manual_seed(2)
    xs = torch.stack([x[32 * k:32 * k + 32, 0] for k in range(runs)], 1)  # (32, runs, 128)
    w = torch.randn(runs * 16, 1, 7, generator=gen) * 0.3
    b = torch.randn(runs * 16, generator=gen) * 0.1
    g = torch.randn(32, runs * 16, 128, generator=gen)
    results = []
    for conv in (lambda *a: nn.functional.conv1d(*a, padding=3, groups=runs),
                 lambda *a: same_conv1d(*a, groups=runs)):
        wk, bk = w.clone().requires_grad_(), b.clone().requires_grad_()
        out = conv(xs, wk, bk)
        out.backward(g)
        results.append((out.detach(), wk.grad, bk.grad, out.grad_fn))
    (ref, ref_w, ref_b, _), (out, gw, gb, fn) = results
    assert "OneChannelConv" in type(fn).__name__  # the fast path ran
    torch.testing.assert_close(out, ref, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(gw, ref_w, atol=1e-4, rtol=1e-5)
    torch.testing.assert_close(gb, ref_b, atol=1e-4, rtol=1e-5)
    assert ref_w.abs().min() > 1e-3  # every weight got a real gradient


def test_client_takes_the_native_first_conv_when_hooked_or_evaluating(beats):
    """ClientNet's first layer runs the matrix product only where nothing hooks it (Opacus's
    per-sample gradients hook it) and a gradient is being taken; it is the same layer either
    way."""
    x, _ = beats
    net = ClientNet()
    fast = net(x[:32])
    seen = []
    handle = net.layers[0].register_forward_hook(lambda m, i, o: seen.append(o))
    hooked = net(x[:32])
    handle.remove()
    assert len(seen) == 1 and "Convolution" in type(seen[0].grad_fn).__name__
    torch.testing.assert_close(hooked, fast, atol=1e-6, rtol=1e-5)
    with torch.no_grad():
        torch.testing.assert_close(net(x[:32]), fast.detach(), atol=1e-6, rtol=1e-5)
