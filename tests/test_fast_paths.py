"""The CPU fast paths give the reference's numbers bit for bit: FlatAdam against torch.optim.Adam
(real training steps, checkpoints, fallbacks) and MaxPool2 against nn.MaxPool1d(2)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import vmap

from splitpriv.models import MaxPool2, ModelConfig, build_models
from splitpriv.optim import FlatAdam
from splitpriv.parties import cross_entropy


@pytest.fixture(scope="module")
def beats(take_beats):
    x, y, _, _ = take_beats(320)
    return x, y


def _train(opt_cls, beats, steps: int, *, state=None, models=None):
    """`steps` batch-32 steps of the 2-conv model, one optimizer per party (as the trainer)."""
    models = models or build_models(ModelConfig(), seed=3)
    opts = [opt_cls(list(m.parameters()), lr=1e-3) for m in (models.client, models.server)]
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


def _assert_same(a, b, opts_a, opts_b):
    for (ka, va), (kb, vb) in zip(a.monolithic().state_dict().items(),
                                  b.monolithic().state_dict().items(), strict=True):
        assert ka == kb and torch.equal(va, vb), ka
    for oa, ob in zip(opts_a, opts_b, strict=True):
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        assert sa.keys() == sb.keys()
        for k in sa:
            for name in ("step", "exp_avg", "exp_avg_sq"):
                assert torch.equal(sa[k][name], sb[k][name]), (k, name)


def test_flat_adam_equals_torch_adam_bit_for_bit(beats):
    ref, ref_opts = _train(torch.optim.Adam, beats, 40)
    flat, flat_opts = _train(FlatAdam, beats, 40)
    _assert_same(ref, flat, ref_opts, flat_opts)
    # the parameters really live in one buffer (the point of the class)
    p = list(flat.server.parameters())
    assert p[0].untyped_storage().data_ptr() == p[-1].untyped_storage().data_ptr()


def test_flat_adam_state_dicts_interchange_with_torch_adam(beats):
    """A checkpoint written by either optimizer resumes in the other with the same numbers."""
    ref, ref_opts = _train(torch.optim.Adam, beats, 10)
    flat, flat_opts = _train(FlatAdam, beats, 10)
    # continue each from the other's state (deep copies of the weights)
    a, a_opts = _train(FlatAdam, beats, 15, models=copy.deepcopy(ref),
                       state=[o.state_dict() for o in ref_opts])
    b, b_opts = _train(torch.optim.Adam, beats, 15, models=copy.deepcopy(flat),
                       state=[o.state_dict() for o in flat_opts])
    _assert_same(a, b, a_opts, b_opts)


def test_flat_adam_falls_back_when_a_parameter_has_no_gradient(beats):
    """A parameter left without a gradient is skipped exactly as torch.optim.Adam skips it."""
    x, y = beats
    results = []
    for cls in (torch.optim.Adam, FlatAdam):
        models = build_models(ModelConfig(), seed=5)
        opt = cls(list(models.server.parameters()), lr=1e-3)
        for i in range(6):
            a = models.client(x[i * 32:(i + 1) * 32]).detach()
            loss = cross_entropy(models.server(a), y[i * 32:(i + 1) * 32])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            if i % 2:
                models.server.layers[1].bias.grad = None  # (128,) bias: no gradient this step
            opt.step()
        results.append(models.server.state_dict())
    for k in results[0]:
        assert torch.equal(results[0][k], results[1][k]), k


def test_flat_adam_follows_weights_and_state_replaced_from_outside(beats):
    """Sequential SL's hand-over copies weights into the parameters and replaces the optimizer's
    state entries; the next FlatAdam step must use them, as torch.optim.Adam does."""
    donor, donor_opts = _train(torch.optim.Adam, beats, 4)
    runs = []
    for cls in (torch.optim.Adam, FlatAdam):
        models, opts = _train(cls, beats, 2)
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


@pytest.mark.parametrize("batched", [False, True])
def test_maxpool2_equals_nn_maxpool1d_with_gradients(beats, batched):
    a = _pool_inputs(beats)
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
