"""Defenses at the cut, on real MIT-BIH beats: activation DP (paper and formal modes, with
accounting), U-shaped label hiding, NoPeek and client DP-SGD."""

from __future__ import annotations

import copy
import math
import warnings

import dcor
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from opacus.accountants import PRVAccountant, RDPAccountant
from scipy import stats

from defenses import DEFENSES, build_defense
from defenses.accounting import ALPHAS, laplace_guarantee
from defenses.dp import MECHANISMS, FormalDP, PaperDP, clip_rows
from splitpriv.channel import InProcessChannel, Kind, RecordPolicy, Transcript
from splitpriv.cli import main as cli_main
from splitpriv.dcor import distance_correlation
from splitpriv.defense import Defense, PrivacyClaim
from splitpriv.models import ModelConfig, build_models
from splitpriv.run import TrainConfig, run_training
from splitpriv.trainer import SplitTrainer

# Opacus's hooks on the first conv layer warn that the beats do not require a gradient; harmless.
pytestmark = pytest.mark.filterwarnings("ignore:Full backward hook:UserWarning")


@pytest.fixture(scope="module")
def beats(take_beats):
    """400 training and 300 test beats of the paper-unique protocol, as tensors."""
    return take_beats(400, 300)


def _train(beats, specs, *, epochs=1, seed=3, transcript=None):
    x, y, _, _ = beats
    models = build_models(ModelConfig(), seed=seed)
    channel = InProcessChannel(transcript) if transcript is not None else None
    trainer = SplitTrainer(models, x, y, seed=seed, channel=channel,
                           defenses=[build_defense(s) for s in specs])
    for epoch in range(1, epochs + 1):
        trainer.train_epoch(epoch)
    return trainer


def _weights(trainer):
    return {f"{part}.{k}": v.clone() for part, m in trainer.models.modules().items()
            for k, v in m.state_dict().items()}


# -- activation DP ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def plain_weights(beats):
    return _weights(_train(beats, []))


@pytest.mark.parametrize("spec", [
    "dp:mode=paper,epsilon=1e300",  # noise scale range / 1e300 underflows to exactly 0
    "dp:mode=formal,mechanism=gaussian,noise_multiplier=0,clip=1e9",
    "dp:mode=formal,mechanism=laplace,noise_multiplier=0,clip=1e9",
])
def test_zero_noise_equals_no_defense_exactly(beats, plain_weights, spec):
    defended = _weights(_train(beats, [spec]))
    assert all(torch.equal(plain_weights[k], defended[k]) for k in plain_weights)


def test_noise_changes_training(beats, plain_weights):
    # the exact-equality test above is not vacuous: the same with noise differs
    noisy = _weights(_train(beats, ["dp:mode=paper,epsilon=3"]))
    assert any(not torch.equal(plain_weights[k], v) for k, v in noisy.items())


def _noise_of(spec, a, *, training=True):
    d = build_defense(spec)
    d._seed = 0
    with torch.no_grad():
        return d.transform_activations(a, training=training) - a, d


@pytest.mark.parametrize("mechanism", ["laplace", "gaussian"])
def test_formal_noise_scale_matches_formula(mechanism):
    a = torch.zeros(200, 16, 32, dtype=torch.float64)  # 102,400 draws; clipping leaves 0 alone
    noise, d = _noise_of(f"dp:mode=formal,mechanism={mechanism},noise_multiplier=1.5,clip=0.4", a)
    # replace adjacency: sensitivity 2C = 0.8; scale = 1.5 * 0.8 = 1.2 (Laplace b or Gaussian std)
    assert d.noise_scale == pytest.approx(1.2)
    if mechanism == "laplace":
        estimate = noise.abs().mean().item()  # E|Laplace(b)| = b
        assert noise.std().item() == pytest.approx(math.sqrt(2) * 1.2, rel=0.05)
    else:
        estimate = noise.std().item()
    assert estimate == pytest.approx(1.2, rel=0.05)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_laplace_unit_noise_is_laplace(dtype):
    like = torch.zeros((), dtype=dtype)
    x = MECHANISMS["laplace"].unit_noise((200_000,), torch.Generator().manual_seed(3), like)
    assert x.dtype == dtype and bool(x.isfinite().all())
    assert stats.kstest(x.double().numpy(), stats.laplace.cdf).pvalue > 1e-3
    assert abs((x > 0).double().mean().item() - 0.5) < 0.01  # symmetric
    # the extreme uniform draw u = 0 maps to a finite value, not -inf
    g = torch.Generator().manual_seed(0)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch, "rand", lambda *a, **k: torch.zeros(4, dtype=dtype))
        edge = MECHANISMS["laplace"].unit_noise((4,), g, like)
    assert bool(edge.isfinite().all()) and edge.min().item() < -15


def test_paper_noise_scale_is_batch_range_over_epsilon():
    g = torch.Generator().manual_seed(0)
    lo = torch.rand(16, 32, generator=g, dtype=torch.float64)
    width = 0.5 + torch.rand(16, 32, generator=g, dtype=torch.float64)  # per-coordinate range
    a = lo + width * torch.rand(200, 16, 32, generator=g, dtype=torch.float64)
    a[0], a[1] = lo, lo + width  # the batch's min and max per coordinate
    noise, _ = _noise_of("dp:mode=paper,epsilon=4", a)
    ratio = noise.abs() / (width / 4)  # |Laplace(b)| / b has mean 1
    assert ratio.mean().item() == pytest.approx(1.0, rel=0.05)
    # a constant coordinate gets the 1e-5 floor, not zero noise
    flat, _ = _noise_of("dp:mode=paper,epsilon=1", torch.ones(200, 16, 32, dtype=torch.float64))
    assert flat.abs().mean().item() == pytest.approx(1e-5, rel=0.05)


def test_paper_test_noise_uses_groups_of_32():
    a = torch.zeros(64, 16, 32, dtype=torch.float64)
    a[32:] = torch.linspace(0, 100, 32, dtype=torch.float64)[:, None, None]  # wide second group
    noise, _ = _noise_of("dp:mode=paper,epsilon=1", a, training=False)
    assert noise[:32].abs().max() < 1e-3 < 1.0 < noise[32:].abs().mean()
    off, _ = _noise_of("dp:mode=formal,noise_multiplier=1,test_noise=false", a, training=False)
    assert off.abs().max() > 0  # clipping still applies at test time...
    assert torch.equal(clip_rows(a, 1.0, 1) - a, off)  # ...but no noise


def test_noise_is_fresh_each_epoch_and_survives_a_resume():
    a = torch.zeros(4, 16, 32)

    def noise_at(d, epoch):
        d.begin_phase(epoch, "train")
        return d.transform_activations(a, training=True) - a

    spec = "dp:mode=formal,mechanism=gaussian,noise_multiplier=1,seed=7"
    straight = build_defense(spec)
    n1, n2 = noise_at(straight, 1), noise_at(straight, 2)
    assert not torch.equal(n1, n2)  # a replayed stream would give away differences of releases
    resumed = build_defense(spec)  # a new process starting at epoch 2
    assert torch.equal(noise_at(resumed, 2), n2)


@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 16), channels=st.integers(1, 8), length=st.integers(1, 40),
    bound=st.floats(1e-3, 1e3), scale=st.floats(1e-3, 1e3), norm_ord=st.sampled_from([1, 2]),
)
def test_clip_rows_bounds_every_row(batch, channels, length, bound, scale, norm_ord):
    a = scale * torch.randn(batch, channels, length, dtype=torch.float64)
    out = clip_rows(a, bound, norm_ord)
    norms = torch.linalg.vector_norm(out.flatten(1), ord=norm_ord, dim=1)
    assert (norms <= bound * (1 + 1e-9)).all()
    inside = torch.linalg.vector_norm(a.flatten(1), ord=norm_ord, dim=1) <= bound
    assert torch.equal(out[inside], a[inside])  # rows within the bound pass unchanged


@pytest.mark.parametrize("mechanism,norm_ord", [("laplace", 1), ("gaussian", 2)])
def test_clipping_bound_holds_for_every_real_beat(beats, mechanism, norm_ord):
    x, y, _, _ = beats
    clip = 2.0
    transcript = Transcript(policy=RecordPolicy(kinds=frozenset({Kind.ACTIVATIONS})))
    _train(beats, [f"dp:mode=formal,mechanism={mechanism},noise_multiplier=0,clip={clip}"],
           transcript=transcript)
    ids, sent = transcript.get(Kind.ACTIVATIONS, epoch=1)
    assert sorted(ids.tolist()) == list(range(len(y)))
    norms = torch.linalg.vector_norm(sent.flatten(1).double(), ord=norm_ord, dim=1)
    assert (norms <= clip * (1 + 1e-6)).all()
    assert (norms > 0.99 * clip).float().mean() > 0.5  # the bound is active, not vacuous


@pytest.mark.parametrize("accountant,cls", [("rdp", RDPAccountant), ("prv", PRVAccountant)])
def test_gaussian_accounting_equals_opacus(accountant, cls):
    spec = f"dp:mode=formal,mechanism=gaussian,noise_multiplier=3.0,accountant={accountant}"
    d = build_defense(spec)
    ours = d.guarantee(20)
    reference = cls()
    for _ in range(20):  # one release of every beat per epoch: sample_rate 1
        reference.step(noise_multiplier=3.0, sample_rate=1.0)
    assert reference.history == [(3.0, 1.0, 20)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kwargs = {"alphas": ALPHAS} if accountant == "rdp" else {}
        expected = reference.get_epsilon(delta=1e-5, **kwargs)
    assert ours.epsilon == pytest.approx(expected, rel=1e-9)
    assert ours.delta == 1e-5


@pytest.mark.parametrize("mechanism", ["gaussian", "laplace"])
def test_target_epsilon_calibrates_the_noise(mechanism):
    d = build_defense(f"dp:mode=formal,mechanism={mechanism},target_epsilon=4,epochs=30")
    assert d.guarantee(30).epsilon <= 4.0
    assert d.guarantee(30).epsilon == pytest.approx(4.0, abs=0.05)
    assert d.guarantee(31).epsilon > 4.0  # one more epoch overspends


def test_laplace_accounting_worked_examples():
    # one release, noise multiplier 2: basic composition gives 1/2 at delta 0; the RDP route
    # (RDP = min(0.5, alpha / 8)) can shave only a hair off it by spending delta
    g = laplace_guarantee(noise_multiplier=2.0, releases=1, delta=1e-5)
    assert g.epsilon == pytest.approx(0.5, abs=1e-4) and g.epsilon <= 0.5
    # 400 releases at 1/lambda = 0.05: basic 20; zCDP rho = 400 * 0.05**2 / 2 = 0.5, and
    # rho + 2 sqrt(rho log(1/delta)) = 0.5 + 2 sqrt(0.5 * 11.51) = 5.30 bounds the RDP conversion
    g = laplace_guarantee(noise_multiplier=20.0, releases=400, delta=1e-5)
    assert g.delta == 1e-5 and 4.0 < g.epsilon < 5.31


def test_paper_mode_run_reports_no_guarantee_and_sends_noisy_activations(pool_dirs, tmp_path):
    mitdb, cache = pool_dirs
    config = TrainConfig(
        protocol="paper-unique", epochs=1, train_subset=300, test_subset=200, val_fraction=0.0,
        defenses=["dp:mode=paper,epsilon=3"], device="cpu", record_kinds="activations",
        mitdb_dir=str(mitdb), cache_dir=str(cache),
    )
    result = run_training(config, tmp_path / "run", progress=False)
    (report,) = result["defenses"]
    assert report["name"] == "dp" and report["formal_guarantee"] is False
    transcript = Transcript.load(tmp_path / "run" / "transcript.npz")
    _, sent = transcript.get(Kind.ACTIVATIONS, phase="test")
    assert sent.shape == (200, 16, 32)
    weights = torch.load(tmp_path / "run" / "weights.pt", weights_only=True)
    models = build_models(ModelConfig(), seed=0)
    models.client.load_state_dict(weights["client"])
    from splitpriv.run import load_tensors
    data, _ = load_tensors(config, torch.device("cpu"))
    with torch.no_grad():
        clean = models.client(data.x_test)
    assert (sent - clean).abs().mean() > 0.01  # the server saw noisy test activations


def test_formal_mode_run_accounts_train_and_test_separately(pool_dirs, tmp_path):
    mitdb, cache = pool_dirs
    config = TrainConfig(
        protocol="paper-unique", epochs=2, train_subset=300, test_subset=200, val_fraction=0.0,
        defenses=["dp:mode=formal,mechanism=gaussian,target_epsilon=2,epochs=2,clip=1"],
        device="cpu", record_epochs="none", mitdb_dir=str(mitdb), cache_dir=str(cache),
    )
    (report,) = run_training(config, tmp_path / "run", progress=False)["defenses"]
    assert report["formal_guarantee"] is True
    assert report["train"]["releases_per_beat"] == 2
    assert report["train"]["epsilon"] == pytest.approx(2.0, abs=0.02)
    assert report["test"]["test"]["releases_per_beat"] == 2
    assert report["test"]["test"]["epsilon"] == pytest.approx(report["train"]["epsilon"])
    assert report["planned"] == {"target_epsilon": 2.0, "epochs": 2, "exceeded": False}


# -- bad parameters ----------------------------------------------------------------------------


@pytest.mark.parametrize("spec,match", [
    ("dp:epsilon=0", "epsilon > 0"),
    ("dp:epsilon=-1", "epsilon > 0"),
    ("dp:mode=paper", "epsilon > 0"),
    ("dp:mode=formal,noise_multiplier=1,clip=-1", "clip"),
    ("dp:mode=formal,target_epsilon=0,epochs=5", "target_epsilon"),
    ("dp:mode=formal,epsilon=1", r"does not take \['epsilon'\]"),
    ("dp:mode=paper,epsilon=1,clip=2", r"does not take \['clip'\]"),
    ("dp:mode=weird,epsilon=1", "mode"),
    ("dp:mode=paper,epsilon=1,mechanism=gaussian", "Laplace"),
    ("dp:mode=formal,noise_multiplier=1,delta=0", "delta"),
    ("dp:epsilon=abc", "cannot read"),
    ("dp:epsilon=1,colour=red", "unknown parameter"),
    ("dpsgd:noise_multiplier=-1", "noise_multiplier"),
    ("dpsgd:noise_multiplier=1,max_grad_norm=-1", "max_grad_norm"),
    ("dpsgd:max_grad_norm=1", "exactly one"),
    ("nopeek:alpha=-1", "alpha"),
    ("nosuchdefense", "unknown defense"),
])
def test_bad_parameters_fail_before_training(spec, match):
    with pytest.raises(ValueError, match=match):
        build_defense(spec)


def test_bad_defense_fails_before_the_run_directory_is_written(pool_dirs, tmp_path, capsys):
    mitdb, cache = pool_dirs
    rc = cli_main(["train", "--defense", "dp:epsilon=0", "--out", str(tmp_path / "bad"),
                   "--mitdb-dir", str(mitdb), "--cache-dir", str(cache), "--no-progress"])
    assert rc == 2 and "epsilon" in capsys.readouterr().err
    assert not (tmp_path / "bad" / "config.json").exists()


def test_registry_lists_the_defenses():
    build_defense("ushape")
    assert {"dp", "ushape", "nopeek", "dpsgd"} <= set(DEFENSES)


# -- U-shaped label hiding -------------------------------------------------------------------


def test_ushape_hides_labels_and_trains_the_vanilla_network(pool_dirs, tmp_path):
    """The U-shape moves the head and the labels to the client and nothing else: the same seed
    trains the same network with the same updates as the vanilla topology, bit for bit (the
    server's last dense layer is the client's head), so its accuracy and its activations'
    leakage are the undefended run's; what the server receives differs."""
    mitdb, cache = pool_dirs
    common = dict(protocol="paper-unique", epochs=1, train_subset=600, test_subset=300,
                  val_fraction=0.0, device="cpu", record_epochs="all",
                  mitdb_dir=str(mitdb), cache_dir=str(cache))
    vanilla = run_training(TrainConfig(**common), tmp_path / "v", progress=False)
    ushape = run_training(TrainConfig(**common, defenses=["ushape"]), tmp_path / "u",
                          progress=False)
    assert ushape["topology"] == "ushape" and vanilla["topology"] == "vanilla"
    assert ushape["test_accuracy"] == vanilla["test_accuracy"]
    v_weights, u_weights = (torch.load(tmp_path / d / "weights.pt", weights_only=True)
                            for d in ("v", "u"))
    assert all(torch.equal(w, u_weights["client"][k]) for k, w in v_weights["client"].items())
    dense = list(v_weights["server"].values())  # Linear(512, 128), then the last Linear
    assert all(torch.equal(a, b) for a, b in zip(
        dense, [*u_weights["server"].values(), *u_weights["head"].values()], strict=True))
    assert ushape["defenses"][0]["labels_cross"] is False
    v = Transcript.load(tmp_path / "v" / "transcript.npz")
    u = Transcript.load(tmp_path / "u" / "transcript.npz")
    assert "labels" in v.kinds()  # the vanilla transcript does hold them: the check can fail
    assert "labels" not in u.kinds()
    for (kind, _, _), chunks in u.chunks.items():
        for _, tensor in chunks:
            assert tensor.dtype.is_floating_point, kind  # no integer tensor crosses
            assert tensor.shape[1:] != () and tensor.shape[-1] != 5, kind  # nor logits


# -- NoPeek ----------------------------------------------------------------------------------


def test_distance_correlation_matches_dcor():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(50, 6, generator=g, dtype=torch.float64)
    z = torch.randn(50, 4, generator=g, dtype=torch.float64) + x[:, :4] ** 2
    assert distance_correlation(x, z).item() == pytest.approx(
        dcor.distance_correlation(x.numpy(), z.numpy()), rel=1e-9)
    assert distance_correlation(x, 2 * x + 1).item() == pytest.approx(1.0)  # worked by hand
    xg = torch.cat([x, x[:2]]).requires_grad_()  # duplicate rows: distance 0
    distance_correlation(xg, torch.randn(52, 3, dtype=torch.float64)).backward()
    assert torch.isfinite(xg.grad).all()


def test_nopeek_lowers_distance_correlation(beats):
    _, _, xt, _ = beats

    def measured(alpha):
        trainer = _train(beats, [f"nopeek:alpha={alpha}"], epochs=1)
        with torch.no_grad():
            a = trainer.models.client(xt[:200])
        return dcor.distance_correlation(xt[:200].flatten(1).double().numpy(),
                                         a.flatten(1).double().numpy())

    d0, d1, d2 = measured(0.0), measured(0.5), measured(3.0)
    assert d2 < d1 < d0, (d0, d1, d2)
    assert d0 - d2 > 0.05, (d0, d1, d2)


# -- client DP-SGD ---------------------------------------------------------------------------


def test_dpsgd_per_sample_gradients_match_a_reference(beats):
    x, y, _, _ = beats
    x, y = x[:8], y[:8]
    models = build_models(ModelConfig(), seed=5)
    before = copy.deepcopy(models.client)
    transcript = Transcript(policy=RecordPolicy(kinds=frozenset({Kind.ACT_GRAD})))
    defense = build_defense("dpsgd:noise_multiplier=1.0,max_grad_norm=1.0,batch_size=8")
    trainer = SplitTrainer(models, x, y, seed=0, channel=InProcessChannel(transcript),
                           defenses=[defense])
    captured = {}
    original = defense.optimizer.clip_and_accumulate

    def capture():
        captured.update({name: p.grad_sample.clone()
                         for name, p in models.client.named_parameters()})
        original()

    defense.optimizer.clip_and_accumulate = capture
    ids = torch.arange(8)
    trainer.train_step(ids)
    _, g = transcript.get(Kind.ACT_GRAD, epoch=0)  # (8, 16, 32): row i = (1/8) dl_i / da_i
    for i in range(8):  # reference: the client net on beat i alone, backward from 8 * g_i
        net = copy.deepcopy(before)
        net(x[i:i + 1]).backward(8 * g[i:i + 1])
        for name, p in net.named_parameters():
            torch.testing.assert_close(captured[name][i], p.grad, rtol=1e-5, atol=1e-7)
    # and the mean of the per-sample gradients is the batch gradient
    net = copy.deepcopy(before)
    net(x).backward(g)
    for name, p in net.named_parameters():
        torch.testing.assert_close(captured[name].mean(0), p.grad, rtol=1e-4, atol=1e-7)
    # the step moved the weights by a clipped, noisy gradient
    moved = zip(before.parameters(), models.client.parameters(), strict=True)
    assert any(not torch.equal(p, q) for p, q in moved)


def test_dpsgd_epsilon_equals_opacus(beats):
    x, y, _, _ = beats
    x, y = x[:100], y[:100]
    defense = build_defense("dpsgd:noise_multiplier=1.1,max_grad_norm=1.0")
    trainer = SplitTrainer(build_models(ModelConfig(), seed=0), x, y, seed=0, defenses=[defense])
    trainer.train_epoch(1)
    report = defense.report().to_dict()
    assert report["steps"] == math.ceil(100 / 32) and report["sample_rate"] == 32 / 100
    reference = RDPAccountant()
    for _ in range(4):  # one accountant step per optimizer step, as Opacus's engine does
        reference.step(noise_multiplier=1.1, sample_rate=32 / 100)
    assert report["epsilon"] == pytest.approx(reference.get_epsilon(1e-5))  # Opacus's orders
    assert report["privacy_unit"].startswith("one training beat")


def test_dpsgd_target_epsilon_and_composition_with_activation_dp(beats):
    x, y, _, _ = beats
    x, y = x[:100], y[:100]
    dpsgd = build_defense("dpsgd:target_epsilon=3,epochs=2")
    dp = build_defense("dp:mode=formal,mechanism=gaussian,noise_multiplier=2,adjacency=zero_out")
    trainer = SplitTrainer(build_models(ModelConfig(), seed=0), x, y, seed=0,
                           defenses=[dp, dpsgd])
    for epoch in (1, 2):
        trainer.train_epoch(epoch)
    assert dpsgd.report().epsilon == pytest.approx(3.0, abs=0.02)
    r = dp.report().to_dict()
    assert r["train"]["releases_per_beat"] == 2 and r["formal_guarantee"]
    assert r["sensitivity"] == 1.0  # zero-out adjacency: C
    combined = r["combined_with_dpsgd"]
    assert combined["epsilon"] == pytest.approx(r["train"]["epsilon"] + dpsgd.report().epsilon)
    assert combined["delta"] == pytest.approx(2e-5)


def test_dpsgd_refuses_a_batch_coupled_client_loss(beats):
    x, y, _, _ = beats
    with pytest.raises(ValueError, match="per-sample"):
        SplitTrainer(build_models(ModelConfig(), seed=0), x, y,
                     defenses=[build_defense("nopeek:alpha=1"),
                               build_defense("dpsgd:noise_multiplier=1")])


# -- the plug-in contract ---------------------------------------------------------------------


def test_dp_modes_are_two_classes_each_with_its_own_config():
    paper = build_defense("dp:mode=paper,epsilon=3")
    formal = build_defense("dp:mode=formal,noise_multiplier=1")
    assert type(paper) is PaperDP and type(formal) is FormalDP
    assert type(build_defense("dp:epsilon=3")) is PaperDP  # paper is the default mode
    assert paper.name == formal.name == "dp"
    assert not hasattr(paper.config, "clip") and not hasattr(formal.config, "epsilon")
    claim = paper.report()
    assert isinstance(claim, PrivacyClaim) and not claim.formal and claim.epsilon is None
    assert claim.mechanism == "laplace" and claim.to_dict()["epsilon_per_release"] == 3.0


def test_configure_gives_the_runs_epochs_and_batch_size():
    d = build_defense("dp:mode=formal,mechanism=gaussian,target_epsilon=4")
    d.configure(epochs=30, batch_size=32)
    explicit = build_defense("dp:mode=formal,mechanism=gaussian,target_epsilon=4,epochs=30")
    assert d.noise_multiplier == explicit.noise_multiplier
    assert d.guarantee(30).epsilon == pytest.approx(4.0, abs=0.05)
    explicit.configure(epochs=30, batch_size=16)  # agreeing values pass
    with pytest.raises(ValueError, match="epochs=30, but the run uses epochs=20"):
        explicit.configure(epochs=20, batch_size=32)
    g = build_defense("dpsgd:target_epsilon=3")
    g.configure(epochs=2, batch_size=16)
    assert (g.epochs, g.batch_size) == (2, 16)
    with pytest.raises(ValueError, match="batch_size=8, but the run uses batch_size=32"):
        build_defense("dpsgd:noise_multiplier=1,batch_size=8").configure(epochs=1, batch_size=32)
    with pytest.raises(ValueError, match="epochs=3, but the run uses epochs=2"):
        build_defense("dpsgd:target_epsilon=3,epochs=3").configure(epochs=2, batch_size=32)


@pytest.mark.parametrize("spec", ["dp:mode=formal,target_epsilon=1", "dpsgd:target_epsilon=1"])
def test_target_epsilon_without_epochs_needs_the_run(beats, spec):
    x, y, _, _ = beats
    d = build_defense(spec)  # builds: the run's configure supplies the epochs
    with pytest.raises(ValueError, match="needs epochs"):
        SplitTrainer(build_models(ModelConfig(), seed=0), x[:50], y[:50], defenses=[d])


class _PrivateWeights(Defense):
    """A stand-in for any defense that makes the client's weights private."""

    name = "private-weights"
    weights_private = True

    def report(self) -> PrivacyClaim:
        return PrivacyClaim(name=self.name, formal=True, epsilon=1.5, delta=1e-6)


def test_formal_dp_composes_with_any_weights_private_defense(beats):
    x, y, _, _ = beats
    dp = build_defense("dp:mode=formal,mechanism=gaussian,noise_multiplier=2,adjacency=zero_out")
    trainer = SplitTrainer(build_models(ModelConfig(), seed=0), x[:100], y[:100], seed=0,
                           defenses=[dp, _PrivateWeights()])
    trainer.train_epoch(1)
    claim = dp.report()
    r = claim.to_dict()
    assert claim.formal and claim.epsilon == r["train"]["epsilon"] and claim.delta == 1e-5
    combined = r["combined_with_private-weights"]
    assert combined["epsilon"] == pytest.approx(claim.epsilon + 1.5)
    assert combined["delta"] == pytest.approx(1e-5 + 1e-6)


class _Tap(Defense):
    """Records the gradients it is handed; maps labels to (y + 1) mod 5, halves the cut
    gradient."""

    def __init__(self) -> None:
        self.seen: list[tuple[Kind, torch.Tensor, torch.Tensor | None]] = []

    def transform_labels(self, y, *, ids):
        return (y + 1) % 5

    def transform_gradient(self, g, *, kind, y=None):
        self.seen.append((kind, g.clone(), y))
        return 0.5 * g if kind == Kind.ACT_GRAD else g


@pytest.mark.parametrize("ushape", [False, True])
def test_parties_pass_labels_and_gradients_through_the_defenses(beats, ushape):
    x, y, _, _ = beats
    x, y = x[:64], y[:64]
    transcript = Transcript(policy=RecordPolicy(phases=None))
    tap = _Tap()
    trainer = SplitTrainer(build_models(ModelConfig(), ushape=ushape, seed=0), x, y, seed=0,
                           channel=InProcessChannel(transcript), defenses=[tap])
    ids = torch.arange(32)
    trainer.train_step(ids)
    kinds = [k for k, _, _ in tap.seen]
    _, act_grad = transcript.get(Kind.ACT_GRAD, epoch=0)
    (g_in,) = [g for k, g, _ in tap.seen if k == Kind.ACT_GRAD]
    assert torch.equal(act_grad, 0.5 * g_in)  # what the defense returned is what crossed
    if ushape:
        assert kinds == [Kind.OUTPUT_GRAD, Kind.ACT_GRAD]
        _, out_grad = transcript.get(Kind.OUTPUT_GRAD, epoch=0)
        assert torch.equal(out_grad, tap.seen[0][1])
        assert torch.equal(tap.seen[0][2], y[ids])  # the client holds the labels
        assert tap.seen[1][2] is None  # the U-shaped server has none
        assert "labels" not in transcript.kinds()
    else:
        assert kinds == [Kind.ACT_GRAD]
        _, sent = transcript.get(Kind.LABELS, epoch=0)
        assert torch.equal(sent, (y[ids] + 1) % 5)  # the mapped labels crossed
        assert torch.equal(tap.seen[0][2], sent)  # the server's y is what it received
