"""Re-identification (linkage) of reconstructions, on real beats, with hand-worked expectations."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from attacks.metrics import linkage, wilson_interval


def test_wilson_interval_worked_by_hand():
    # 8 of 10, z = 1.96: p = .8, centre = (.8 + 1.96^2/20) / (1 + 1.96^2/10) = .99208 / 1.38415
    # = .71674; half = 1.96 sqrt(.8 * .2 / 10 + 1.96^2 / 400) / 1.38415 = .22659
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.71674 - 0.22659, abs=1e-4)
    assert hi == pytest.approx(0.71674 + 0.22659, abs=1e-4)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def beats(take_beats):
    x, y, _, _ = take_beats(3000)
    return x, y


@pytest.mark.parametrize("normalise", [False, True])
def test_perfect_reconstructions_link_every_victim(beats, normalise):
    # a reconstruction equal to its beat is at distance 0 from it and > 0 from any other beat
    x, y = beats
    out = linkage(x, x, y, k=10, normalise=normalise)
    assert out["accuracy"] == 1.0 and out["advantage"] == 1.0
    assert out["chance"] == pytest.approx(1 / 11)


@pytest.mark.parametrize("k", [10, 100])
def test_the_mean_beat_links_at_chance(beats, k):
    # the same reconstruction for every victim: by exchangeability a victim is the nearest of
    # itself and k random beats of its class with probability exactly 1 / (k + 1) on average
    x, y = beats
    mean_beat = x.mean(0, keepdim=True).expand_as(x)
    out = linkage(x, mean_beat, y, k=k, seed=1)
    sd = math.sqrt(out["chance"] * (1 - out["chance"]) / out["n"])
    assert abs(out["accuracy"] - out["chance"]) < 4 * sd
    assert out["ci_low"] <= out["chance"] <= out["ci_high"] or abs(out["advantage"]) < 0.05


def test_reconstructions_shuffled_among_victims_link_at_chance(beats):
    # each victim gets another victim's perfect reconstruction: nearer to that other beat (at
    # distance 0, a candidate only when drawn) than to its own, so accuracy <= chance
    x, y = beats
    perm = torch.from_numpy(np.random.default_rng(0).permutation(len(x)))
    out = linkage(x, x[perm], y, k=10, seed=2)
    sd = math.sqrt(out["chance"] * (1 - out["chance"]) / out["n"])
    assert out["accuracy"] < out["chance"] + 4 * sd
    assert out["advantage"] < 0.05


def test_noisy_reconstructions_link_between_chance_and_one(beats):
    x, y = beats
    noisy = x + 0.02 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))
    out = linkage(x, noisy, y, k=10)
    assert out["chance"] < out["accuracy"] <= 1.0
    assert out["ci_low"] <= out["accuracy"] <= out["ci_high"]


def test_linkage_rejects_mismatched_inputs(beats):
    x, y = beats
    with pytest.raises(ValueError, match="do not match"):
        linkage(x[:10], x[:9], y[:10], k=5)
    with pytest.raises(ValueError, match="k must be"):
        linkage(x[:10], x[:10], y[:10], k=0)


def test_report_layout_and_the_class_mean_prior_links_at_chance(beats):
    # the class mean is one beat per class and candidates share the victim's class: as for the
    # mean beat, the victim is the nearest of k + 1 exchangeable beats with probability 1/(k+1)
    from attacks.inversion import class_mean_beats
    from attacks.metrics import linkage_report

    x, y = beats
    report = linkage_report(x[:600], class_mean_beats(x, y, y[:600]), y[:600], pool_x=x,
                            pool_y=y, seed=3)
    assert set(report) == {"linkage", "linkage_znorm"}
    for per_k in report.values():
        assert set(per_k) == {"k10", "k100"}
        for link in per_k.values():
            assert {"accuracy", "ci_low", "ci_high", "chance", "advantage"} <= set(link)
            sd = math.sqrt(link["chance"] * (1 - link["chance"]) / link["n"])
            assert abs(link["accuracy"] - link["chance"]) < 4 * sd


def _linkage_loop(x, x_hat, y, *, k, pool_x=None, pool_y=None, normalise=False, seed=0):
    """The original one-victim-at-a-time linkage, the reference of the vectorised one."""
    from attacks.measures import znorm
    from attacks.metrics import wilson_interval

    x = np.asarray(torch.as_tensor(x).double().reshape(len(x), -1))
    x_hat = np.asarray(torch.as_tensor(x_hat).double().reshape(len(x_hat), -1))
    y = np.asarray(torch.as_tensor(y)).astype(np.int64)
    px = x if pool_x is None else np.asarray(torch.as_tensor(pool_x).double().reshape(
        len(pool_x), -1))
    py = y if pool_y is None else np.asarray(torch.as_tensor(pool_y)).astype(np.int64)
    if normalise:
        x, x_hat, px = znorm(x), znorm(x_hat), znorm(px)
    rng = np.random.default_rng(seed)
    by_class = {c: px[py == c] for c in np.unique(py)}
    empty = np.empty((0, px.shape[1]))
    hits, chance = np.zeros(len(x)), np.zeros(len(x))
    for i in range(len(x)):
        members = by_class.get(y[i], empty)
        same = members[:, 0] == x[i, 0]
        same[same] = np.all(members[same] == x[i], axis=1)
        others = members[~same]
        cand = others if len(others) <= k else others[rng.choice(len(others), k, replace=False)]
        d_own = np.mean((x_hat[i] - x[i]) ** 2)
        d = np.mean((cand - x_hat[i]) ** 2, axis=1)
        closer, tied = int((d < d_own).sum()), int((d == d_own).sum())
        hits[i] = 0.0 if closer else 1.0 / (1 + tied)
        chance[i] = 1.0 / (len(cand) + 1)
    n = len(x)
    acc, ch = float(hits.mean()), float(chance.mean())
    lo, hi = wilson_interval(float(hits.sum()), n)
    return {"accuracy": acc, "ci_low": lo, "ci_high": hi, "chance": ch,
            "advantage": (acc - ch) / (1 - ch) if ch < 1 else math.nan, "k": k, "n": n}


@pytest.mark.parametrize("normalise", [False, True])
def test_vectorised_linkage_equals_the_victim_by_victim_loop(beats, normalise):
    # candidates drawn once per (k, normalise) and scored in one pass: the same numbers, bit for
    # bit, as one victim at a time; for several reconstructions sharing one scorer's draws too,
    # with ties (a reconstruction equal to a pool beat), a class smaller than k and a class the
    # pool lacks
    from attacks.metrics import LinkageScorer, linkage_report

    x, y = beats
    y = y.clone()
    y[:3] = 7  # a class of 3 beats in the victims, absent from the pool below
    pool_x, pool_y = x[200:], y[200:]
    victims, labels = x[:300], y[:300]
    gen = torch.Generator().manual_seed(0)
    recs = {"noisy": victims + 0.05 * torch.randn(victims.shape, generator=gen),
            "tied": x[200:500].clone(),
            "mean": victims.mean(0, keepdim=True).expand_as(victims),
            "float32": (victims + 0.01 * torch.randn(victims.shape, generator=gen)).float()}
    scorer = LinkageScorer(victims, labels, pool_x=pool_x, pool_y=pool_y, seed=5)
    for rec in recs.values():
        for k in (1, 10, 100, 5000):
            want = _linkage_loop(victims, rec, labels, k=k, pool_x=pool_x, pool_y=pool_y,
                                 normalise=normalise, seed=5)
            assert scorer.linkage(rec, k=k, normalise=normalise) == want
            assert linkage(victims, rec, labels, k=k, pool_x=pool_x, pool_y=pool_y,
                           normalise=normalise, seed=5) == want
        want_own = _linkage_loop(victims, rec, labels, k=10, normalise=normalise, seed=1)
        assert linkage(victims, rec, labels, k=10, normalise=normalise, seed=1) == want_own
    report = linkage_report(victims, recs["noisy"], labels, pool_x=pool_x, pool_y=pool_y, seed=5)
    key = "linkage_znorm" if normalise else "linkage"
    ref = _linkage_loop(victims, recs["noisy"], labels, k=100, pool_x=pool_x, pool_y=pool_y,
                        normalise=normalise, seed=5)
    assert report[key]["k100"] == {k: ref[k] for k in (*report[key]["k100"],)}
