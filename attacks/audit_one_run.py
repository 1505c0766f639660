"""The one-run audit of client DP-SGD's claim (Steinke, Nasr & Jagielski, "Privacy auditing
with one (1) training run", NeurIPS 2023, Alg. 1 and Thm. 3.1).

The game: m canaries, each included in training independently with probability 1/2 (seeded);
one training run with the run's own config (its DP-SGD, its data, its epochs) plus the included
canaries; a score per canary; the auditor guesses "in" for the ``k+`` highest scores and "out"
for the ``k-`` lowest and abstains on the rest; v of the r = k+ + k- guesses right give, by
:func:`attacks.audit.one_run_epsilon_lower`, the largest epsilon rejected at the stated
confidence. Under (eps, delta)-DP of what the score reads, v can exceed r e^eps / (1 + e^eps)
only by chance, so the bound is sound for any score that reads nothing else.

Two kinds of canary (``kind``):

- ``gradient`` (the default; :class:`GradientCanaries`): white-box audit of the mechanism
  (Steinke et al. 2023 Sec. 7; Nasr et al., USENIX Security 2023). A canary is a gradient of
  norm exactly the clipping norm, added to the clipped sum of the steps it is drawn in (at the
  accountant's rate q, or once per epoch); the score reads every step's noisy sum, which DP-SGD's
  claim covers (the weights are their post-processing). It audits the clipping, the noise and
  the accounting as implemented (a noise secretly 10x too small is caught), not which gradients
  real beats can produce.
- ``input``: canary beats among the training beats, scored from the client's weights (below);
  the black-box question the claim is about, but no score here has power against it.

Power of gradient canaries, measured (docs/audits.md; 400 canaries, 80 guesses, 300 training
beats, 20 epochs; 80 of 80 right would show 3.25): no noise, 80 of 80 (3.25); claimed epsilon 4,
57 (.48); claimed 1, 47 (0); claimed 1 with the noise secretly divided by 10, 79 (2.78). Default
budget (compare_defenses' dpsgd-e4-s0, claim 3.99, 1,000 canaries, 200 guesses, ~3-5 min): .68
(144 of 200); with the noise secretly divided by 10, 4.17 (200 of 200, the most 200 guesses
show): caught.

Input canaries: i.i.d. Gaussian inputs of std :data:`CANARY_AMPLITUDE` = 5 (real beats lie in
[0, 1]) with uniform random labels, each a patient of its own. Out of distribution and large,
each one's gradient is far above the clipping norm (so it enters every step it is drawn in at
the full norm C) and points away from the real beats' gradients. (Test beats with a wrong label,
the first design, were found by no score, not even through the trained server: AUC .53 without
noise.) Their score (white-box "gradient alignment", Nasr et al. 2023): ``-<w_T - w_0, g_i> /
|g_i|``, w_0 and w_T the client's initial and final weights (flattened), g_i canary i's loss
gradient with respect to the client's weights at w_0, through the server (and head) at their
*initial* weights: data-independent, so the score is a post-processing of w_T and its bound is
compared with the claim. A diagnostic (``joint``; no claim to compare with) sums the alignment
over the epochs through each epoch's *trained* server, ``sum_t -<w_t+1 - w_t, g_i(w_t;
server_t)> / |g_i|``: a bound on the client's and server's weights released together. Measured
(same small setting): without noise the diagnostic finds them (79 of 80, AUC .957, 2.78), the
client-only score does not (51, AUC .54, .16), nor did any other client-only score tried (AUC
.46-.59); at the default budget, ``--canaries input`` on compare_defenses' dpsgd-e4-s0 (claim
3.99): the claim's bound 0 (90 of 200, AUC .475), the diagnostic 1.06. The input-canary audit is
sound; a 0 from it says the canaries were not found, not that the claim is tight.

Shapes: canary beats (m, 1, 128), labels (m,), input canaries' gradients (m, P) and gradient
canaries' directions (m, P), P the client's parameters; projections (T, m) over T steps.
Cost: one training run of the audited config (plus, for input canaries, m per-canary gradients
at every epoch's weights, vectorised; for gradient canaries, one (m, P) product per step).
"""

from __future__ import annotations

import copy
import dataclasses
import itertools
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.audit import CONFIDENCE, one_run_epsilon_lower
from splitpriv.run import TrainConfig

#: the scope of the one-run audit's bound
ONE_RUN_SCOPE = ("client DP-SGD's weight claim: canaries (Gaussian inputs of std 5, random "
                 "labels; the auditor chooses the inputs and sees only weights) inserted with "
                 "probability 1/2 into a fresh training run of the run's config; the score reads "
                 "only the client's initial and final weights and the canaries")
#: the scope of the diagnostic bound whose score also reads the server
JOINT_SCOPE = ("the client's and the server's weights after every epoch, together (no claim "
               "covers this release): the same canaries, a score through the trained server")
#: the canaries an audit may use: in the clipped gradient sums, or among the training beats
CANARY_KINDS = ("gradient", "input")
#: how an included gradient canary is drawn into steps
SAMPLINGS = ("poisson", "shuffle")
#: the scope of the gradient-canary audit's bound
GRADIENT_SCOPE = ("client DP-SGD's mechanism: gradient canaries of norm C (random directions "
                  "in the client's parameter space), each included with probability 1/2 and "
                  "drawn into steps by the sampling stated; the score reads every step's noisy "
                  "gradient sum (all iterates, which the claim covers; the weights are their "
                  "post-processing); audits the clipping, the noise and the accounting, not "
                  "which gradients a beat can produce")
#: the gradient-canary score, in words
GRADIENT_SCORE = ("log-likelihood ratio of in against out: one draw's l = mu z - mu^2/2, z "
                  "the noisy sum's projection on the canary's direction, detrended and scaled "
                  "by its robust spread, mu = 1 / spread; poisson: sum over steps of log(1 - q "
                  "+ q e^l), shuffle: sum over epochs of log mean over the epoch's steps of e^l")
#: principal components of the noisy sums taken out before projecting (at most P / 20)
PCS = 20
#: the most numbers (steps x client parameters) of noisy sums kept for that (400 MB as float32)
MAX_KEPT = 100_000_000
#: std of the canaries' Gaussian inputs
CANARY_AMPLITUDE = 5.0
#: record number of canary i (each its own patient): CANARY_RECORDS + i
CANARY_RECORDS = 100_000


def _bad(msg: str) -> ValueError:
    return ValueError(f"one-run audit: {msg}")


def _check_choices(kind: str, sampling: str, flag: str = "") -> None:
    """The canary kind and sampling, named as arguments (``flag`` "--": as options)."""
    if kind not in CANARY_KINDS:
        raise _bad(f"{flag}canaries must be one of {CANARY_KINDS}, got {kind!r}")
    if sampling not in SAMPLINGS:
        raise _bad(f"{flag}sampling must be one of {SAMPLINGS}, got {sampling!r}")


def guess_and_bound(scores: np.ndarray, included: np.ndarray, guesses: int, *,
                    delta: float, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Guess "in" for the ``guesses // 2`` highest ``scores`` (m,), "out" for the ``guesses -
    guesses // 2`` lowest, abstain on the rest; ``included`` (m,) bool is the truth. Returns
    r, v, the lower bound on epsilon and ``largest``, the bound every guess right would give."""
    m = len(scores)
    if not 1 <= guesses <= m:
        raise _bad(f"guesses must be in 1..{m} (the canaries), got {guesses}")
    order = np.argsort(scores, kind="stable")
    k_in = guesses // 2
    top, bottom = order[m - k_in:] if k_in else order[:0], order[:guesses - k_in]
    v = int(included[top].sum() + (~included[bottom]).sum())
    return {"m": m, "r": guesses, "v": v, "k_in": k_in, "k_out": guesses - k_in,
            "epsilon_lower": one_run_epsilon_lower(m, guesses, v, delta=delta,
                                                   confidence=confidence),
            "largest": one_run_epsilon_lower(m, guesses, guesses, delta=delta,
                                             confidence=confidence),
            "delta": delta, "confidence": confidence}


def canary_gradients(models: Any, x: torch.Tensor, y: torch.Tensor,
                     at: dict[str, dict[str, torch.Tensor]] | None = None) -> torch.Tensor:
    """Each canary's loss gradient with respect to the client's weights, through client, server
    and head (eval mode) at the parameters ``at`` gives per module (``{"client": {name:
    tensor}, "server": ...}``; a module not named: its own), vectorised by ``torch.func``:
    (m, 1, 128), (m,) -> (m, P). ``models`` must be hook-free (not wrapped by Opacus)."""
    from torch.func import functional_call, grad, vmap

    from splitpriv.parties import cross_entropy

    nets = models.modules()
    params = {k: {n: p.detach() for n, p in net.named_parameters()} | (at or {}).get(k, {})
              for k, net in nets.items()}
    for net in nets.values():
        net.eval()

    def loss(client: dict[str, torch.Tensor], xi: torch.Tensor, yi: torch.Tensor
             ) -> torch.Tensor:
        out = functional_call(nets["client"], client, (xi.unsqueeze(0),))
        for k in ("server", "head"):
            if k in nets:
                out = functional_call(nets[k], params[k], (out,))
        return cross_entropy(out, yi.unsqueeze(0))

    per = vmap(grad(loss), in_dims=(None, 0, 0))
    rows = [per(params["client"], xc, yc) for xc, yc in zip(x.split(250), y.split(250),
                                                             strict=True)]
    return torch.cat([torch.cat([g[n].reshape(len(g[n]), -1) for n in params["client"]], 1)
                      for g in rows])


def _auc(scores: np.ndarray, included: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(included, scores)) if 0 < included.sum() < len(included) \
        else math.nan


def one_run_audit(config: TrainConfig, *, canaries: int, guesses: int | None = None,
                  seed: int = 0, confidence: float = CONFIDENCE, kind: str = "gradient",
                  sampling: str = "poisson", progress: bool = False) -> dict[str, Any]:
    """Train the canary run of ``config`` (which must hold a defense whose claim covers the
    client's weights: ``dpsgd``, ``dpsgd-patient``) and audit it (module docstring).
    ``kind``: ``gradient`` canaries in the clipped sum (:class:`GradientCanaries`, sampled into
    steps by ``sampling``) or ``input`` canaries among the training beats. ``guesses``: r, the
    canaries guessed (default m / 5, half each way), fixed before the run (choosing r after
    seeing the scores would void the confidence). ``progress``: a bar over the canary run's
    epochs. Returns the audit document: the claim, the guesses, the bound, the scores'
    separation and the seconds it took."""
    from splitpriv.io import resolve_device
    from splitpriv.run import build_defenses, build_run_data

    r = canaries // 5 if guesses is None else guesses
    if canaries < 2:
        raise _bad(f"--one-run needs at least 2 canaries, got {canaries}")
    if not 1 <= r <= canaries:
        raise _bad(f"guesses must be in 1..{canaries} (the canaries), got {r}")
    if not 0.5 <= confidence < 1:
        raise _bad(f"confidence must be in [0.5, 1), got {confidence}")
    _check_choices(kind, sampling)
    defenses = build_defenses(config)
    private = [d for d in defenses if d.weights_private]
    if not private:
        named = "+".join(map(str, config.defenses)) or "none"
        raise _bad(f"the run's defenses ({named}) make no claim on the client's weights (train "
                   "with dpsgd); nothing to audit")
    t0 = time.perf_counter()
    device = resolve_device(config.device)
    data = build_run_data(config, device)
    rng = np.random.default_rng(seed)
    delta = float(private[0].config.delta or 0.0)  # the claim's delta, set before training
    if kind == "gradient":
        included = rng.random(canaries) < 0.5
        audit = _gradient_audit(config, defenses, private[0], data, included, sampling, rng,
                                progress)
    else:
        x_can, y_can = canary_beats(rng, canaries, data.n_classes, device, data.input_shape)
        included = rng.random(canaries) < 0.5
        audit = _input_audit(config, defenses, data, included, x_can, y_can, r,
                             confidence=confidence, delta=delta, progress=progress)
    scores = audit.pop("scores")
    claim = private[0].report()
    return {
        "kind": kind, "scope": audit.pop("scope"),
        "claim": {"name": claim.name, "epsilon": claim.epsilon, "delta": claim.delta,
                  "details": claim.details},
        **guess_and_bound(scores, included, r, delta=delta, confidence=confidence),
        "included": int(included.sum()), "seed": seed, **_separation(scores, included),
        **audit, "epochs": config.epochs, "n_train": len(data.y_train),
        "seconds": time.perf_counter() - t0,
    }


def _train(config: TrainConfig, defenses: list[Any], data: Any, after_epoch: Any = None, *,
           progress: bool = False) -> tuple[Any, list[float], float]:
    """One training run of ``config`` on ``data`` with ``defenses`` (prepared here): the
    models, each epoch's training loss and the seconds; ``after_epoch(models)`` after each and
    before the first epoch; a progress bar over the epochs if ``progress``."""
    from tqdm.auto import tqdm

    from splitpriv.fast import fast_kernels
    from splitpriv.io import torch_threads
    from splitpriv.run import build_run_models, prepare_defenses, resolve_topology
    from splitpriv.trainer import SplitTrainer

    prepare_defenses(defenses, data, config)
    device = data.x_train.device
    models = build_run_models(config, resolve_topology(config, defenses), device)
    if after_epoch is not None:
        after_epoch(models)
    t1 = time.perf_counter()
    losses = []
    with torch_threads(config.threads), fast_kernels(config.fast):
        trainer = SplitTrainer(models, data.x_train, data.y_train, lr=config.lr,
                               batch_size=config.batch_size, seed=config.seed,
                               defenses=defenses)
        for epoch in tqdm(range(1, config.epochs + 1), desc="canary run", unit="epoch",
                          disable=not progress):
            losses.append(trainer.train_epochs(epoch)[0].loss)
            if after_epoch is not None:
                after_epoch(models)
    return models, losses, time.perf_counter() - t1


def _gradient_audit(config: TrainConfig, defenses: list[Any], private: Any, data: Any,
                    included: np.ndarray, sampling: str, rng: np.random.Generator,
                    progress: bool) -> dict[str, Any]:
    """The canary run with :class:`GradientCanaries` in ``private``'s clipped sums."""
    steps = config.epochs * math.ceil(len(data.y_train) / private.batch_size)
    can = GradientCanaries(included, sampling, rng, steps=steps)
    private.optimizer_class = canaried(type(private).optimizer_class, can, private)
    _, losses, seconds = _train(config, defenses, data, progress=progress)
    return {"scope": GRADIENT_SCOPE, "scores": can.scores(), "sampling": sampling,
            "sample_rate": can.rate, "steps": can.step, "window": can.window(),
            "pcs_removed": can.pcs_used,
            "score": GRADIENT_SCORE, "final_train_loss": losses[-1], "train_seconds": seconds}


def _input_audit(config: TrainConfig, defenses: list[Any], data: Any, included: np.ndarray,
                 x_can: torch.Tensor, y_can: torch.Tensor, r: int, *, confidence: float,
                 delta: float, progress: bool) -> dict[str, Any]:
    """The canary run with the included input canaries among the training beats: the
    client-only score (the claim's) and the joint diagnostic."""
    inc = np.flatnonzero(included)
    train = dataclasses.replace(
        data, x_train=torch.cat([data.x_train, x_can[torch.as_tensor(inc)]]),
        y_train=torch.cat([data.y_train, y_can[torch.as_tensor(inc)]]),
        # each canary a patient of its own (dpsgd-patient), in no pool
        record_train=np.concatenate([data.record_train,
                                     (CANARY_RECORDS + inc).astype(data.record_train.dtype)]),
        pool_idx_train=np.concatenate([data.pool_idx_train, -1 - inc]))
    states: list[dict[str, dict[str, torch.Tensor]]] = []
    initial: list[Any] = []

    def keep(models: Any) -> None:
        if not initial:
            initial.append(copy.deepcopy(models))  # hook-free (Opacus wraps it when attached)
        states.append(_state(models))  # every module's parameters after each epoch

    from splitpriv.io import torch_threads

    _, losses, seconds = _train(config, defenses, train, keep, progress=progress)
    with torch_threads(config.threads):
        client_scores = _alignment(initial[0], x_can, y_can, [states[0], states[-1]], ())
        joint_scores = _alignment(initial[0], x_can, y_can, states, ("server", "head"))
    joint = guess_and_bound(joint_scores, included, r, delta=delta, confidence=confidence)
    return {"scope": ONE_RUN_SCOPE, "scores": client_scores,
            "canary_amplitude": CANARY_AMPLITUDE,
            "score": "-<w_T - w_0, g_i(w_0)> / |g_i| (client weights; server and head initial)",
            "joint": {"scope": JOINT_SCOPE, **joint, **_separation(joint_scores, included),
                      "score": "sum over epochs t of -<w_t+1 - w_t, g_i(w_t; server_t)> / |g_i|"},
            "final_train_loss": losses[-1], "train_seconds": seconds}


def canary_beats(rng: np.random.Generator, m: int, n_classes: int, device: torch.device,
                 input_shape: tuple[int, ...] = (1, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """m canaries: i.i.d. Gaussian inputs of std :data:`CANARY_AMPLITUDE` (real beats and the
    digits' pixels lie in [0, 1]) of the run's ``input_shape`` (C, *spatial) with uniform random
    labels 0..n_classes-1: (m, *input_shape), (m,)."""
    x = CANARY_AMPLITUDE * rng.standard_normal((m, *input_shape))
    y = rng.integers(0, n_classes, size=m)
    return (torch.as_tensor(x, dtype=torch.float32, device=device),
            torch.as_tensor(y, device=device))


class GradientCanaries:
    """m gradient canaries in the clipped sums of client DP-SGD (white-box, all iterates;
    Steinke et al. 2023 Sec. 7, Nasr et al. 2023): canary i is a vector ``C u_i`` of norm
    exactly the clipping norm C, u_i a random unit direction in the client's parameter space
    (P coordinates; drawn at the first step), the gradient of a training unit the auditor
    designed. An included canary enters a step as one more clipped per-unit gradient: with
    probability q at every step, q the accountant's sample rate (``poisson``: what the claim
    accounts), or once per epoch at a uniform random step (``shuffle``: how the trainer draws
    beats). Then the step's noise is drawn as usual. What is read: every step's noisy sum
    ``n_t`` (P,), projected on each direction: ``s_ti = <n_t, u_i> / C``.

    The real beats' clipped gradients add to every projection; two output-only steps take most
    of them out before projecting (measured at the default budget with a tenth of the noise:
    AUC .917 without, .995 with): each coordinate's moving mean over :meth:`window` steps is
    subtracted (their slow drift; only when the window holds under 1/20 of a canary's expected
    draws), and so are the ``pcs`` leading principal components of the T detrended sums (their
    fluctuation lies in a few directions; the noise and each canary spread over all P). The sums
    are kept for this only while T P <= :data:`MAX_KEPT` (else projections alone: ``pcs_used``
    0).

    Score: the log-likelihood ratio of "in" against "out" as if the projections were the
    canary's draws plus independent Gaussian noise. One draw's ratio is ``l_ti = mu z_ti -
    mu^2 / 2``, ``z_ti`` being the cleaned projection divided by its robust (MAD) spread, and
    ``mu = 1 / spread`` (a draw adds 1 to ``s``). ``poisson``: ``sum_t log(1 - q + q exp(l_ti))``;
    ``shuffle``: per epoch, the log of the mean of ``exp(l_ti)`` over its steps, summed over
    epochs. The score reads the noisy sums only, so the bound is sound whatever the real beats'
    gradients do to it (they can only cost power).

    Shapes: directions (m, P); kept sums (T, P); projections (T, m); :meth:`scores` (m,)."""

    def __init__(self, included: np.ndarray, sampling: str, rng: np.random.Generator, *,
                 steps: int = 0, pcs: int = PCS) -> None:
        self.included = np.asarray(included, bool)
        self.planned_steps = steps  # T, known before the run (to decide whether sums are kept)
        self.pcs = pcs
        self.pcs_used = 0
        self.sampling = sampling
        self.rng = rng
        self.rate = 0.0
        self.steps_per_epoch = 1
        self.step = 0
        self.directions: torch.Tensor | None = None
        self._slot: np.ndarray | None = None
        self._seen: list[np.ndarray] = []
        self._sums: list[np.ndarray] | None = None

    def window(self) -> int:
        """The detrending window: the largest odd W with q W <= 1/20 (0 when below 3)."""
        w = int(0.05 / self.rate) if self.rate > 0 else 0
        w -= 1 - w % 2
        return w if w >= 3 else 0

    def _drawn(self) -> np.ndarray:
        m = len(self.included)
        if self.sampling == "poisson":
            return self.included & (self.rng.random(m) < self.rate)
        within = self.step % self.steps_per_epoch
        if within == 0 or self._slot is None:
            self._slot = self.rng.integers(0, self.steps_per_epoch, size=m)
        return self.included & (self._slot == within)

    def inject(self, params: list[torch.Tensor], clip: float) -> None:
        """Add this step's drawn canaries to every parameter's clipped sum ``summed_grad``."""
        if self.directions is None:
            n = sum(p.numel() for p in params)
            u = torch.as_tensor(self.rng.standard_normal((len(self.included), n)),
                                dtype=torch.float32)
            self.directions = (u / u.norm(dim=1, keepdim=True)).to(params[0].device)
            self._sums = [] if self.pcs and 0 < self.planned_steps * n <= MAX_KEPT else None
        drawn = torch.as_tensor(self._drawn(), device=self.directions.device)
        add = clip * self.directions[drawn].sum(0)
        for p, part in zip(params, add.split([p.numel() for p in params]), strict=True):
            p.summed_grad += part.view_as(p.summed_grad)  # type: ignore[attr-defined]

    def observe(self, params: list[torch.Tensor], clip: float) -> None:
        """Project the step's noisy sum (``p.grad`` before the optimizer scales it)."""
        assert self.directions is not None
        noisy = torch.cat([p.grad.reshape(-1) for p in params]) / clip  # type: ignore[union-attr]
        if self._sums is not None:
            self._sums.append(noisy.cpu().numpy())
        else:
            self._seen.append((self.directions @ noisy).cpu().numpy())
        self.step += 1

    def projections(self) -> np.ndarray:
        """The cleaned projections (class docstring): (T, m)."""
        from scipy.ndimage import uniform_filter1d
        from sklearn.utils.extmath import randomized_svd

        w = self.window()
        if self._sums is None:
            s = np.stack(self._seen).astype(np.float64)
            return s - uniform_filter1d(s, w, axis=0, mode="nearest") if w else s
        assert self.directions is not None
        g = np.stack(self._sums).astype(np.float64)  # (T, P)
        if w:
            g -= uniform_filter1d(g, w, axis=0, mode="nearest")
        self.pcs_used = min(self.pcs, g.shape[1] // 20, len(g) - 1)
        if self.pcs_used > 0:
            _, _, vt = randomized_svd(g - g.mean(0), self.pcs_used, random_state=0)
            g -= (g @ vt.T) @ vt
        return g @ self.directions.cpu().numpy().astype(np.float64).T

    def scores(self) -> np.ndarray:
        """Each canary's log-likelihood ratio of "in" against "out" (class docstring): (m,)."""
        from scipy.special import logsumexp

        z = self.projections()
        spread = 1.4826 * float(np.median(np.abs(z - np.median(z)))) or 1e-12
        llr = (z - 0.5) / spread**2  # one draw's log-likelihood ratio, mu z' - mu^2 / 2
        if self.sampling == "poisson":
            q = min(self.rate, 1 - 1e-12)
            return np.logaddexp(math.log1p(-q), math.log(q) + llr).sum(0)
        # shuffle: drawn at exactly one of an epoch's steps, each equally likely
        epochs = [llr[i:i + self.steps_per_epoch]
                  for i in range(0, len(llr), self.steps_per_epoch)]
        return sum(logsumexp(e, axis=0) - math.log(len(e)) for e in epochs)


def canaried(base: type[Any], canaries: GradientCanaries, defense: Any) -> type[Any]:
    """``base`` (an Opacus ``DPOptimizer`` class) with ``canaries`` added to each step's clipped
    sum before its noise and read after it; q and the steps per epoch from ``defense``."""

    class Canaried(base):  # type: ignore[misc, valid-type]
        def add_noise(self) -> None:
            canaries.rate = float(defense.sample_rate)
            canaries.steps_per_epoch = int(defense.steps_per_epoch)
            canaries.inject(self.params, self.max_grad_norm)
            super().add_noise()
            canaries.observe(self.params, self.max_grad_norm)

    Canaried.__name__ = f"Canaried{base.__name__}"
    return Canaried


def _state(models: Any) -> dict[str, dict[str, torch.Tensor]]:
    return {k: {n: p.detach().clone() for n, p in net.named_parameters()}
            for k, net in models.modules().items()}


def _alignment(initial: Any, x: torch.Tensor, y: torch.Tensor,
               states: list[dict[str, dict[str, torch.Tensor]]], moving: tuple[str, ...]
               ) -> np.ndarray:
    """Sum over consecutive ``states`` of ``-<w_t+1 - w_t, g_i> / |g_i|``, w the client's
    weights and g_i canary i's gradient at the client's w_t, through the modules in ``moving``
    at state t and the others at their initial weights: (m,)."""
    total = torch.zeros(len(y), device=x.device)
    for now, after in itertools.pairwise(states):
        g = canary_gradients(initial, x, y, {k: now[k] for k in ("client", *moving) if k in now})
        step = torch.cat([(after["client"][n] - now["client"][n]).reshape(-1)
                          for n in now["client"]])
        total -= (g @ step) / g.norm(dim=1).clamp_min(1e-12)
    return total.cpu().numpy()


def _separation(scores: np.ndarray, included: np.ndarray) -> dict[str, float]:
    """The scores' means in and out and their AUC: after the fact, a diagnostic of the score's
    power (not part of the bound)."""
    return {"score_mean_in": float(scores[included].mean()) if included.any() else math.nan,
            "score_mean_out": float(scores[~included].mean()) if (~included).any() else math.nan,
            "score_auc": _auc(scores, included)}


def one_run_cli(run_dir: str, *, canaries: int, guesses: int | None = None,
                out: str | None = None, seed: int = 0, confidence: float = CONFIDENCE,
                kind: str = "gradient", sampling: str = "poisson", echo: bool = True
                ) -> dict[str, Any]:
    """``splitpriv audit --run DIR --one-run M``: the one-run audit of the run's config (a fresh
    canary run: the run's own weights are not used), written atomically to ``out`` (default
    DIR/attacks/audit_one_run.json) and summarised on stdout."""
    from attacks.runs import check_run_dir
    from splitpriv.data import missing_record_files
    from splitpriv.io import write_json

    if canaries < 2:
        raise _bad(f"--one-run needs at least 2 canaries, got {canaries}")
    _check_choices(kind, sampling, flag="--")  # before the run directory is read
    path = check_run_dir(run_dir)
    config = TrainConfig.load(path / "config.json")
    records = (config.mitdb_dir if config.mitdb_dir and not missing_record_files(config.mitdb_dir)
               else None)  # the records named where they are here, else the local ones
    config = dataclasses.replace(config, mitdb_dir=records, cache_dir=None)
    a = one_run_audit(config, canaries=canaries, guesses=guesses, seed=seed,
                      confidence=confidence, kind=kind, sampling=sampling, progress=echo)
    doc = {"run": str(path), "one_run": a}
    target = Path(out) if out else path / "attacks" / "audit_one_run.json"
    write_json(target, doc)
    if echo:
        print(f"one-run audit of {path} -> {target}: {a['v']} of {a['r']} guesses right among "
              f"{a['m']} {kind} canaries: epsilon >= {a['epsilon_lower']:.3g} (confidence "
              f"{a['confidence']}; largest showable {a['largest']:.3g}) beside the claim "
              f"{a['claim']['epsilon']}; score AUC {a['score_auc']:.3f}; {a['seconds']:.1f} s")
        j = a.get("joint")
        if j is None:
            return doc
        print(f"  diagnostic, client and server weights together (no claim): {j['v']} of "
              f"{j['r']} right: epsilon >= {j['epsilon_lower']:.3g}; score AUC "
              f"{j['score_auc']:.3f}")
    return doc


__all__ = ["CANARY_AMPLITUDE", "CANARY_KINDS", "CANARY_RECORDS", "GRADIENT_SCOPE", "JOINT_SCOPE",
           "ONE_RUN_SCOPE", "SAMPLINGS", "GradientCanaries", "canaried", "canary_beats",
           "canary_gradients", "guess_and_bound", "one_run_audit", "one_run_cli"]
