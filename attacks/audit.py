"""Privacy audits: what an attack's measured success says about epsilon, and the bound a formal
claim puts beside every attack.

Three statements, each a theorem about a game the measured number is an instance of:

* **Empirical epsilon lower bound from re-identification** (the m-ary game). The victim is one of
  m = k + 1 same-class candidates, uniformly at random (the linkage game of
  :class:`attacks.metrics.LinkageScorer`: ``accuracy`` is the rate of picking the true one, ties
  counted as expected successes; the studies' ``advantage`` is the normalised
  ``(accuracy - 1/m) / (1 - 1/m)``, so ``accuracy = 1/m + advantage (1 - 1/m)``: the audit reads
  the accuracy). Releasing the victim through an (eps, delta)-DP mechanism under replace
  adjacency, any attacker's average success is at most::

      s <= (e^eps + (m - 1) delta) / (e^eps + m - 1)

  (for each i and j != i, P_i(A = i) <= e^eps P_j(A = i) + delta; summed over the m - 1 j's and
  then over i, with sum_i sum_{j != i} P_j(A = i) = m (1 - s): (m - 1) s <= e^eps (1 - s) +
  (m - 1) delta). m-ary randomised response attains it at delta = 0. Inverted, a success s gives
  ``eps >= ln((m - 1)(s - delta) / (1 - s))``; the audit takes s at the one-sided Clopper-Pearson
  lower limit (``scipy.stats.beta.ppf``) of the successes among n victims, so the bound holds with
  the stated confidence. With every victim picked out, the limit is (1 - confidence)^(1/n):
  the largest epsilon n victims can show (``largest``: 8.1 at n = 1000, k = 10, 95%).
  Under the further assumption that the mechanism's trade-off curve is Gaussian (mu-GDP, as
  Nasr et al. 2023 audit DP-SGD), the same success gives mu >= Phi^-1(s) - Phi^-1(1/m) (the
  inverse of the next bound), converted to (eps, delta) by the analytic Gaussian curve of the
  accountant (``epsilon_gdp``).
* **Reconstruction robustness** (Hayes, Mahloujifar & Balle, "Bounding training data
  reconstruction in DP-SGD", NeurIPS 2023, Thm. 2; Kaissis et al. 2023): for an f-DP release and a
  prior whose largest mass is kappa, success <= 1 - f(kappa). With the uniform prior on m
  candidates, kappa = 1/m; for mu-GDP, f(a) = Phi(Phi^-1(1 - a) - mu), so success <=
  Phi(Phi^-1(1/m) + mu) (``rero_bound_kK``); for pure or approximate DP the m-ary bound above.
* **dFIL** (Maeng, Guo, Kokhlikyan, Melnyk & Huang, "Bounding the invertibility of
  privacy-preserving instance encoding using Fisher information", NeurIPS 2023): for a release
  g(x) + N(0, sigma^2 I), x of size d, the Fisher information is J^T J / sigma^2 (J = dg/dx), and
  by Cramer-Rao any unbiased reconstruction has per-coordinate MSE >= d / Tr(I) = 1 / dFIL,
  ``dFIL = Tr(J^T J) / (sigma^2 d)``; R releases averaged multiply it by R. The bound binds
  unbiased reconstructions only: an attacker with a prior (the class mean) can go below it.

The bounds hold for a release whose mechanism does not otherwise depend on the victim: a test
beat's release under formal DP (the client's weights never saw it; :func:`audit_test_releases`
checks the bound there and reports a violation as a bug); not a training beat's, whose client
weights were trained on it without privacy (the claim's own condition). Every row says which.

The one-run audit of Steinke, Nasr & Jagielski, "Privacy auditing with one (1) training run"
(NeurIPS 2023, Thm. 3.1 and its delta term, Appendix D) is :func:`one_run_p_value` and
:func:`one_run_epsilon_lower`: m canaries each included with probability 1/2, r guesses of
which v right; the canary run and its score are :mod:`attacks.audit_one_run`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy.optimize import brentq
from scipy.stats import beta, binom, norm

from defenses.accounting import gdp_epsilon
from splitpriv.defense import PrivacyClaim

#: the confidence of every lower bound (one-sided)
CONFIDENCE = 0.95
#: the candidate counts audited (the linkage games' k; m = k + 1)
AUDIT_KS = (10, 100)
#: victims of the dFIL bound (a Jacobian each: 100 take about 5 s here)
DFIL_BEATS = 100
#: the delta the empirical epsilon is stated at when the run claims none
DEFAULT_DELTA = 1e-5


# -- the bounds ---------------------------------------------------------------------------------


def clopper_pearson_low(successes: float, n: int, confidence: float = CONFIDENCE) -> float:
    """One-sided Clopper-Pearson lower limit of a binomial proportion: ``beta.ppf(1 -
    confidence, s, n - s + 1)`` with s the successes rounded down (ties make them fractional;
    rounding down keeps the limit conservative); 0 for s = 0."""
    s = math.floor(successes + 1e-9)
    if not 0 <= s <= n or n < 1:
        raise ValueError(f"audit: {successes} successes among {n} trials")
    return 0.0 if s == 0 else float(beta.ppf(1 - confidence, s, n - s + 1))


def mary_success_bound(epsilon: float, delta: float, m: int) -> float:
    """The largest average success of an m-ary re-identification of an (epsilon, delta)-DP
    release: ``(e^eps + (m - 1) delta) / (e^eps + m - 1)`` (module docstring), computed without
    overflow."""
    if math.isinf(epsilon):
        return 1.0
    t = math.exp(-epsilon)  # divide through by e^eps
    return min(1.0, (1 + (m - 1) * delta * t) / (1 + (m - 1) * t))


def mary_epsilon_lower(success: float, m: int, delta: float) -> float:
    """The smallest epsilon consistent with success ``s`` in the m-ary game at ``delta``:
    ``ln((m - 1)(s - delta) / (1 - s))``, 0 at or below chance, inf at s = 1."""
    if success >= 1:
        return math.inf
    if success - delta <= 0:
        return 0.0
    return max(0.0, math.log((m - 1) * (success - delta) / (1 - success)))


def gdp_success_bound(mu: float, m: int) -> float:
    """Reconstruction robustness of a mu-GDP release against a uniform prior on m candidates:
    ``Phi(Phi^-1(1/m) + mu)``."""
    return float(norm.cdf(norm.ppf(1 / m) + mu))


def gdp_mu_lower(success: float, m: int) -> float:
    """The smallest mu consistent with success ``s`` (the inverse of
    :func:`gdp_success_bound`): ``Phi^-1(s) - Phi^-1(1/m)``, 0 at or below chance."""
    if success >= 1:
        return math.inf
    return max(0.0, float(norm.ppf(success) - norm.ppf(1 / m)))


def epsilon_lower(successes: float, n: int, m: int, *, delta: float = DEFAULT_DELTA,
                  confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The empirical epsilon lower bound of ``successes`` among ``n`` victims in the m-ary game:
    ``epsilon`` (any (eps, delta)-DP mechanism), ``epsilon_gdp`` and ``mu`` (a Gaussian trade-off
    curve assumed), the success and its lower limit, and ``largest``: the epsilon that every one
    of the n victims picked out would show."""
    p_low = clopper_pearson_low(successes, n, confidence)
    mu = gdp_mu_lower(p_low, m)
    best = clopper_pearson_low(n, n, confidence)
    return {
        "epsilon": mary_epsilon_lower(p_low, m, delta),
        "epsilon_gdp": gdp_epsilon(mu, delta) if math.isfinite(mu) else math.inf,
        "mu": mu, "success": successes / n, "success_low": p_low, "m": m, "n": n,
        "delta": delta, "confidence": confidence,
        "largest": mary_epsilon_lower(best, m, delta),
        "largest_gdp": gdp_epsilon(gdp_mu_lower(best, m), delta),
    }


def one_run_p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Steinke, Nasr & Jagielski 2023, Thm. 3.1 (with the delta term of their Appendix D): the
    probability, under an (epsilon, delta)-DP training run, that an auditor guessing ``r`` of
    ``m`` canaries (each included with probability 1/2) gets ``v`` or more right:
    ``P[Binom(r, q) >= v] + 2 m delta max_i P[v > Binom(r, q) >= v - i] / i``, q = e^eps /
    (1 + e^eps) (randomised response's accuracy)."""
    if not 0 <= v <= r <= m:
        raise ValueError(f"one-run audit: need 0 <= v <= r <= m, got v={v}, r={r}, m={m}")
    q = 1 / (1 + math.exp(-epsilon))
    tail = float(binom.sf(v - 1, r, q))
    if delta == 0 or v == 0:
        return min(1.0, tail)
    i = np.arange(1, v + 1)
    below = np.cumsum(binom.pmf(v - i, r, q))  # P[v > Binom >= v - i], i = 1..v
    return min(1.0, tail + 2 * m * delta * float(np.max(below / i)))


def one_run_epsilon_lower(m: int, r: int, v: int, *, delta: float = DEFAULT_DELTA,
                          confidence: float = CONFIDENCE) -> float:
    """The largest epsilon rejected at ``confidence`` by :func:`one_run_p_value` (0 when none)."""
    alpha = 1 - confidence

    def gap(eps: float) -> float:
        return one_run_p_value(m, r, v, eps, delta) - alpha

    if gap(0.0) >= 0:
        return 0.0
    hi = 1.0
    while gap(hi) < 0:
        hi *= 2
        if hi > 1e4:
            return math.inf
    return float(brentq(gap, 0.0, hi, xtol=1e-9))


# -- dFIL -------------------------------------------------------------------------------------


def dfil(release_map: Any, x: torch.Tensor, sigma: float, *, releases: float = 1.0
         ) -> torch.Tensor:
    """Per-beat diagonal Fisher information ``releases * Tr(J^T J) / (sigma^2 d)`` of a release
    ``release_map(x) + N(0, sigma^2)`` at each beat (J by forward mode, ``torch.func.jacfwd``:
    128 inputs against 512 outputs; vectorised over the beats by ``vmap``); 1 / dFIL bounds an
    unbiased reconstruction's per-coordinate MSE.

    Shape: ``release_map``: (B, *in) -> (B, *out); x: (N, *in) -> (N,)."""
    from torch.func import jacfwd, vmap

    def one(xi: torch.Tensor) -> torch.Tensor:
        return release_map(xi.unsqueeze(0)).reshape(-1)

    x = x.detach().double()
    d = x[0].numel()
    trace = torch.cat([(vmap(jacfwd(one))(c) ** 2).flatten(1).sum(1)  # (c, D_out, *in) each
                       for c in x.split(32)])
    return releases * trace / (sigma**2 * d)


# -- a run's claim -------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReleaseClaim:
    """What a run's activation-release claim implies for one release of a beat in the
    re-identification game (replace adjacency between two candidates: L2 distance of their
    clipped activations up to 2C, L1 for Laplace).

    Attributes:
        mechanism: ``gaussian`` or ``laplace``.
        per_release: mu (Gaussian: 2C / sigma) or epsilon (Laplace: 2C / b) of one release.
        train_releases, test_releases: releases per beat the claim accounts.
        epsilon, delta: the claimed training (epsilon, delta).
        clip, noise_scale, test_noise: the mechanism's parameters.
    """

    mechanism: str
    per_release: float
    train_releases: int
    test_releases: int
    epsilon: float | None
    delta: float
    clip: float
    noise_scale: float
    test_noise: bool

    @classmethod
    def of(cls, result: dict[str, Any]) -> ReleaseClaim | None:
        """The formal activation-DP claim of result.json (``dp:mode=formal``), else None."""
        for doc in result.get("defenses", []):
            c = PrivacyClaim.from_dict(doc)
            if c.formal and c.details.get("mode") == "formal" and c.details.get("noise_scale"):
                scale, clip = float(c.details["noise_scale"]), float(c.details["clip"])
                test: dict[str, Any] = next(iter((c.details.get("test") or {}).values()), {})
                return cls(mechanism=str(c.mechanism), per_release=2 * clip / scale,
                           train_releases=int(c.details["train"]["releases_per_beat"]),
                           test_releases=int(test.get("releases_per_beat", 0)),
                           epsilon=c.epsilon, delta=float(c.delta or DEFAULT_DELTA), clip=clip,
                           noise_scale=scale, test_noise=bool(c.details.get("test_noise", True)))
        return None

    def success_bound(self, m: int, releases: float) -> float:
        """Reconstruction robustness of ``releases`` releases of a beat among m candidates:
        Gaussian, mu-GDP with mu = sqrt(R) 2C / sigma (exact composition); Laplace, the m-ary
        bound at epsilon = R 2C / b (basic composition, delta 0)."""
        if self.mechanism == "gaussian":
            return gdp_success_bound(math.sqrt(releases) * self.per_release, m)
        return mary_success_bound(releases * self.per_release, 0.0, m)

    def as_dict(self) -> dict[str, Any]:
        key = "mu_per_release" if self.mechanism == "gaussian" else "epsilon_per_release"
        return {"mechanism": self.mechanism, key: self.per_release, "epsilon": self.epsilon,
                "delta": self.delta, "train_releases": self.train_releases,
                "test_releases": self.test_releases, "clip": self.clip,
                "noise_scale": self.noise_scale, "test_noise": self.test_noise}


TRAIN_SCOPE = ("training beats attacked through the releases the server kept: the client's "
               "weights were trained on the victims without privacy (unless DP-SGD), so a "
               "formal claim's bound is conditional on them and does not bind this attack; the "
               "lower bound is an empirical statement about the whole release")
TEST_SCOPE = ("test beats released once under the run's test-time mechanism, the client's final "
              "weights (independent of the victims) known to the auditor: the bounds hold "
              "exactly here")


def game_bounds(game: dict[str, Any], claim: ReleaseClaim | None, releases: float,
                *, confidence: float = CONFIDENCE, exact: bool) -> dict[str, Any]:
    """One linkage game's audit, per k: the empirical epsilon lower bound and, with a claim,
    the robustness bound on its success beside the measured success (``exceeded``: the success's
    lower limit above the bound; a ``violation`` only where the bound holds ``exact``-ly).

    ``game``: ``{"k10": {"accuracy", "chance", "n", ...}, ...}`` (a linkage report's entry)."""
    delta = claim.delta if claim else DEFAULT_DELTA
    out: dict[str, Any] = {"epsilon_lower": {}}
    for k in AUDIT_KS:
        g = game.get(f"k{k}")
        if not g:
            continue
        # chance is the mean of 1 / (k_i + 1), k_i the candidates victim i had: k + 1 for
        # every victim across patients; within a patient some have fewer, and m is rounded
        # down (a smaller m gives a smaller bound), the bound then marked approximate
        m = math.floor(1 / g["chance"] + 1e-9)
        if m < 2:  # (almost) no victim had a candidate (small groups): no game to bound
            continue
        low = epsilon_lower(g["accuracy"] * g["n"], int(g["n"]), m, delta=delta,
                            confidence=confidence)
        low["every_victim_has_k"] = m == k + 1
        out["epsilon_lower"][f"k{k}"] = low
        if claim is not None:
            bound = claim.success_bound(m, releases)
            exceeded = low["success_low"] > bound
            out[f"rero_bound_k{k}"] = {"bound": bound, "success": low["success"],
                                       "success_low": low["success_low"], "m": m,
                                       "releases": releases, "exceeded": exceeded,
                                       "violation": bool(exceeded and exact)}
    return out


def audit_columns(strongest: dict[str, Any] | None, result: dict[str, Any]) -> dict[str, float]:
    """A study row's audit columns from what the strongest attack recorded (its summary) and the
    run's claim (result.json): ``epsilon_lower_k10/k100`` (across patients, training releases)
    and, with a formal activation-DP claim, ``rero_bound_k10/k100``. NaN where not available."""
    cols = {c: math.nan for c in ("epsilon_lower_k10", "epsilon_lower_k100",
                                   "rero_bound_k10", "rero_bound_k100")}
    if not strongest or "reidentification" not in strongest:
        return cols
    across = strongest["reidentification"]["across"]
    claim = ReleaseClaim.of(result)
    a = game_bounds(across, claim, float(across.get("releases_mean") or 1), exact=False)
    for k in AUDIT_KS:
        if f"k{k}" in a["epsilon_lower"]:
            cols[f"epsilon_lower_k{k}"] = a["epsilon_lower"][f"k{k}"]["epsilon"]
        if f"rero_bound_k{k}" in a:
            cols[f"rero_bound_k{k}"] = a[f"rero_bound_k{k}"]["bound"]
    return cols


# -- a run's audit -------------------------------------------------------------------------------


def client_release_map(run: Any) -> Any:
    """The run's final client followed by its defenses' noiseless maps (clipping, standardising):
    ``(B, 1, 128) -> (B, C, L)``, differentiable, in float64."""
    from attacks.runs import run_defenses

    net = run.client_net().double().eval()  # the paper's ClientNet, or the run's architecture
    net.load_state_dict(run.weights["client"])
    defenses = run_defenses(run)

    def release_map(x: torch.Tensor) -> torch.Tensor:
        a = net(x.double())
        for d in defenses:
            a = d.release_map(a)
        return a

    return release_map


def _l1(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.abs(b - a[:, None, :]).sum(-1)


def _l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return ((b - a[:, None, :]) ** 2).sum(-1)


def farthest_points(rows: torch.Tensor, m: int, seed: int) -> torch.Tensor:
    """Indices of m rows (N, D) chosen greedily far apart (each the farthest from those chosen,
    from a random first): the candidates of the canary game."""
    rng = np.random.default_rng(seed)
    sq = (rows**2).sum(1)  # squared distances as |a|^2 - 2 a.b + |b|^2: one matrix-vector each
    chosen = [int(rng.integers(len(rows)))]
    near = sq - 2 * rows @ rows[chosen[0]] + sq[chosen[0]]
    for _ in range(m - 1):
        chosen.append(int(near.argmax()))
        near = torch.minimum(near, sq - 2 * rows @ rows[chosen[-1]] + sq[chosen[-1]])
    return torch.as_tensor(chosen)


def audit_test_releases(run: Any, claim: ReleaseClaim | None, *, victims: int = 1000,
                        seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The optimal re-identification of test beats from one test-time release each, the client's
    weights known: each victim's release (the run's own defenses, :func:`attacks.runs.
    query_client`, fresh noise per release) is matched to the nearest candidate's noiseless
    release (L2 for Gaussian noise, L1 for Laplace: the likelihood-ratio test among the
    candidates; any distance without noise). Two games, m = k + 1 candidates each:

    * ``same_class`` (the top-level keys): the candidates ``k`` other test beats of the victim's
      class (the linkage game of the attacks, on releases the bounds hold for);
    * ``canaries``: the auditor's worst case among the test beats: m beats chosen far apart in
      release space (:func:`farthest_points`), the victim uniform among them, each victim a
      fresh release. Same-class beats lie close together, far below the 2C the claim allows for,
      so only this game can catch a mechanism whose noise is too small.

    With a formal claim, the bound of one release (exact here) beside each; a success whose
    lower limit exceeds it is a ``violation`` (a bug in the mechanism or its accounting)."""
    from attacks.metrics import LinkageScorer
    from attacks.runs import query_client

    x, y = run.x["test"], run.y["test"]
    if len(x) < max(AUDIT_KS) + 1:
        raise ValueError(f"audit: {run.path} has {len(x)} test beats; the test-time audit needs "
                         f"at least {max(AUDIT_KS) + 1}")
    rng = np.random.default_rng(seed)
    n = min(victims, len(x))
    pick = np.sort(rng.choice(len(x), n, replace=False))
    released = query_client(run, x[pick], training=False, seed=seed).double().flatten(1)
    with torch.no_grad():
        rmap = client_release_map(run)
        maps = torch.cat([rmap(c) for c in x.split(2048)]).flatten(1)
    scorer = LinkageScorer(x[pick], y[pick], pool_x=x, pool_y=y, seed=seed)
    laplace = bool(claim and claim.mechanism == "laplace") or any(
        d.options.get("mechanism") == "laplace" for d in run.config.defenses)
    distance, p = (_l1, 1.0) if laplace else (_l2, 2.0)
    game = {f"k{k}": scorer.match(released, maps[pick], maps, k=k, distance=distance)
            for k in AUDIT_KS}
    canaries: dict[str, Any] = {}
    far = farthest_points(maps, max(AUDIT_KS) + 1, seed)  # a greedy order: any prefix is one
    for k in AUDIT_KS:
        cand = far[: k + 1]
        who = torch.as_tensor(rng.integers(k + 1, size=n))
        sent = query_client(run, x[cand[who]], training=False, seed=seed + k).double()
        hits = (torch.cdist(sent.flatten(1), maps[cand], p=p).argmin(1) == who).sum()
        canaries[f"k{k}"] = {"accuracy": float(hits) / n, "chance": 1 / (k + 1), "n": n}
    noisy = claim if claim is not None and claim.test_noise else None
    attack = f"nearest noiseless release ({'L1' if laplace else 'L2'}), client weights known"
    out = {"scope": TEST_SCOPE, "victims": n, "releases": 1, "attack": attack,
           "success": {k: g["accuracy"] for k, g in game.items()},
           **game_bounds(game, noisy, 1.0, confidence=confidence, exact=True),
           "canaries": {"success": {k: g["accuracy"] for k, g in canaries.items()},
                        **game_bounds(canaries, noisy, 1.0, confidence=confidence, exact=True)}}
    out["violation"] = any(part.get(f"rero_bound_k{k}", {}).get("violation", False)
                           for part in (out, out["canaries"]) for k in AUDIT_KS)
    return out


def dfil_bound(run: Any, claim: ReleaseClaim, ids: np.ndarray, mse: np.ndarray | None,
               releases: float) -> dict[str, Any]:
    """The dFIL bound on the per-coordinate MSE of an unbiased reconstruction of the training
    beats ``ids`` (the strongest attack's victims) from ``releases`` Gaussian releases, the
    Jacobian of the final client's clipped map at each beat; beside the measured MSE."""
    x = run.x["train"][torch.as_tensor(ids)]
    fil = dfil(client_release_map(run), x, claim.noise_scale, releases=releases).detach().numpy()
    bound = 1 / fil
    out = {"releases": releases, "sigma": claim.noise_scale,
           "bound_median": float(np.median(bound)), "bound_mean": float(bound.mean()),
           "dfil_median": float(np.median(fil)), "n": len(ids),
           "scope": "unbiased reconstructions only (an attacker with a prior can go below it); "
                    "the final client's Jacobian (the releases came from the clients of every "
                    "epoch): " + TRAIN_SCOPE}
    if mse is not None:
        out["measured_mse_median"] = float(np.median(mse))
        out["below_bound_fraction"] = float((mse < bound).mean())
    return out


def audit_run(run_dir: str | Path, *, victims: int = 1000, seed: int = 0,
              confidence: float = CONFIDENCE) -> dict[str, Any]:
    """The audit of a finished run (its ``attacks/strongest.json`` where there is one, and a
    test-time audit of its activation releases): the document ``splitpriv audit`` writes."""
    from attacks.runs import SHARED
    from splitpriv.io import read_json

    if not 0.5 <= confidence < 1:
        raise ValueError(f"audit: confidence must be in [0.5, 1), got {confidence}")
    run = SHARED.load(run_dir)
    result = read_json(run.path / "result.json")
    claim = ReleaseClaim.of(result)
    claims = [PrivacyClaim.from_dict(c) for c in result.get("defenses", [])]
    audit: dict[str, Any] = {
        "confidence": confidence,
        "claims": [{"name": c.name, "formal": c.formal, "epsilon": c.epsilon, "delta": c.delta,
                    "scope": c.scope} for c in claims],
        "release_claim": claim.as_dict() if claim else None,
        "scope": {"train": TRAIN_SCOPE, "test": TEST_SCOPE},
    }
    strongest_path = run.path / "attacks" / "strongest.json"
    if strongest_path.exists():
        doc = read_json(strongest_path)
        reid = doc["summary"]["reidentification"]
        audit["train"] = {game: {"attack": reid[game]["attack"], **game_bounds(
            reid[game], claim, float(reid[game].get("releases_mean") or 1),
            confidence=confidence, exact=False)} for game in ("across", "within")}
        releases = float(reid["across"].get("releases_mean") or 1)
        across = audit["train"]["across"]
        audit["epsilon_lower"] = across["epsilon_lower"]
        for k in AUDIT_KS:
            audit[f"rero_bound_k{k}"] = across.get(f"rero_bound_k{k}")
        if claim is not None and claim.mechanism == "gaussian":
            scores = np.load(run.path / "attacks" / doc["scores_file"])
            some = np.random.default_rng(seed).permutation(len(scores["ids"]))[:DFIL_BEATS]
            mse = scores["mse"][some] if "mse" in scores else None
            audit["dfil_mse_bound"] = dfil_bound(run, claim, scores["ids"][some], mse, releases)
    else:
        audit["train"] = None
        audit["epsilon_lower"] = None
        audit["note"] = (f"{strongest_path} not found: run `splitpriv attack strongest --run "
                         f"{run.path}` for the training-release audit")
    audit.setdefault("dfil_mse_bound", None)
    audit.setdefault("rero_bound_k10", None)
    audit.setdefault("rero_bound_k100", None)
    audit["test_time"] = audit_test_releases(run, claim, victims=victims, seed=seed,
                                         confidence=confidence)
    audit["violation"] = audit["test_time"]["violation"]
    return {"run": str(run.path), "audit": audit}


def audit_cli(run_dir: str, *, aux: str | None = None, out: str | None = None,
              victims: int = 1000, seed: int = 0, confidence: float = CONFIDENCE,
              echo: bool = True) -> dict[str, Any]:
    """``splitpriv audit``: (with ``aux``, first the strongest attack where the run has none)
    the audit of a run, written atomically to ``out`` (default DIR/attacks/audit.json) and
    summarised on stdout. A violated exact bound is reported, not raised."""
    from attacks.runs import check_aux_spec
    from splitpriv.io import write_json

    if victims < 1:
        raise ValueError(f"--victims: must be >= 1, got {victims}")
    if not 0.5 <= confidence < 1:
        raise ValueError(f"--confidence: must be in [0.5, 1), got {confidence}")
    check_aux_spec(aux)
    path = Path(run_dir)
    if aux is not None and not (path / "attacks" / "strongest.json").exists():
        from attacks.cli import run_attack

        run_attack("strongest", path, aux, {"seed": seed, "threads": 1})
    doc = audit_run(path, victims=victims, seed=seed, confidence=confidence)
    target = Path(out) if out else path / "attacks" / "audit.json"
    write_json(target, doc)
    if echo:
        print(format_audit(doc, target))
    return doc


def format_audit(doc: dict[str, Any], target: Path) -> str:
    """A few lines: each game's empirical epsilon lower bounds, and the bounds beside them."""
    a = doc["audit"]
    lines = [f"audit of {doc['run']} -> {target} (confidence {a['confidence']})"]

    def eps(e: dict[str, Any]) -> str:
        return (f"{e['epsilon']:.3g} (Gaussian curve: {e['epsilon_gdp']:.3g}; success "
                f"{e['success']:.3f}, largest showable {e['largest']:.3g})")

    for where, part in (("training releases", a["epsilon_lower"]),
                        ("test release", a["test_time"]["epsilon_lower"])):
        for k, e in (part or {}).items():
            lines.append(f"  epsilon lower bound, {where}, {k}: {eps(e)}")
    for where, part in (("training", a), ("test", a["test_time"])):
        for k in AUDIT_KS:
            r = part.get(f"rero_bound_k{k}")
            if r:
                lines.append(f"  robustness bound, {where}, k{k}: success {r['success']:.3f} "
                             f"<= {r['bound']:.3f}" + (" EXCEEDED" if r["exceeded"] else ""))
    if a["dfil_mse_bound"]:
        d = a["dfil_mse_bound"]
        lines.append(f"  dFIL MSE bound (median) {d['bound_median']:.3g}, measured "
                     f"{d.get('measured_mse_median', math.nan):.3g}")
    if a["violation"]:
        lines.append("  VIOLATION: the test-time success exceeds the claim's exact bound (a bug "
                     "in the mechanism or its accounting)")
    return "\n".join(lines)


__all__ = ["AUDIT_KS", "CONFIDENCE", "ReleaseClaim", "audit_cli", "audit_columns", "audit_run",
           "clopper_pearson_low", "dfil", "epsilon_lower", "gdp_mu_lower", "gdp_success_bound",
           "mary_epsilon_lower", "mary_success_bound", "one_run_epsilon_lower", "one_run_p_value",
           "audit_test_releases"]
