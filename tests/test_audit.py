"""Privacy audits (attacks/audit.py): soundness and power of each bound, against simulation and on
real runs, with the expected values worked out in comments."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from scipy.stats import norm

from attacks.audit import (
    audit_columns,
    audit_test_releases,
    clopper_pearson_low,
    dfil,
    epsilon_lower,
    gdp_success_bound,
    mary_epsilon_lower,
    mary_success_bound,
    one_run_epsilon_lower,
)
from defenses.accounting import gdp_epsilon
from splitpriv.run import TrainConfig, run_training

SEEDS = 200


def randomised_response(eps: float, m: int, n: int, rng: np.random.Generator) -> int:
    """Successes of the best attack (guess what was output) on n releases of m-ary randomised
    response: the true candidate with probability e^eps / (e^eps + m - 1), else one of the m - 1
    others uniformly."""
    victim = rng.integers(m, size=n)
    keep = rng.random(n) < math.exp(eps) / (math.exp(eps) + m - 1)
    other = (victim + rng.integers(1, m, size=n)) % m  # uniform among the m - 1 others
    return int((np.where(keep, victim, other) == victim).sum())


def test_mary_randomised_response_attains_the_bound_and_its_lower_bound_is_sound():
    eps, m, n = 2.0, 11, 2000
    # the bound at delta 0 is randomised response's own success: e^2 / (e^2 + 10) = 7.389 /
    # 17.389 = .4249; inverted it gives eps back
    p = math.exp(eps) / (math.exp(eps) + m - 1)
    assert mary_success_bound(eps, 0.0, m) == pytest.approx(p, rel=1e-12)
    assert mary_epsilon_lower(p, m, 0.0) == pytest.approx(eps, rel=1e-12)
    rng = np.random.default_rng(0)
    lows = np.array([epsilon_lower(randomised_response(eps, m, n, rng), n, m, delta=0.0)["epsilon"]
                     for _ in range(SEEDS)])
    # sampling sd sqrt(.4249 .5751 / 2000) = .01105; the 95% one-sided limit sits 1.645 sd
    # below: .4067 -> ln(10 .4067 / .5933) = 1.925, so the lower bounds scatter about 1.92
    assert np.median(lows) == pytest.approx(1.925, abs=0.06)
    # sound: above the true epsilon only when the limit is above p, at most 5% of the time
    # (the binomial is discrete, so a little less); 200 seeds: expect <= 10, allow 16 (p < .03)
    assert (lows > eps).sum() <= 16
    assert lows.max() < eps + 0.15


def test_chance_level_success_gives_zero_and_a_perfect_one_the_largest():
    # n = 1000 at chance 1/11 (91 successes): the limit is below chance, the bound 0
    low = epsilon_lower(91, 1000, 11)
    assert low["epsilon"] == 0.0 and low["epsilon_gdp"] == 0.0 and low["mu"] == 0.0
    # every victim picked out: the limit is .05^(1/1000) = .997009, and ln(10 .997009 /
    # .002991) = 8.11 is the most 1,000 victims can show
    top = epsilon_lower(1000, 1000, 11)
    assert top["success_low"] == pytest.approx(0.05 ** (1 / 1000), rel=1e-9)
    assert top["epsilon"] == pytest.approx(8.1116, abs=1e-3) == top["largest"]
    assert clopper_pearson_low(0, 10) == 0.0


def simplex(m: int, dim: int, radius: float, rng: np.random.Generator) -> np.ndarray:
    """m points on a sphere of ``radius``, a regular simplex rotated at random (pairwise
    distance radius sqrt(2m / (m - 1)), as far apart as m clipped vectors can all be)."""
    e = np.eye(m) - 1 / m
    e /= np.linalg.norm(e, axis=1, keepdims=True)
    q, _ = np.linalg.qr(rng.standard_normal((dim, m)))
    return radius * e @ q.T  # (m, dim)


def gaussian_game(noise: float, m: int, n: int, rng: np.random.Generator, clip: float = 1.0
                  ) -> int:
    """Successes of the optimal (nearest-candidate) attack on n Gaussian releases of a clipped
    candidate chosen uniformly among m on a simplex (std ``noise`` per coordinate)."""
    cand = simplex(m, 32, clip, rng)
    victim = rng.integers(m, size=n)
    rel = cand[victim] + noise * rng.standard_normal((n, 32))
    guess = ((rel[:, None, :] - cand[None]) ** 2).sum(-1).argmin(1)
    return int((guess == victim).sum())


def test_gaussian_mechanism_on_clipped_vectors_stays_under_the_gdp_bound():
    m, n, clip, sigma = 11, 2000, 1.0, 0.5  # noise multiplier .5: std .5 * 2C = 1
    mu = 2 * clip / (sigma * 2 * clip)  # = 2 per release (replace: sensitivity 2C)
    bound = gdp_success_bound(mu, m)
    # Phi(Phi^-1(1/11) + 2) = Phi(-1.335 + 2) = Phi(.665) = .747
    assert bound == pytest.approx(norm.cdf(norm.ppf(1 / 11) + 2), rel=1e-12)
    assert bound == pytest.approx(0.747, abs=1e-3)
    rng = np.random.default_rng(1)
    wins = np.array([gaussian_game(sigma * 2 * clip, m, n, rng) for _ in range(50)])
    # the simplex's pairwise distance is sqrt(2 11 / 10) = 1.483 (< 2C): each pair is told
    # apart with Phi(1.483 / 2) = .77, and the victim is picked out of 11 about 34% of the
    # time, well under .747 (the robustness bound is not tight for m-ary Gaussian tests)
    assert (wins / n).max() < bound
    claimed = gdp_epsilon(mu, 1e-5)
    for w in wins:
        low = epsilon_lower(int(w), n, m)
        assert low["epsilon"] <= claimed and low["epsilon_gdp"] <= claimed


def test_noise_secretly_ten_times_too_small_is_caught():
    m, n, clip = 11, 2000, 1.0
    claimed_sigma = 2.0  # mu = 1 / 2 per release: epsilon(1e-5) on the analytic curve = 1.99
    claimed = gdp_epsilon(1 / claimed_sigma, 1e-5)
    assert claimed == pytest.approx(1.99, abs=0.01)
    rng = np.random.default_rng(2)
    # released with std .2 * 2C = .4 instead of 4: pairs at distance 1.483 are told apart with
    # Phi(1.483 / .8) = .968; the attack picks the victim out of 11 about 82% of the time
    wins = gaussian_game(claimed_sigma / 10 * 2 * clip, m, n, rng)
    low = epsilon_lower(wins, n, m)
    assert wins / n > gdp_success_bound(1 / claimed_sigma, m)  # .20: the bound is broken
    assert low["epsilon"] > claimed and low["epsilon_gdp"] > claimed


def test_one_run_audit_of_randomised_response_canaries():
    # m canaries, each in or out with probability 1/2; the auditor sees each inclusion bit
    # through eps-randomised response and guesses all (r = m): v ~ Binom(m, e^eps / (1 +
    # e^eps)) = Binom(1000, .731): 731 right on average, sd 14
    eps, m = 1.0, 1000
    rng = np.random.default_rng(3)
    lows = []
    for _ in range(100):
        bits = rng.random(m) < 0.5
        flip = rng.random(m) >= 1 / (1 + math.exp(-eps))
        v = int(((bits ^ flip) == bits).sum())
        lows.append(one_run_epsilon_lower(m, m, v, delta=0.0))
    lows = np.array(lows)
    # the 95% limit of 731 / 1000 is about .707 -> ln(.707 / .293) = .88
    assert np.median(lows) == pytest.approx(0.88, abs=0.07)
    assert (lows > eps).sum() <= 10  # sound: above eps at most ~5% of the time
    # the delta term only lowers the bound
    assert one_run_epsilon_lower(m, m, 731, delta=1e-5) <= one_run_epsilon_lower(m, m, 731,
                                                                                 delta=0.0)


def test_dfil_is_exact_for_a_linear_client():
    d, out, sigma = 16, 64, 0.3
    g = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(out, d, generator=g, dtype=torch.float64))
    w = 2.5 * q  # W^T W = 6.25 I: dFIL = Tr(W^T W) / (sigma^2 d) = 6.25 / .09 = 69.44

    def linear(x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ w.T

    x = torch.randn(5, 1, d, generator=g, dtype=torch.float64)
    fil = dfil(linear, x, sigma)
    assert torch.allclose(fil, torch.full((5,), 6.25 / 0.09, dtype=torch.float64))
    # the least-squares reconstruction is unbiased and efficient when W^T W is a multiple of I:
    # its per-coordinate MSE is sigma^2 / 6.25 = .0144 = 1 / dFIL, here within sampling error
    trials = 4000
    y = linear(x[:1]).expand(trials, -1) + sigma * torch.randn(trials, out, generator=g,
                                                                dtype=torch.float64)
    x_hat = torch.linalg.lstsq(w, y.T).solution.T
    mse = float(((x_hat - x[0, 0]) ** 2).mean())
    assert mse == pytest.approx(1 / float(fil[0]), rel=0.05)  # sd of the estimate: 1.1%
    # a W whose singular values differ: least squares' MSE sigma^2 Tr((W^T W)^-1) / d is above
    # 1 / dFIL (AM >= HM), never below
    w2 = q * torch.linspace(0.5, 4.0, d, dtype=torch.float64)
    fil2 = dfil(lambda z: z.flatten(1) @ w2.T, x[:1], sigma)
    exact = sigma**2 * float(torch.linalg.inv(w2.T @ w2).trace()) / d
    assert exact > 1 / float(fil2[0])


# -- real runs ----------------------------------------------------------------------------------


def small_run(pool_dirs, path, defenses):
    mitdb, cache = pool_dirs
    config = TrainConfig(
        protocol="paper-unique", epochs=1, train_subset=300, test_subset=1500, val_fraction=0.0,
        defenses=defenses, device="cpu", record_epochs="none", record_releases="none",
        mitdb_dir=str(mitdb), cache_dir=str(cache), threads=1,
    )
    run_training(config, path, progress=False)
    from attacks.runs import SHARED

    return SHARED.load(path)


@pytest.fixture(scope="module")
def formal_run(pool_dirs, tmp_path_factory):
    """A one-epoch run under formal Gaussian DP, noise multiplier 1 (mu = 1 per release)."""
    return small_run(pool_dirs, tmp_path_factory.mktemp("audit") / "formal", [
        "dp:mode=formal,mechanism=gaussian,noise_multiplier=1,clip=1,standardise=true"])


def claim_of(run):
    from attacks.audit import ReleaseClaim
    from splitpriv.io import read_json

    return ReleaseClaim.of(read_json(run.path / "result.json"))


def test_test_time_audit_of_formal_dp_holds_and_catches_noise_ten_times_too_small(
        formal_run, monkeypatch):
    claim = claim_of(formal_run)
    assert claim.per_release == pytest.approx(1.0)  # mu = 2C / (1 * 2C)
    # mu = 1 among 11: Phi(-1.335 + 1) = .369; among 101: Phi(-2.330 + 1) = .092
    honest = audit_test_releases(formal_run, claim, victims=600)
    assert honest["rero_bound_k10"]["bound"] == pytest.approx(0.369, abs=1e-3)
    assert honest["canaries"]["rero_bound_k10"]["bound"] == honest["rero_bound_k10"]["bound"]
    assert not honest["violation"]
    for game in (honest, honest["canaries"]):
        for k in ("k10", "k100"):
            assert game["success"][k] <= game[f"rero_bound_{k}"]["bound"]
    from defenses.dp import FormalDP

    scale = FormalDP.noise_scale.fget
    monkeypatch.setattr(FormalDP, "noise_scale", property(lambda self: scale(self) / 10))
    broken = audit_test_releases(formal_run, claim, victims=600)
    # same-class beats lie close in release space (here .29 against the bound .369 with the
    # noise 10x too small): the canaries, chosen far apart, are what catches it (about .57)
    assert broken["violation"] and broken["canaries"]["rero_bound_k10"]["exceeded"]
    # the claim's one release is mu = 1: epsilon(1e-5) = 4.38 on the analytic curve
    assert broken["canaries"]["epsilon_lower"]["k10"]["epsilon_gdp"] > gdp_epsilon(1.0, 1e-5)
    monkeypatch.setattr(FormalDP, "noise_scale", property(lambda self: scale(self) * 1000))
    drowned = audit_test_releases(formal_run, claim, victims=600)  # success at chance
    assert drowned["epsilon_lower"]["k10"]["epsilon"] == 0.0
    assert drowned["canaries"]["epsilon_lower"]["k10"]["epsilon"] == 0.0


def test_undefended_run_shows_the_largest_bound_its_victims_allow(pool_dirs, tmp_path):
    run = small_run(pool_dirs, tmp_path / "none", [])
    out = audit_test_releases(run, None, victims=500)
    low = out["epsilon_lower"]["k10"]
    assert out["success"]["k10"] == 1.0 and "rero_bound_k10" not in out
    # ln(10 .05^(1/500) / (1 - .05^(1/500))) = ln(10 .994026 / .005974) = 7.42
    assert low["epsilon"] == low["largest"] == pytest.approx(7.417, abs=1e-3)


def test_audit_cli_writes_the_audit(formal_run, capsys):
    from splitpriv.cli import main

    out = formal_run.path / "elsewhere" / "audit.json"
    assert main(["audit", "--run", str(formal_run.path), "--aux", "train:0.3", "--victims",
                 "300", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    a = doc["audit"]
    for key in ("epsilon_lower", "rero_bound_k10", "rero_bound_k100", "dfil_mse_bound", "scope"):
        assert a[key] is not None, key
    assert set(a["epsilon_lower"]) == {"k10", "k100"}
    assert a["epsilon_lower"]["k10"]["largest"] > a["epsilon_lower"]["k10"]["epsilon"] >= 0
    # one training release at mu = 1: the training bound is the test one, .369 at k = 10
    assert a["rero_bound_k10"]["bound"] == pytest.approx(0.369, abs=1e-3)
    assert a["dfil_mse_bound"]["bound_median"] > 0 and not a["violation"]
    assert "epsilon lower bound" in capsys.readouterr().out
    # the study hook reads the same numbers from what strongest recorded
    summary = json.loads((formal_run.path / "attacks" / "strongest.json").read_text())["summary"]
    cols = audit_columns(summary, json.loads((formal_run.path / "result.json").read_text()))
    assert cols["epsilon_lower_k10"] == a["epsilon_lower"]["k10"]["epsilon"]
    assert cols["rero_bound_k100"] == a["rero_bound_k100"]["bound"]


@pytest.mark.parametrize("argv,match", [
    (["--victims", "0"], "--victims"), (["--confidence", "1.5"], "--confidence"),
    (["--aux", "bogus"], "aux"),
])
def test_audit_cli_refuses_bad_input(formal_run, capsys, argv, match):
    from splitpriv.cli import main

    assert main(["audit", "--run", str(formal_run.path), *argv]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_audit_cli_refuses_a_missing_run(tmp_path, capsys):
    from splitpriv.cli import main

    assert main(["audit", "--run", str(tmp_path / "nothing")]) == 2
    assert "not a finished run directory" in capsys.readouterr().err
