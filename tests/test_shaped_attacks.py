"""The decoders and FSHA's networks built for the input's shape (2D for images, one output
channel per lead, a fully connected head over a dense cut) and the activation attacks on a user
model whose client ends in a linear layer (a dense cut (N, D))."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pytest
import torch
from torch import nn

import splitpriv
from attacks.base import AttackInputError, Knowledge
from attacks.cli import run_attack
from attacks.decoder import DecoderConfig, new_decoder
from attacks.servers.fsha import Critic, Decoder, Pilot, fsha_shapes
from attacks.shapes import decoder_shapes
from splitpriv.run import TrainConfig, run_training

DIGITS = TrainConfig(dataset="digits", model="cnn2d", epochs=3, seed=1, device="cpu")


def _advantage(result) -> float:
    return result.summary["linkage"]["k10"]["advantage"]


def _prior(result) -> float:
    return result.summary["baselines"]["mean_beat"]["linkage"]["k10"]["advantage"]


def dense_split(input_shape, n_classes):
    """A user's split whose client ends in a linear layer: the cut is (B, 32)."""
    client = nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), 32), nn.LeakyReLU())
    server = nn.Sequential(nn.Linear(32, 64), nn.ReLU())
    return client, server, nn.Linear(64, n_classes)


@pytest.mark.parametrize("view, out_len, input_shape, cut_shape, want", [
    ((16, 32), 128, (1, 128), None, ((16, 32), (1, 128))),  # MIT-BIH: as the attacks see it
    ((16, 32), 256, (2, 128), (16, 32), ((16, 32), (2, 128))),  # two leads: two channels out
    ((16, 16), 64, (1, 8, 8), (16, 4, 4), ((16, 4, 4), (1, 8, 8))),  # digits: 2D
    ((32, 1), 64, (1, 8, 8), (32,), ((32, 1), (1, 8, 8))),  # a dense cut: no spatial axis
    ((16, 16), 64, (1, 8, 8), (16, 16), ((16, 16), (1, 64))),  # a 1D cut of images: flattened
    ((4, 8), 64, (1, 4, 4, 4), (4, 2, 2, 2), ((4, 8), (1, 64))),  # 3D volumes: flattened
    ((16, 16), 64, (1, 8, 8), (16, 8, 8), ((16, 16), (1, 64))),  # shapes that disagree
])
def test_decoder_shapes_follow_the_input_and_the_cut(view, out_len, input_shape, cut_shape,
                                                      want):
    assert decoder_shapes(view, out_len, input_shape, cut_shape) == want


def test_decoders_are_built_for_those_shapes():
    cfg = DecoderConfig(width=16)
    x = torch.rand(6, 1, 64)
    image = new_decoder(torch.rand(6, 16, 16), x, cfg,
                        Knowledge(input_shape=(1, 8, 8), cut_shape=(16, 4, 4)))
    assert any(isinstance(m, nn.Conv2d) for m in image.layers)
    dense = new_decoder(torch.rand(6, 32, 1), x, cfg,
                        Knowledge(input_shape=(1, 8, 8), cut_shape=(32,)))
    assert isinstance(dense.layers[1], nn.Linear) and dense.layers[1].in_features == 32
    leads = new_decoder(torch.rand(6, 16, 32), torch.rand(6, 1, 256), cfg,
                        Knowledge(input_shape=(2, 128), cut_shape=(16, 32)))
    assert leads.layers[-1].out_channels == 2  # one output channel per lead
    for net, a in ((image, torch.rand(3, 16, 16)), (dense, torch.rand(3, 32, 1))):
        # untrained: the mean image, in the attacks' flattened view (N, 1, 64)
        torch.testing.assert_close(net(a), x.mean(0, keepdim=True).expand(3, -1, -1))
    # FSHA on digits: a 2D pilot (images -> the cut), decoder (back) and critic
    cut, inputs = fsha_shapes((16, 4, 4), (1, 8, 8))
    assert (cut, inputs) == ((16, 4, 4), (1, 8, 8))
    pilot, decoder = Pilot(16, 1, 8, cut=cut, inputs=inputs), Decoder(16, 1, 8, cut=cut,
                                                                     inputs=inputs)
    z = pilot(torch.rand(5, 1, 8, 8))
    assert z.shape == (5, 16, 4, 4) and decoder(z).shape == (5, 1, 8, 8)
    assert Critic(16, 1, 8, cut=cut)(z).shape == (5,)
    assert fsha_shapes((32,), (1, 8, 8)) == ((32, 1), (1, 64))  # dense: the flattened view


def test_a_2d_decoder_inverts_digits_far_better_than_the_mean_image(tmp_path):
    run_training(DIGITS, tmp_path, progress=False)
    result, path = run_attack("decoder", tmp_path, "train:0.2",
                              {"max_victims": "300", "epochs": "20", "reference_epochs": "0"})
    assert result.summary["tuning"]["shapes"] == {"cut": [16, 4, 4], "input": [1, 8, 8]}
    assert np.load(path.with_suffix(".npz"))["reconstructions"].shape == (300, 1, 8, 8)
    # re-identification among 11 same-class images: the mean image is chance by construction
    assert _advantage(result) > 0.5 and _advantage(result) > _prior(result) + 0.4


@pytest.fixture(scope="module")
def dense_runs(tmp_path_factory):
    name = splitpriv.register_model("dense-cut", dense_split)
    root = tmp_path_factory.mktemp("dense")
    for topology in ("vanilla", "ushape"):
        run_training(dataclasses.replace(DIGITS, model=name, topology=topology),
                     root / topology, progress=False)
    return root


def test_a_dense_cut_is_inverted_and_reidentified(dense_runs):
    plain = dense_runs / "vanilla"
    quick = {"max_victims": "300", "reference_epochs": "0"}
    decoder, _ = run_attack("decoder", plain, "train:0.2", quick | {"epochs": "20"})
    assert decoder.summary["tuning"]["shapes"] == {"cut": [32, 1], "input": [1, 8, 8]}
    assert _advantage(decoder) > _prior(decoder) + 0.4
    strongest, path = run_attack("strongest", plain, "train:0.2",
                                 quick | {"decoder_epochs": "10", "extra": ""})
    assert np.load(path.with_suffix(".npz"))["reconstructions"].shape == (300, 1, 8, 8)
    assert _advantage(strongest) > 0.5 and _advantage(strongest) > _prior(strongest) + 0.4
    # dCor: the batch definition over the 32 features; the paper's per-channel one needs
    # positions along each channel, which a dense cut has not
    dcor, _ = run_attack("dcor", plain, None, {"max_victims": "200", "batch_size": "100"})
    assert dcor.summary["paper"] is None
    assert dcor.summary["batch"]["mean"] > dcor.summary["control_shuffled"]["batch_shuffled"]


def test_labels_leak_through_a_dense_cut(dense_runs):
    result, _ = run_attack("label-strongest", dense_runs / "ushape", "train:0.2",
                           {"max_victims": "300"})
    # U-shaped: the labels stay on the client, the gradients at the dense cut give them away
    assert result.summary["chance_accuracy"] < 0.15 and result.summary["accuracy"] > 0.5


def test_fsha_reconstructs_digits_as_images(tmp_path):
    # 800 training images leave the rest of the 1,797 as the server's public ones; 2 epochs of
    # 25 batches = 50 steps, a record at steps 1, 25 and 50
    config = dataclasses.replace(DIGITS, epochs=2, train_subset=800, server="fsha")
    run_training(config, tmp_path, progress=False)
    rows = [json.loads(line) for line in (tmp_path / "fsha.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 25, 50]
    assert np.shape(rows[-1]["examples"]["x_hat"]) == (3, 1, 8, 8)  # 2D nets, images out
    # the hijack takes hold: the decoded cut comes closer to the client's private images
    # (seed 1, measured: median MSE 0.171 at step 1, 0.076 at step 50; the mean public image
    # 0.071, which this short run does not beat: README, own data, gives longer runs)
    assert rows[-1]["mse_median"] < 0.6 * rows[0]["mse_median"]
    assert rows[-1]["pearson_median"] > rows[0]["pearson_median"] + 0.2


def test_a_dense_cut_of_beats_gives_the_patient_away(pool_dirs, tmp_path):
    mitdb, cache = pool_dirs
    name = splitpriv.register_model("dense-cut", dense_split)
    config = TrainConfig(model=name, epochs=2, train_subset=3000, test_subset=500,
                         mitdb_dir=str(mitdb), cache_dir=str(cache), device="cpu")
    run_training(config, tmp_path, progress=False)
    result, _ = run_attack("identity", tmp_path, None, {"max_victims": "1000"})
    # closed-set identity among the enrolled patients from the 32 features of each beat
    assert result.summary["windows"]["w1"]["top1"]["accuracy"] > 3 * result.summary[
        "chance_top1"]
    decoder, _ = run_attack("decoder", tmp_path, "train:0.2",
                            {"max_victims": "300", "epochs": "10", "reference_epochs": "0"})
    assert decoder.summary["tuning"]["shapes"] == {"cut": [32, 1], "input": [1, 128]}
    with pytest.raises(AttackInputError, match="cut is dense"):
        run_attack("dtw", tmp_path, None, {"max_victims": "50"})
