"""Split-architecture plug-ins (splitpriv.architectures): the paper's CNN as every earlier
version built it, cnn1d and cnn2d sized by probing their cut, a user's MODULE:FUNCTION, and the
wire's shapes taken from the models."""

from __future__ import annotations

import dataclasses
import sys

import pytest
import torch

from splitpriv.architectures import MODELS, build_architecture, probe_shape
from splitpriv.distributed.wire import Code, kind_specs, split_specs
from splitpriv.models import ModelConfig, build_models
from splitpriv.run import TrainConfig, build_run_models


@pytest.mark.parametrize(("depth", "topology", "cut"), [(2, "vanilla", None), (5, "ushape", None),
                                                        (8, "vanilla", 4)])
def test_paper_model_is_build_models_bit_for_bit(depth, topology, cut):
    config = TrainConfig(depth=depth, cut_channels=cut, seed=7)
    models = build_run_models(config, topology, torch.device("cpu"))
    old = build_models(ModelConfig(depth, cut_channels=cut), ushape=topology == "ushape", seed=7)
    for part, module in old.modules().items():
        new = models.modules()[part].state_dict()
        assert list(new) == list(module.state_dict())
        assert all(torch.equal(new[k], v) for k, v in module.state_dict().items())


def test_builtin_models_probe_their_cut():
    assert {"paper", "cnn1d", "cnn2d"} <= set(MODELS)
    run = TrainConfig()
    torch.manual_seed(0)
    for spec, shape, cut in [("cnn1d", (2, 128), (16, 32)), ("cnn1d:width=8,depth=3", (3, 100),
                                                               (8, 25)),
                             ("cnn2d", (1, 8, 8), (16, 4, 4)), ("cnn2d:width=4", (3, 28, 20),
                                                                (4, 14, 10))]:
        client, body, head = build_architecture(spec).build(shape, 7, run)
        assert probe_shape(client, shape) == cut
        out = head(body(client(torch.randn(5, *shape))))
        assert tuple(out.shape) == (5, 7)
    with pytest.raises(ValueError, match=r"cannot take inputs \(1, 3\)"):
        build_architecture("cnn1d").build((1, 3), 2, run)
    with pytest.raises(ValueError, match=r"takes \(C, H, W\) inputs"):
        build_architecture("cnn2d").build((1, 128), 2, run)
    with pytest.raises(ValueError, match="model 'paper' takes"):
        build_architecture("paper").assemble((2, 128), 5, run, ushape=False)
    with pytest.raises(ValueError, match="--depth is the paper model's option"):
        TrainConfig(model="cnn1d", depth=3)


_USER = '''
from torch import nn

def split(input_shape, n_classes):
    c, length = input_shape
    client = nn.Sequential(nn.Conv1d(c, 4, 3, padding=1), nn.ReLU(), nn.AvgPool1d(4))
    server = nn.Sequential(nn.Flatten(), nn.Linear(4 * (length // 4), 12), nn.ReLU())
    return client, server, nn.Linear(12, n_classes)

def headless(input_shape, n_classes):
    return nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1], n_classes)

def wrong(input_shape, n_classes):
    return "not modules"
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "my_split_models.py").write_text(_USER)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_split_models"
    sys.modules.pop("my_split_models", None)


def test_a_users_function_builds_the_split(user_module):
    run = TrainConfig(model=f"{user_module}:split")
    u = build_run_models(run, "ushape", torch.device("cpu"), shape=((2, 32), 3))
    assert probe_shape(u.client, (2, 32)) == (4, 8) and u.head is not None
    v = build_run_models(run, "vanilla", torch.device("cpu"), shape=((2, 32), 3))
    assert v.head is None and tuple(v.server(v.client(torch.zeros(1, 2, 32))).shape) == (1, 3)
    # the same seed draws the same weights whatever the topology
    assert torch.equal(u.head.weight, v.server[1].weight)
    plain = build_run_models(TrainConfig(model=f"{user_module}:headless"), "vanilla",
                             torch.device("cpu"), shape=((2, 32), 3))
    assert tuple(plain.server(plain.client(torch.zeros(1, 2, 32))).shape) == (1, 3)
    with pytest.raises(ValueError, match="has no head"):
        build_run_models(TrainConfig(model=f"{user_module}:headless"), "ushape",
                         torch.device("cpu"), shape=((2, 32), 3))
    with pytest.raises(ValueError, match="must return"):
        build_run_models(TrainConfig(model=f"{user_module}:wrong"), "vanilla",
                         torch.device("cpu"), shape=((2, 32), 3))
    with pytest.raises(ValueError, match="cannot import 'nothing'"):
        TrainConfig(model=f"{user_module}:nothing")


def test_wire_specs_follow_the_models():
    paper = build_run_models(TrainConfig(), "ushape", torch.device("cpu"), shape=((1, 128), 5))
    assert split_specs(True, paper, (1, 128), 5) == kind_specs(True)  # the paper's, as declared
    run = dataclasses.replace(TrainConfig(), model="cnn2d")
    m = build_run_models(run, "ushape", torch.device("cpu"), shape=((1, 8, 8), 10))
    specs = split_specs(True, m, (1, 8, 8), 10)
    assert specs[Code.ACTIVATIONS].shape == (16, 4, 4) == specs[Code.ACT_GRAD].shape
    assert specs[Code.SERVER_OUTPUT].shape == (128,) and specs[Code.LABELS].classes == 10
    vanilla = split_specs(False, build_run_models(run, "vanilla", torch.device("cpu"),
                                                  shape=((1, 8, 8), 10)), (1, 8, 8), 10)
    assert vanilla[Code.SERVER_OUTPUT].shape == (10,)


def test_module_function_spec_is_told_from_options():
    from splitpriv.architectures import user_function

    assert user_function("pkg.mod:build") and user_function("mod:fn")
    assert not user_function("cnn1d:width=8") and not user_function("cnn1d")


def test_cnn2d_depth_adds_convolutions_and_keeps_the_default_client():
    run = TrainConfig()
    torch.manual_seed(0)
    default = build_architecture("cnn2d").build((1, 8, 8), 10, run)[0]
    torch.manual_seed(0)
    two = build_architecture("cnn2d:depth=2").build((1, 8, 8), 10, run)[0]
    # depth 2 is the two-convolution client of earlier versions: conv, act, pool, conv, act,
    # the same weights from the same seed
    assert [type(m).__name__ for m in default] == ["Conv2d", "LeakyReLU", "MaxPool2d", "Conv2d",
                                                   "LeakyReLU"]
    for (k, v), (k2, v2) in zip(default.state_dict().items(), two.state_dict().items(),
                                strict=True):
        assert k == k2 and torch.equal(v, v2)
    deep = build_architecture("cnn2d:depth=4").build((1, 8, 8), 10, run)[0]
    assert sum(isinstance(m, torch.nn.Conv2d) for m in deep) == 4
    assert probe_shape(deep, (1, 8, 8)) == (16, 4, 4)  # padded convolutions keep the cut
    with pytest.raises(ValueError, match="depth must be >= 2"):
        build_architecture("cnn2d:depth=1").build((1, 8, 8), 10, run)
