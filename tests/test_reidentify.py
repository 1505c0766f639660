"""Re-identification the way a curious server can do it: in activation space (attacks.match),
with every release it holds combined (attacks.releases), across patients and within patient,
and the strongest of all chosen on the attacker's own beats (attacks.strongest). Real MIT-BIH
beats, hand-made clients whose optimal attack is known."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from attacks import ATTACKS, AuxData, GroundTruth, Knowledge, build_attack
from attacks.metrics import LinkageScorer
from splitpriv.channel import Kind, Message, RecordPolicy, Transcript
from splitpriv.releases import release_blocks

N = 600  # beats; the attacker knows every third one (200), the victims are the other 400


@pytest.fixture(scope="module")
def beats(take_beats):
    x, y, _, _ = take_beats(N)
    return x, y


def _client() -> nn.Module:
    """A linear client (B, 1, 128) -> (B, 4, 128)."""
    return nn.Conv1d(1, 4, 5, padding=2)


def _setting(beats, sigma: float, releases: int = 1, seed: int = 0):
    """The linear client's activations released ``releases`` times, each with fresh Gaussian
    noise of std ``sigma`` (the client never changes): a transcript holding the last release
    and a release log of them all; the knowledge (aux: every third beat, with its patient, the
    client's architecture and weights); the ground truth with 6 'patients' (records)."""
    x, y = beats
    torch.manual_seed(0)
    client = _client()
    with torch.no_grad():
        clean = client(x)  # (N, 4, 128)
    gen = torch.Generator().manual_seed(seed)
    t = Transcript(policy=RecordPolicy(phases=None,
                                       releases=release_blocks(releases, "windows")))
    for epoch in range(1, releases + 1):
        noisy = clean + sigma * torch.randn(clean.shape, generator=gen)
        t.record(Message(Kind.ACTIVATIONS, noisy, torch.arange(N), epoch, "train"))
        if epoch < releases:  # the transcript keeps the last epoch's messages only
            t.chunks.clear()
    groups = torch.arange(N) % 6
    ids = torch.arange(0, N, 3)
    aux = AuxData(x=x[ids], y=y[ids], ids=ids, groups=groups[ids], source="every third beat")
    knowledge = Knowledge(aux=aux, depth=1, client_state=client.state_dict(),
                          build_client=_client)
    return t, knowledge, GroundTruth(x, y, groups=groups), clean


def test_matching_with_the_weights_is_the_likelihood_test_and_beats_reconstruction(beats):
    # Gaussian noise of known std on a known client: among the k + 1 candidates, the one whose
    # activation is nearest the release in squared error is the maximum-likelihood choice (the
    # Bayes-optimal test under a uniform prior), which match-weights with the l2 distance makes;
    # a reconstruction attack must first invert the noisy map, and links fewer victims
    t, knowledge, truth, clean = _setting(beats, sigma=0.5)
    opts = {"max_victims": "400", "distances": "l2"}
    r = build_attack("match-weights", opts)(t, knowledge, truth).summary
    # the same game played by hand: argmin over candidates of ||release - W c||^2
    victims = torch.from_numpy(np.setdiff1d(np.arange(N), np.arange(0, N, 3)))
    scorer = LinkageScorer(truth.x[victims], truth.y[victims], pool_x=truth.x, pool_y=truth.y,
                           seed=0)
    cand, valid = scorer.draws(10, False)
    release = t.get(Kind.ACTIVATIONS)[1].reshape(N, -1).double()
    own = clean.reshape(N, -1).double()
    hits = []
    for i, v in enumerate(victims.tolist()):
        d_own = float(((release[v] - own[v]) ** 2).sum())
        d = [float(((release[v] - own[c]) ** 2).sum()) for c in cand[i][valid[i]]]
        hits.append(float(all(d_own < e for e in d)))
    assert r["linkage"]["k10"]["accuracy"] == pytest.approx(np.mean(hits), abs=1e-12)
    ridge = build_attack("ridge", {"max_victims": "400"})(t, knowledge, truth).summary
    learned = build_attack("match", {"max_victims": "400"})(t, knowledge, truth).summary
    assert r["linkage"]["k10"]["accuracy"] > ridge["linkage"]["k10"]["accuracy"] + 0.1
    assert learned["linkage"]["k10"]["accuracy"] > ridge["linkage"]["k10"]["accuracy"] + 0.1
    # within patient: the candidates come from the victim's own 'record'
    assert r["linkage_within"]["k10"]["n"] == 400


def test_combining_r_gaussian_releases_is_one_release_at_sigma_over_root_r(beats):
    # the mean of R releases of one map with independent N(0, s^2) noise is the map plus
    # N(0, s^2 / R): 8 releases at s = 1.5 carry what one release at s / sqrt(8) = .53 does
    r8, k8, truth, clean = _setting(beats, sigma=1.5, releases=8)
    window = r8.releases.windows(torch.arange(N))[-1]
    assert window.count.tolist() == [8] * N
    assert float((window.mean - clean).std()) == pytest.approx(1.5 / math.sqrt(8), rel=0.02)
    one, k1, _, _ = _setting(beats, sigma=1.5 / math.sqrt(8), seed=1)
    opts = {"max_victims": "400", "distances": "l2"}
    many = build_attack("match-weights", opts)(r8, k8, truth).summary
    single = build_attack("match-weights", opts)(one, k1, truth).summary
    assert many["releases"]["chosen"]["releases_mean"] == 8  # chosen on the aux beats
    p, q = many["linkage"]["k10"]["accuracy"], single["linkage"]["k10"]["accuracy"]
    sd = math.sqrt(p * (1 - p) / 400 + q * (1 - q) / 400)
    assert abs(p - q) < 4 * sd
    last = build_attack("match-weights", opts | {"releases": "last"})(r8, k8, truth).summary
    assert last["linkage"]["k10"]["accuracy"] < p - 0.1  # one release at s = 1.5 links less


def test_within_patient_candidates_come_from_the_victims_own_record(beats):
    x, y = beats
    groups = torch.arange(N) % 6
    scorer = LinkageScorer(x[:100], y[:100], pool_x=x, pool_y=y, groups=groups[:100],
                           pool_groups=groups, seed=3)
    cand, valid = scorer.draws(10, False, within=True)
    for i in range(100):
        picked = cand[i][valid[i]]
        assert (groups[picked] == groups[i]).all() and (y[picked] == y[i]).all()
        assert i not in picked.tolist()
    assert scorer.linkage(x[:100], k=10, within=True)["accuracy"] == 1.0
    # each victim reconstructed as its own record's class mean: chance within the record
    rec = torch.stack([x[(groups == groups[i]) & (y == y[i])].mean(0) for i in range(100)])
    out = scorer.linkage(rec, k=10, within=True)
    assert abs(out["advantage"]) < 0.15
    with pytest.raises(ValueError, match="groups"):
        LinkageScorer(x[:10], y[:10]).draws(10, False, within=True)


def test_strongest_reidentifies_by_matching_under_noise_and_never_looks_at_victims(beats):
    t, knowledge, truth, _ = _setting(beats, sigma=1.0, releases=4)
    opts = {"candidates": "ridge", "matchers": "match", "max_victims": "300"}
    s = build_attack("strongest", opts)(t, knowledge, truth).summary
    reid = s["reidentification"]
    assert reid["across"]["attack"] == "match"  # chosen on the held-out aux beats
    assert reid["across"]["k10"]["advantage"] > s["linkage"]["k10"]["advantage"] + 0.1
    assert reid["across"]["releases_mean"] == 4  # every release combined
    assert reid["headline"]["k10_advantage"] == max(reid["across"]["k10"]["advantage"],
                                                    reid["within"]["k10"]["advantage"])
    cols = ATTACKS["strongest"].columns(s)
    assert cols["privacy_k10_advantage"] == reid["headline"]["k10_advantage"]
    assert cols["reid_attack"] == "match" and cols["reid_releases"] == 4
    # the victims' true beats replaced by noise: every choice is the same
    x = truth.x.clone()
    victims = ~torch.isin(torch.arange(N), knowledge.aux.ids)
    x[victims] = torch.rand(x[victims].shape, generator=torch.Generator().manual_seed(1))
    blind = build_attack("strongest", opts)(t, knowledge, GroundTruth(x, truth.y,
                                                                      groups=truth.groups))
    assert blind.summary["winner"] == s["winner"]
    assert {g: blind.summary["reidentification"][g]["attack"] for g in ("across", "within")} \
        == {g: reid[g]["attack"] for g in ("across", "within")}
    assert blind.summary["selection"]["candidates"]["match"]["heldout"] == \
        s["selection"]["candidates"]["match"]["heldout"]


def test_pure_noise_releases_reidentify_at_chance(beats):
    # activations that carry nothing about the beats: no candidate beats chance on the held-out
    # beats, and the reported re-identification is the prior's, at chance
    t, knowledge, truth, clean = _setting(beats, sigma=0.0)
    noise = torch.randn(clean.shape, generator=torch.Generator().manual_seed(5))
    blank = Transcript(policy=RecordPolicy(phases=None))
    blank.record(Message(Kind.ACTIVATIONS, noise, torch.arange(N), 1, "train"))
    s = build_attack("strongest", {"candidates": "ridge", "max_victims": "300"})(
        blank, knowledge, truth).summary
    for game in ("across", "within"):
        assert abs(s["reidentification"][game]["k10"]["advantage"]) < 0.1
