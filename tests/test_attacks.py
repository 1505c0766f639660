"""Attacks: leakage measures against hand-worked cases and the reference packages, inversion of an
invertible client, label inference on a small U-shaped run, JSON round trips, bad inputs, and the
command-line entry point on a saved run. Real MIT-BIH beats, small subsets, few steps."""

from __future__ import annotations

import json
import math

import dcor
import numpy as np
import pytest
import torch
from dtaidistance import dtw
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from attacks import (
    ATTACKS,
    AttackInputError,
    AttackResult,
    AuxData,
    GroundTruth,
    Knowledge,
    build_attack,
    load_builtin,
)
from attacks.cli import run_attack_cli
from attacks.measures import dtw_pairs, paper_pool, znorm
from attacks.metrics import reconstruction_metrics
from attacks.runs import load_run, parse_aux
from splitpriv.channel import InProcessChannel, Kind, Message, RecordPolicy, Transcript
from splitpriv.dcor import (
    dcor_batches,
    dcor_per_channel,
    dcor_samples,
    pairwise_euclidean,
    u_dcor_sqr_from_distances,
)
from splitpriv.io import torch_threads
from splitpriv.models import ModelConfig, build_models
from splitpriv.run import TrainConfig, run_training
from splitpriv.trainer import SplitTrainer


@pytest.fixture(scope="module")
def beats(take_beats):
    """800 training beats of the paper-unique protocol: x (800, 1, 128) float32, y (800,)."""
    x, y, _, _ = take_beats(800)
    return x, y


def _transcript(**messages: tuple[torch.Tensor, torch.Tensor]) -> Transcript:
    """A transcript holding one train-phase epoch-1 message per kind: kind=(ids, tensor)."""
    t = Transcript(policy=RecordPolicy(phases=None))
    for kind, (ids, tensor) in messages.items():
        t.record(Message(Kind(kind), tensor, ids, 1, "train"))
    return t


@pytest.fixture(scope="module")
def vanilla(beats):
    """A 2-conv vanilla split model trained 2 epochs on 800 beats, with its transcript."""
    x, y = beats
    transcript = Transcript(policy=RecordPolicy(phases=None))
    models = build_models(ModelConfig(), seed=0)
    trainer = SplitTrainer(models, x, y, seed=0, channel=InProcessChannel(transcript))
    with torch_threads(1):  # small batches: one thread is faster on a busy host
        for epoch in (1, 2):
            trainer.train_epoch(epoch)
    return models, transcript


# ---- distance correlation -------------------------------------------------------------------


def test_dcor_hand_worked_cases():
    # x = (1, 2, 3): a = |xi - xj| = [[0,1,2],[1,0,1],[2,1,0]], row means (1, 2/3, 1), grand 8/9,
    # A = [[-10,2,8],[2,-4,2],[8,2,-10]] / 9, dVar^2_x = sum(A^2)/9 = 360/729 = 40/81.
    # y = (1, 3, 2) is x with rows 2, 3 swapped, so B is A with rows and columns 2, 3 swapped;
    # sum(A * B) = 252/81, dCov^2 = 28/81, dCor^2 = (28/81) / (40/81) = 0.7.
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert dcor_per_channel(x, torch.tensor([[[1.0, 3.0, 2.0]]])).item() == pytest.approx(
        math.sqrt(0.7), abs=1e-12
    )
    # y = x^2 for x = (-1, 0, 1): Pearson r = 0, but dCor sees the dependence. b = |y_i - y_j| =
    # [[0,1,0],[1,0,1],[0,1,0]], B = [[-2,4,-2],[4,-8,4],[-2,4,-2]] / 9, dVar^2_y = 144/729,
    # dCov^2 = 72/729, dCor^2 = 72 / sqrt(360 * 144) = 1/sqrt(10), dCor = 10^(-1/4).
    x = torch.tensor([[-1.0, 0.0, 1.0]])
    got = dcor_per_channel(x, torch.tensor([[[1.0, 0.0, 1.0]]])).item()
    assert got == pytest.approx(10 ** -0.25, abs=1e-12)
    # an affine map of x has dCor 1; a constant has dCor 0 (zero variance, as dcor defines it)
    x = torch.tensor([[0.3, -1.0, 2.0, 5.0]], dtype=torch.float64)
    acts = torch.stack([3 * x + 1, torch.full_like(x, 7.0)], 1)  # (1, 2, 4)
    assert dcor_per_channel(x, acts)[0].tolist() == pytest.approx([1.0, 0.0], abs=1e-12)
    # the batch definition on the same vectors: rows as observations
    assert dcor_samples(np.array([[1.0], [2.0], [3.0]]), np.array([[1.0], [3.0], [2.0]])) == (
        pytest.approx(math.sqrt(0.7), abs=1e-12)
    )


def test_dcor_agrees_with_dcor_package_on_real_activations(beats, vanilla):
    x, _ = beats
    models, _ = vanilla
    with torch.no_grad():
        acts = models.client(x[:40]).double()  # (40, 16, 32)
    pooled = paper_pool(x[:40], 32)
    ours = dcor_per_channel(pooled, acts).numpy()
    ref = np.array([[dcor.distance_correlation(pooled[i].numpy(), acts[i, c].numpy())
                     for c in range(16)] for i in range(40)])
    np.testing.assert_allclose(ours, ref, atol=1e-6, rtol=0)
    assert ours.std() > 0.01  # not a constant: real spread across beats and channels
    with torch.no_grad():
        flat_a = models.client(x[:200]).reshape(200, -1).double()
    flat_x = x[:200].reshape(200, -1).double()
    assert dcor_samples(flat_x, flat_a) == pytest.approx(
        dcor.distance_correlation(flat_x.numpy(), flat_a.numpy()), abs=1e-6)
    a, b = pairwise_euclidean(flat_x), pairwise_euclidean(flat_a)
    assert u_dcor_sqr_from_distances(a, b) == pytest.approx(
        dcor.u_distance_correlation_sqr(flat_x.numpy(), flat_a.numpy()), abs=1e-6)


@settings(max_examples=25, deadline=None)
@given(
    n_beats=st.integers(1, 4), channels=st.integers(1, 3), length=st.integers(2, 12),
    seed=st.integers(0, 2**16), ties=st.booleans(),
)
def test_dcor_per_channel_matches_dcor_for_any_shape(n_beats, channels, length, seed, ties):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_beats, length))
    acts = rng.standard_normal((n_beats, channels, length))
    if ties:  # repeated values (a LeakyReLU, a max-pool) exercise the sort-based row sums
        x, acts = np.round(x), np.round(acts)
    ours = dcor_per_channel(x, acts).numpy()
    for i in range(n_beats):
        for c in range(channels):
            ref = dcor.distance_correlation(x[i], acts[i, c])
            assert ours[i, c] == pytest.approx(ref, abs=1e-6)


def test_dcor_batches_interval_and_independence(beats):
    x, _ = beats
    flat = x.reshape(len(x), -1).double()
    noise = torch.randn(len(x), 64, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dep = dcor_batches(flat, torch.cat([flat[:, ::2], noise], 1), batch_size=200, n_batches=10)
    ind = dcor_batches(flat, noise, batch_size=200, n_batches=10)
    assert dep["dcor"].min() > ind["dcor"].max()
    # the V-statistic of independent 128- and 64-dimensional vectors sits well above 0 ...
    assert ind["dcor"].mean() > 0.3
    # ... the bias-corrected dCor^2 does not
    assert abs(ind["u_dcor_sqr"].mean()) < 0.05 < dep["u_dcor_sqr"].mean()


# ---- DTW --------------------------------------------------------------------------------------


def test_dtw_agrees_exactly_with_dtaidistance(beats, vanilla):
    x, _ = beats
    models, _ = vanilla
    with torch.no_grad():
        acts = models.client(x[:6]).double().numpy()  # (6, 16, 32)
    raw = x[:6].reshape(6, -1).double().numpy()
    ours = dtw_pairs(raw, acts)
    scale_free = dtw_pairs(raw, acts, scale_free=True)
    for i in range(6):
        for c in range(16):
            # dtaidistance's C implementation, exactly, through both of its entry points ...
            assert ours[i, c] == dtw.distance(raw[i], acts[i, c], use_c=True)
            assert ours[i, c] == dtw.distance_fast(raw[i], acts[i, c], use_pruning=False)
            # ... (distance_fast's default pruning can return inf for series of unequal length,
            # hence none here) and its pure-Python version up to the last bit or two
            assert ours[i, c] == pytest.approx(dtw.distance(raw[i], acts[i, c]), rel=1e-13)
            assert scale_free[i, c] == dtw.distance(znorm(raw[i]), znorm(acts[i, c]), use_c=True)
    assert (ours > 0).all() and not np.allclose(ours, scale_free)


# ---- leakage attacks on a transcript -----------------------------------------------------------


def test_leakage_matched_pairs_beat_shuffled_pairs(beats, vanilla):
    x, y = beats
    _, transcript = vanilla
    truth = GroundTruth(x, y)
    r = build_attack("dcor", {"max_victims": "600", "batch_size": "200", "n_batches": "5",
                              "control_victims": "300"})(transcript, Knowledge(), truth)
    s = r.summary
    assert len(s["paper"]["per_channel"]) == 16 and s["n_beats"] == 600
    assert s["paper"]["max"] == max(s["paper"]["per_channel"])
    ctrl = s["control_shuffled"]
    assert np.mean(ctrl["paper_per_channel_matched"]) > np.mean(ctrl["paper_per_channel_shuffled"])
    assert ctrl["batch_matched"] > ctrl["batch_shuffled"] + 0.2
    assert s["batch"]["ci_low"] <= s["batch"]["mean"] <= s["batch"]["ci_high"]
    assert r.scores["dcor_paper"].shape == (600, 16)

    d = build_attack("dtw", {"max_victims": "200", "control_victims": "200"})(
        transcript, Knowledge(), truth)
    ctrl = d.summary["scale_free"]["control_shuffled"]
    assert np.mean(ctrl["per_channel_shuffled"]) > np.mean(ctrl["per_channel_matched"])
    assert d.scores["dtw_paper"].shape == (200, 16)


def test_first_of_batch_pairing_reproduces_the_original_flaw(beats, vanilla):
    x, y = beats
    _, transcript = vanilla
    opts = {"max_victims": "400", "batch_size": "100", "n_batches": "3", "control_victims": "0"}
    own = build_attack("dcor", opts)(transcript, Knowledge(), GroundTruth(x, y))
    flawed = build_attack("dcor", {**opts, "pairing": "first-of-batch"})(
        transcript, Knowledge(), GroundTruth(x, y))
    assert flawed.summary["batch"]["mean"] < own.summary["batch"]["mean"] - 0.2
    assert flawed.notes and not own.notes


# ---- inversion --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def linear_client(beats):
    """An invertible client, one linear convolution (B, 1, 128) -> (B, 4, 128), and its
    transcript; the attacker knows 200 of the 600 beats."""
    x, y = beats
    x, y = x[:600], y[:600]
    torch.manual_seed(0)

    def build():
        return nn.Conv1d(1, 4, 5, padding=2)

    client = build()
    with torch.no_grad():
        acts = client(x)
    transcript = _transcript(activations=(torch.arange(600), acts))
    ids = torch.arange(0, 600, 3)
    aux = AuxData(x=x[ids], y=y[ids], ids=ids, source="train: every third row")
    knowledge = Knowledge(aux=aux, depth=1, client_state=client.state_dict(), build_client=build)
    return transcript, knowledge, GroundTruth(x, y)


def test_whitebox_inverts_an_invertible_client(linear_client):
    transcript, knowledge, truth = linear_client
    attack = build_attack("whitebox", {"steps": "200", "lr": "0.05", "tv": "0",
                                       "max_victims": "60"})
    r = attack(transcript, knowledge, truth)
    m = r.summary["metrics"]
    assert m["pearson"]["q1"] > 0.999 and m["prdn"]["q3"] < 1.0  # < 1% error
    assert r.summary["baseline_mean_beat"]["prdn"]["median"] > 50  # far from trivial
    # victims exclude the aux rows, and the reconstructions are kept for plots
    assert not np.isin(r.scores["ids"], knowledge.aux.ids.numpy()).any()
    assert r.scores["reconstructions"].shape == (60, 128)
    assert r.knowledge["client_weights"] and r.knowledge["aux"] is None  # aux withheld


def test_decoder_learns_to_invert_from_aux(linear_client):
    transcript, knowledge, truth = linear_client
    r = build_attack("decoder", {"epochs": "15", "max_victims": "100"})(
        transcript, knowledge, truth)
    m, base = r.summary["metrics"], r.summary["baseline_mean_beat"]
    assert m["pearson"]["median"] > 0.95
    assert m["snr_db"]["median"] > base["snr_db"]["median"] + 6  # error energy 4x smaller
    assert not r.knowledge["client_weights"]  # black box: weights withheld


def test_unsplit_runs_without_weights(linear_client):
    transcript, knowledge, truth = linear_client
    r = build_attack("unsplit", {"rounds": "10", "max_victims": "50", "tv": "0"})(
        transcript, knowledge, truth)
    m = r.summary["metrics"]
    # architecture only: the shape comes back (a linear client leaves scale and offset unknown)
    assert m["pearson"]["median"] > 0.9
    assert not r.knowledge["client_weights"] and r.knowledge["aux"] is None


def test_reconstruction_metrics_hand_worked():
    x = torch.tensor([[1.0, 2.0, 3.0, 2.0]], dtype=torch.float64)
    # x_hat = x + 0.1 everywhere: error energy 4 * 0.01 = 0.04; mse 0.01; sum x^2 = 18;
    # PRD = 100 sqrt(0.04 / 18); mean-removed energy: x - 2 = (-1, 0, 1, 0) -> 2;
    # PRDN = 100 sqrt(0.04 / 2), SNR = 10 log10(2 / 0.04); a shift keeps Pearson r = 1.
    m = reconstruction_metrics(x, x + 0.1)
    assert m["mse"][0] == pytest.approx(0.01)
    assert m["prd"][0] == pytest.approx(100 * math.sqrt(0.04 / 18))
    assert m["prdn"][0] == pytest.approx(100 * math.sqrt(0.02))
    assert m["snr_db"][0] == pytest.approx(10 * math.log10(50))
    assert m["pearson"][0] == pytest.approx(1.0)
    assert m["dtw"][0] == pytest.approx(0.2)  # sqrt(4 * 0.01) along the diagonal


# ---- label inference ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ushape_run(beats):
    x, y = beats
    x, y = x[:600], y[:600]
    transcript = Transcript(policy=RecordPolicy(phases=None))
    trainer = SplitTrainer(build_models(ModelConfig(), ushape=True, seed=0), x, y, seed=0,
                           channel=InProcessChannel(transcript))
    with torch_threads(1):
        trainer.train_epoch(1)
        trainer.train_epoch(2)
    ids = torch.arange(0, 600, 10)  # the attacker knows the labels of 60 of its own rows
    aux = AuxData(x=x[ids], y=y[ids], ids=ids, source="train: every tenth row")
    return transcript, Knowledge(aux=aux), GroundTruth(x, y)


@pytest.mark.parametrize("name", ["label-direction", "label-kmeans", "label-norm"])
def test_label_attacks_beat_chance_on_ushape(ushape_run, name):
    transcript, knowledge, truth = ushape_run
    assert "labels" not in transcript.kinds()
    r = build_attack(name)(transcript, knowledge, truth)
    s = r.summary
    assert s["topology"] == "ushape" and s["n"] == 540  # the 60 aux rows are not victims
    assert set(s["per_class_auc"]) == {"0", "1", "2", "3", "4"}
    if name == "label-norm":  # one number per beat: above chance, far from perfect
        assert s["accuracy"] > s["chance_accuracy"] + 0.05 and s["mean_auc"] > 0.6
        assert max(v for v in s["norm_auc"].values()) > 0.7
    else:
        assert s["accuracy"] > 0.8 > s["chance_accuracy"] + 0.4
        assert s["mean_auc"] > 0.9


def test_kmeans_without_references_reports_oracle_naming(ushape_run):
    transcript, _, truth = ushape_run
    r = build_attack("label-kmeans")(transcript, Knowledge(), truth)
    assert r.summary["naming"].startswith("oracle") and r.summary["adjusted_rand_index"] > 0.5


def test_vanilla_labels_read_in_the_clear(beats, vanilla):
    x, y = beats
    _, transcript = vanilla
    r = build_attack("label-direction")(transcript, Knowledge(), GroundTruth(x, y))
    assert r.summary["topology"] == "vanilla" and r.summary["accuracy"] == 1.0
    assert "clear" in r.notes[0]


# ---- results, registry, bad input -------------------------------------------------------------


def test_registry_names_and_citations():
    load_builtin()
    # other label attacks may join (attacks/label_*.py); these are always there
    assert set(ATTACKS) >= {"dcor", "dtw", "label-norm", "label-direction", "label-kmeans",
                            "decoder", "whitebox", "unsplit", "ridge", "strongest"}
    for name, cls in ATTACKS.items():
        assert cls.name == name and cls.citation and cls.__doc__
    with pytest.raises(ValueError, match="unknown attack"):
        build_attack("nope")
    with pytest.raises(ValueError, match="unknown parameter"):
        build_attack("dcor", {"stepz": "3"})
    with pytest.raises(ValueError, match="cannot read"):
        build_attack("whitebox", {"steps": "many"})
    with pytest.raises(ValueError, match="pairing"):
        build_attack("dtw", {"pairing": "whatever"})


def test_result_json_npz_round_trip(tmp_path, ushape_run):
    transcript, knowledge, truth = ushape_run
    r = build_attack("label-direction")(transcript, knowledge, truth)
    r.summary["undefined"] = float("nan")
    path = r.save(tmp_path)
    assert path == tmp_path / "label-direction.json" and (tmp_path / "label-direction.npz").exists()
    doc = json.loads(path.read_text())  # strict JSON: NaN written as null
    assert doc["summary"]["undefined"] is None and doc["scores"]["ids"]["shape"] == [540]
    back = AttackResult.load(path)
    assert back.summary["accuracy"] == r.summary["accuracy"]
    assert back.knowledge == json.loads(json.dumps(r.knowledge))
    assert back.config == r.config and back.citation == r.citation
    for k, v in r.scores.items():
        np.testing.assert_array_equal(back.scores[k], v)


def test_bad_inputs_get_clear_errors(beats, vanilla, ushape_run):
    x, y = beats
    _, transcript = vanilla
    truth = GroundTruth(x, y)
    acts_only = _transcript(activations=(torch.arange(3), torch.zeros(3, 16, 32)))
    with pytest.raises(AttackInputError, match="output_grad.*ushape"):  # no gradients recorded
        build_attack("label-direction")(acts_only, Knowledge(), truth)
    with pytest.raises(AttackInputError, match="activations.*phase 'test'"):
        build_attack("dcor", {"phase": "test"})(transcript, Knowledge(), truth)
    with pytest.raises(AttackInputError, match="ground truth holds 10 rows"):  # other data
        build_attack("dtw")(transcript, Knowledge(), GroundTruth(x[:10], y[:10]))
    with pytest.raises(AttackInputError, match=r"\(N, 1, L\)"):
        GroundTruth(x.reshape(len(x), -1), y)
    with pytest.raises(AttackInputError, match="labels"):
        GroundTruth(x, y[:5])
    with pytest.raises(AttackInputError, match="aux y has 3 rows"):
        AuxData(x=x[:4], y=y[:3], source="test")
    with pytest.raises(AttackInputError, match="client_state"):  # white box without weights
        build_attack("whitebox")(transcript, Knowledge(depth=2), truth)
    with pytest.raises(AttackInputError, match="'aux'"):
        build_attack("decoder")(transcript, Knowledge(depth=2), truth)
    # one number per sample is no cut (a dense cut (N, D) is one: tests/test_shaped_attacks.py)
    bad = _transcript(activations=(torch.arange(5), torch.zeros(5)))
    with pytest.raises(AttackInputError, match=r"\(N, C, L\)"):
        build_attack("dcor")(bad, Knowledge(), truth)
    with pytest.raises(ValueError, match="dcor_per_channel"):
        dcor_per_channel(torch.zeros(3, 32), torch.zeros(3, 16, 16))
    u_transcript, knowledge, _ = ushape_run
    with pytest.raises(AttackInputError, match="not in the transcript"):
        aux = AuxData(x=x[:2], y=y[:2], ids=torch.tensor([10_000, 10_001]), source="test")
        build_attack("label-direction")(u_transcript, Knowledge(aux=aux), truth)


# ---- the command-line entry point ----------------------------------------------------------------


@pytest.fixture(scope="module")
def ushape_run_dir(pool_dirs, tmp_path_factory):
    mitdb, cache = pool_dirs
    out = tmp_path_factory.mktemp("runs") / "ushape"
    config = TrainConfig(
        protocol="paper-unique", epochs=1, topology="ushape", train_subset=400, test_subset=300,
        record_epochs="all", device="cpu", mitdb_dir=str(mitdb), cache_dir=str(cache),
    )
    with torch_threads(1):
        run_training(config, out, progress=False)
    return out


def test_cli_runs_attacks_on_a_saved_run(ushape_run_dir, capsys):
    out = run_attack_cli("label-direction", str(ushape_run_dir), "train:0.1", {})
    assert (ushape_run_dir / "attacks" / "label-direction.json").exists()
    assert out["headline"]["topology"] == "ushape" and out["headline"]["n"] == 360
    assert out["headline"]["accuracy"] > out["headline"]["chance_accuracy"]
    assert "label-direction" in capsys.readouterr().out
    back = AttackResult.load(out["json"])
    assert back.summary["run"]["topology"] == "ushape"
    assert back.knowledge["aux"]["n"] == 40

    out = run_attack_cli("dcor", str(ushape_run_dir), None,
                         {"phase": "test", "batch_size": "100", "n_batches": "3"}, echo=False)
    assert out["headline"]["n_beats"] == 300
    out = run_attack_cli("whitebox", str(ushape_run_dir), None,
                         {"steps": "20", "max_victims": "20", "reference_epochs": "1"}, echo=False)
    assert "accuracy_on_reconstructions" in out["headline"]
    assert list((ushape_run_dir / "attacks").glob("reference-classifier-test-e1-s0.pt"))
    # other patients: unused pool beats of two records, activations by querying the client
    out = run_attack_cli("decoder", str(ushape_run_dir), "records:100,101",
                         {"epochs": "1", "max_victims": "20", "reference_epochs": "0"}, echo=False)
    back = AttackResult.load(out["json"])
    assert back.knowledge["aux"]["source"].startswith("records:100,101")
    assert not back.knowledge["aux"]["paired_by_id"] and back.knowledge["aux"]["n"] > 100
    run = load_run(ushape_run_dir)
    assert not np.isin(run.records["train"][back.scores["ids"]], [100, 101]).any()
    # public beats of any record the run used nowhere: held unpaired (no release, no query), no
    # victim excluded (none of them is a victim's beat)
    public = parse_aux("public:0.2", run, phase="train", seed=0)
    assert public is not None and public.activations is None and public.ids is None
    assert len(public.x) == round(0.2 * len(run.y["train"])) and not public.paired
    assert public.source.startswith("public:0.2 (") and "unpaired" in public.source
    with pytest.raises(ValueError, match="aux"):
        run_attack_cli("decoder", str(ushape_run_dir), "train:2.5x", {}, echo=False)
    with pytest.raises(FileNotFoundError):
        run_attack_cli("dcor", str(ushape_run_dir / "missing"), None, {}, echo=False)


def test_every_attack_declares_what_a_study_runs_it_with():
    """A study has no per-attack code: each class turns the study's budget into options its own
    Config accepts, says whether it takes the aux set, and names its columns (NaN unrun)."""
    from attacks.base import AttackBudget

    budget = AttackBudget(dcor_victims=100, dtw_victims=50, decoder_victims=20)
    columns: dict[str, str] = {}
    for name, cls in sorted(load_builtin().items()):
        options = cls.study_options(budget)
        setup = {k: options.pop(k) for k in ("source", "reference_epochs") if k in options}
        # the leakage measures read the recomputed activations, the inversions and matchers
        # what the server kept (the transcript's release log: every release of a beat)
        assert set(setup.values()) <= {"weights", "auto", budget.reference_epochs}, name
        build_attack(name, {**options, "seed": 1, "threads": 1})
        # the study's aux set goes to the attacks that use one, unless they bring their own
        # (identity enrols its patients: ``default_aux``)
        own = getattr(cls, "default_aux", None) is not None
        assert cls.needs_aux() == ("aux" in cls.uses and not own)
        unrun = cls.columns(None)
        assert all(math.isnan(v) for v in unrun.values()), name
        for col in unrun:
            columns.setdefault(col, name)
    assert {"dcor_max", "dtw_min", "inversion_pearson_r", "label_attack_accuracy"} <= set(columns)


# ---- priors, linkage, tuned and strongest inversions (issue 12) ---------------------------------


def test_ridge_recovers_the_input_of_a_linear_client(linear_client):
    # acts = W * x + b is linear and injective (4 channels of a width-5 convolution), so the best
    # linear map from acts back to beats is exact up to what 200 aux beats span; ECG beats are
    # low-rank, so unseen victims come back almost exactly and pick out their own beat
    transcript, knowledge, truth = linear_client
    r = build_attack("ridge", {"max_victims": "100"})(transcript, knowledge, truth)
    m, link = r.summary["metrics"], r.summary["linkage"]
    assert m["pearson"]["q1"] > 0.99 and m["prdn"]["median"] < 10
    assert link["k10"]["accuracy"] > 0.95 and link["k100"]["advantage"] > 0.9
    assert r.summary["tuning"]["chosen"]["lambda"] in [g["lambda"] for g in
                                                       r.summary["tuning"]["grid"]]
    assert not r.knowledge["client_weights"]


def test_every_inversion_reports_priors_with_chance_linkage(linear_client):
    # the priors give every victim of a class the same beat: by exchangeability its own beat is
    # the nearest of itself and k random same-class beats with probability 1 / (k + 1)
    transcript, knowledge, truth = linear_client
    y = truth.y
    with_labels = _transcript(activations=transcript.get("activations"),
                              labels=(torch.arange(len(y)), y))  # vanilla: labels in the clear
    r = build_attack("ridge", {"max_victims": "300"})(with_labels, knowledge, truth)
    s = r.summary
    assert s["baseline_mean_beat"]["pearson"] == s["baselines"]["mean_beat"]["metrics"]["pearson"]
    assert "clear" in s["baselines"]["class_mean"]["source"]
    for prior in ("mean_beat", "class_mean"):
        for key in ("linkage", "linkage_znorm"):
            for k in ("k10", "k100"):
                link = s["baselines"][prior][key][k]
                assert set(link) >= {"accuracy", "ci_low", "ci_high", "chance", "advantage"}
                sd = math.sqrt(link["chance"] * (1 - link["chance"]) / link["n"])
                assert abs(link["accuracy"] - link["chance"]) < 4 * sd, (prior, key, k)
    cols = ATTACKS["ridge"].columns(s)
    assert cols["linkage_k10_advantage"] > 0.9 and abs(cols["prior_class_mean_linkage_k10"]
                                                         - s["linkage"]["k10"]["chance"]) < 0.1
    # without labels crossing (U-shape) the class comes from the server's own prediction
    r = build_attack("ridge", {"max_victims": "50"})(transcript, knowledge, truth)
    assert "predicted" in r.summary["baselines"]["class_mean"]["source"]


def test_tuned_decoder_is_not_worse_than_the_mean_beat_on_heavy_noise(linear_client):
    # activations drowned in noise (sd 30 against signal sd ~0.3) carry almost nothing: the
    # residual decoder starts at the mean beat (epoch 0) and early stopping keeps the best
    # held-out epoch, so its held-out MSE cannot exceed the mean beat's
    transcript, knowledge, truth = linear_client
    ids, acts = transcript.get("activations")
    noisy = acts + 30 * torch.randn(acts.shape, generator=torch.Generator().manual_seed(0))
    r = build_attack("decoder", {"epochs": "5", "max_victims": "100"})(
        _transcript(activations=(ids, noisy)), knowledge, truth)
    t = r.summary["tuning"]
    assert t["heldout_mse"] <= t["heldout_mse_mean_beat"] + 1e-9
    assert len(t["grid"]) == 2 and "weight decay" in r.notes[0]
    m, base = r.summary["metrics"], r.summary["baselines"]["mean_beat"]["metrics"]
    assert m["mse"]["median"] < 1.5 * base["mse"]["median"]  # near the prior on the victims too


def test_unbiased_dcor_is_zero_for_independent_and_one_for_identical_data(beats):
    from splitpriv.dcor import u_dcor_sqr_per_channel

    x, _ = beats
    flat = x[:400].reshape(400, -1).double()
    noise = torch.randn(400, 64, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    a = pairwise_euclidean(flat)
    # identical samples: U-centred matrices equal, so cov / sqrt(var var) = 1 exactly
    assert u_dcor_sqr_from_distances(a, a) == pytest.approx(1.0)
    # independent: the estimator is unbiased for 0 (its sd at n = 400 is about 1 / n)
    assert abs(u_dcor_sqr_from_distances(a, pairwise_euclidean(noise))) < 0.01
    pooled = paper_pool(x[:200], 32)
    same = u_dcor_sqr_per_channel(pooled, pooled[:, None, :].repeat(1, 3, 1))
    torch.testing.assert_close(same, torch.ones(200, 3, dtype=torch.float64))
    indep = u_dcor_sqr_per_channel(pooled, torch.randn(200, 2, 32, dtype=torch.float64))
    assert abs(float(indep.mean())) < 0.02  # V-statistic dCor of these pairs is about .45
    assert float(dcor_per_channel(pooled, torch.randn(200, 2, 32)).mean()) > 0.3


def test_strongest_picks_the_better_attack_on_held_out_aux_and_never_looks_at_victims(
        linear_client):
    transcript, knowledge, truth = linear_client
    opts = {"candidates": "ridge,decoder", "decoder_epochs": "1", "max_victims": "80"}
    r = build_attack("strongest", opts)(transcript, knowledge, truth)
    s = r.summary
    held = {n: c["heldout"] for n, c in s["selection"]["candidates"].items()}
    # ridge inverts a linear client almost exactly; a one-epoch decoder does not
    assert s["winner"] == "ridge" and held["ridge"]["mse"] < held["decoder"]["mse"]
    assert held["ridge"]["linkage_k10"]["advantage"] >= held["decoder"]["linkage_k10"][
        "advantage"]
    # the winner refitted on every aux beat reconstructs the victims: ridge as it runs alone
    # (tuned on the held-out part, refitted on all); its fit-part model is listed beside it
    alone = build_attack("ridge", {"max_victims": "80"})(transcript, knowledge, truth)
    np.testing.assert_array_equal(r.scores["reconstructions"], alone.scores["reconstructions"])
    assert s["linkage"] == alone.summary["linkage"]
    listed = s["selection"]["candidates"]["ridge"]["victims"]["linkage_k10"]
    assert listed["advantage"] <= s["linkage"]["k10"]["advantage"] + 0.05
    assert ATTACKS["strongest"].columns(s)["strongest_attack"] == "ridge"
    # the victims' true beats replaced by noise: the choice and the reconstructions are the same
    x = truth.x.clone()
    victims = ~torch.isin(torch.arange(len(x)), knowledge.aux.ids)
    x[victims] = torch.rand(x[victims].shape, generator=torch.Generator().manual_seed(1))
    blind = build_attack("strongest", opts)(transcript, knowledge, GroundTruth(x, truth.y))
    assert blind.summary["winner"] == s["winner"]
    np.testing.assert_array_equal(blind.scores["reconstructions"], r.scores["reconstructions"])
    assert blind.summary["selection"]["candidates"]["ridge"]["heldout"] == held["ridge"]


def test_strongest_falls_back_to_a_prior_when_nothing_links_on_held_out_beats(linear_client):
    # activations replaced by pure noise carry nothing about the beats: no candidate's held-out
    # linkage beats chance, so the lowest held-out MSE wins, and with the labels in the clear
    # the class-mean prior has it (ridge and the decoder can only add noise to a mean)
    transcript, knowledge, truth = linear_client
    ids, acts = transcript.get("activations")
    noise = torch.randn(acts.shape, generator=torch.Generator().manual_seed(0))
    y = truth.y
    blind = _transcript(activations=(ids, noise), labels=(torch.arange(len(y)), y))
    opts = {"candidates": "ridge,decoder", "decoder_epochs": "2", "max_victims": "200"}
    s = build_attack("strongest", opts)(blind, knowledge, truth).summary
    assert s["winner"] in ("class-mean", "mean-beat")
    held = {n: c["heldout"]["mse"] for n, c in s["selection"]["candidates"].items()
            if c["kind"] == "inversion"}  # the matchers reconstruct nothing
    assert held[s["winner"]] == min(held.values())
    # the reported inversion is the prior's reconstruction: never worse than the prior itself
    prior = s["baselines"]["class_mean"]["metrics"]["pearson"]["median"]
    if s["winner"] == "class-mean":
        assert s["metrics"]["pearson"]["median"] == pytest.approx(prior)
    assert abs(s["linkage"]["k10"]["advantage"]) < 0.1
    assert abs(s["reidentification"]["headline"]["k10_advantage"]) < 0.1


def test_cli_strongest_writes_its_result(ushape_run_dir):
    out = run_attack_cli("strongest", str(ushape_run_dir), "train:0.2",
                         {"decoder_epochs": "1", "max_victims": "30", "reference_epochs": "0"},
                         echo=False)
    assert out["json"] == str(ushape_run_dir / "attacks" / "strongest.json")
    doc = json.loads((ushape_run_dir / "attacks" / "strongest.json").read_text())
    s = doc["summary"]
    assert s["winner"] in ("ridge", "decoder") and out["headline"]["winner"] == s["winner"]
    for k in ("k10", "k100"):
        assert {"accuracy", "ci_low", "ci_high", "chance", "advantage"} <= set(s["linkage"][k])
    assert set(s["baselines"]) == {"mean_beat", "class_mean"}
    assert "predicted" in s["baselines"]["class_mean"]["source"]  # U-shape: no labels cross


# ---- the same attacks for less time (issue 16): shared and batched paths -------------------------


def test_decoders_trained_together_equal_decoders_trained_one_after_another(linear_client):
    # the grid's decoders start from the same weights and see the same minibatches: trained as
    # one stacked network (grouped convolutions, one AdamW group each, each member early-stopped
    # on its own) they are the sequential ones up to float rounding; patience 2 of 6 epochs lets
    # members stop at different epochs (narrow decoders: the test is about the bookkeeping)
    from attacks.decoder import DecoderConfig, decode, train_decoder, train_decoders
    from attacks.inversion import split_aux

    _, knowledge, _ = linear_client
    aux = knowledge.aux
    a = linear_client[0].get("activations")[1][aux.ids].float()
    fit, held = split_aux(len(a), 0.2, 0)
    cfg = DecoderConfig(epochs=6, patience=2, lrs="0.001,0.05", weight_decays="0,0.01",
                        width=16)
    parts = (a[fit], aux.x[fit], a[held], aux.x[held])
    together = train_decoders(*parts, cfg, cfg.grid())
    for (lr, wd), (net, mse, epoch) in zip(cfg.grid(), together, strict=True):
        torch.manual_seed(cfg.seed)
        ref_net, ref_mse, ref_epoch = train_decoder(*parts, cfg, lr, wd)
        assert epoch == ref_epoch, (lr, wd)
        assert mse == pytest.approx(ref_mse, rel=1e-4, abs=1e-7), (lr, wd)
        torch.testing.assert_close(decode(net, a), decode(ref_net, a), rtol=1e-4, atol=1e-5)
    epochs = {e for _, _, e in together}
    assert len(epochs) > 1  # members stopped at different epochs: each kept its own best
    # the attack: the same chosen grid point and reconstructions either way
    transcript, knowledge, truth = linear_client
    opts = {"epochs": "2", "max_victims": "60", "width": "16"}
    off = build_attack("decoder", {**opts, "stack_grid": "off"})(transcript, knowledge, truth)
    on = build_attack("decoder", {**opts, "stack_grid": "on"})(transcript, knowledge, truth)
    assert on.summary["tuning"]["grid_trained"] == "together"
    assert off.summary["tuning"]["grid_trained"] == "one after another"
    assert on.summary["tuning"]["chosen"] == off.summary["tuning"]["chosen"]
    np.testing.assert_allclose(on.scores["reconstructions"], off.scores["reconstructions"],
                               rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="stack_grid"):
        build_attack("decoder", {"stack_grid": "sometimes"})


def test_shared_scoring_equals_scoring_every_reconstruction_afresh(linear_client, monkeypatch):
    # strongest scores every candidate, the winner again and the priors on the same victims: one
    # linkage scorer (candidates drawn once) and no reconstruction scored twice give the summary
    # that scoring each afresh gives, number for number
    from attacks.inversion import InversionAttack, score_reconstructions

    transcript, knowledge, truth = linear_client
    y = truth.y
    vanilla = _transcript(activations=transcript.get("activations"),
                          labels=(torch.arange(len(y)), y))
    opts = {"candidates": "ridge,decoder", "decoder_epochs": "2", "max_victims": "120"}
    for t in (transcript, vanilla):  # classes predicted (U-shape), labels in the clear
        shared = build_attack("strongest", opts)(t, knowledge, truth)
        with monkeypatch.context() as m:
            m.setattr(InversionAttack, "score", lambda self, x_hat, obs, truth:
                      score_reconstructions(x_hat, obs, truth, self.config.seed))
            fresh = build_attack("strongest", opts)(t, knowledge, truth)
        assert shared.summary == fresh.summary
        for k, v in fresh.scores.items():
            np.testing.assert_array_equal(shared.scores[k], v)


def test_attacks_of_one_run_share_its_data_and_activations(ushape_run_dir):
    # the second attack of a run reuses the loaded run, the client's activations and the aux set
    # (attacks.runs.SHARED); the results are those of an attack that computed them itself, and a
    # rewritten weights file is a new run
    import os

    from attacks.cli import run_attack
    from attacks.runs import SHARED

    opts = {"decoder_epochs": "1", "max_victims": "30", "reference_epochs": "0",
            "source": "weights"}
    SHARED.clear()
    first, _ = run_attack("strongest", ushape_run_dir, "train:0.2", dict(opts))
    assert SHARED.hits == 0 and SHARED.run is not None
    again, _ = run_attack("strongest", ushape_run_dir, "train:0.2", dict(opts))
    assert SHARED.hits == 3  # run, activations and aux set reused
    SHARED.clear()
    fresh, _ = run_attack("strongest", ushape_run_dir, "train:0.2", dict(opts))
    for r in (again, fresh):
        assert {k: v for k, v in r.summary.items() if k != "run"} == {
            k: v for k, v in first.summary.items() if k != "run"}
        for k, v in first.scores.items():
            np.testing.assert_array_equal(r.scores[k], v)
    weights = ushape_run_dir / "weights.pt"
    st = weights.stat()
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))
    kept = SHARED.run
    run_attack("dcor", ushape_run_dir, None, {"max_victims": "50", "batch_size": "20",
                                               "n_batches": "2", "source": "weights"})
    assert SHARED.run is not kept and SHARED.hits == 0
    SHARED.clear()


def test_attacks_honour_their_device(linear_client):
    # every inversion trains on config.device and hands back host tensors; an unknown device is
    # refused when built, a CUDA device this host lacks when run; with CUDA here, the decoder,
    # ridge and the white-box attack agree with their CPU runs
    transcript, knowledge, truth = linear_client
    with pytest.raises(ValueError, match="unknown device"):
        build_attack("decoder", {"device": "tpu"})
    assert build_attack("ridge", {"device": "auto"}).device.type in ("cpu", "cuda")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA"):
            build_attack("ridge", {"device": "cuda"})(transcript, knowledge, truth)
        return
    for name, opts in (("ridge", {}), ("decoder", {"epochs": "2"}),
                       ("whitebox", {"steps": "20"}), ("unsplit", {"rounds": "2"}),
                       ("strongest", {"decoder_epochs": "2"})):
        base = {**opts, "max_victims": "40"}
        cpu = build_attack(name, base)(transcript, knowledge, truth)
        gpu = build_attack(name, {**base, "device": "cuda"})(transcript, knowledge, truth)
        assert gpu.config["device"] == "cuda"
        np.testing.assert_allclose(gpu.scores["reconstructions"], cpu.scores["reconstructions"],
                                   rtol=1e-3, atol=1e-3, err_msg=name)
