"""The one-run audit of client DP-SGD's weight claim (Steinke, Nasr & Jagielski, "Privacy
auditing with one (1) training run", NeurIPS 2023, Alg. 1 and Thm. 3.1).

The game: m canaries, each included in training independently with probability 1/2 (seeded);
one training run with the run's own config (its DP-SGD, its data, its epochs) on the real
training beats plus the included canaries; a score per canary; the auditor guesses "in" for the
``k+`` highest scores and "out" for the ``k-`` lowest and abstains on the rest; v of the r =
k+ + k- guesses right give, by :func:`attacks.audit.one_run_epsilon_lower`, the largest epsilon
rejected at the stated confidence. Under (eps, delta)-DP of what the score reads, v can exceed
r e^eps / (1 + e^eps) only by chance, so the bound is sound for any score that reads nothing
else.

Threat model (the usual one of DP-SGD audits, Nasr et al. 2023): the auditor chooses the
canaries' inputs and labels (white-box on inputs) and sees weights, never the training data.

Canaries: i.i.d. Gaussian inputs of std :data:`CANARY_AMPLITUDE` = 5 (real beats lie in [0, 1])
with uniform random labels, each a patient of its own. Out of distribution and large, each
one's gradient is far above the clipping norm (so it enters every step it is drawn in at the
full norm C) and points away from the real beats' gradients. (Test beats with a wrong label, the
first design, were found by no score, not even through the trained server: AUC .53 without
noise.)

Score of the claim (white-box "gradient alignment", Nasr et al. 2023 / Steinke et al. 2023 Sec.
7): canary i's score is ``-<w_T - w_0, g_i> / |g_i|``, w_0 and w_T the client's initial and
final weights (flattened, all of them), g_i the gradient of canary i's loss with respect to the
client's weights at w_0, through the server (and head) at their *initial* weights. Why this
score: the DP-SGD claim covers the client's weights only (the server's are trained on
unprotected activations and labels), so a sound audit of it must read nothing but the client's
weights and what is independent of the training data; the initial weights are drawn from the
run's seed before any data is seen, so g_i and w_0 are data-independent and the score is a
post-processing of w_T. The bound ``epsilon_lower`` is compared with the claim.

Diagnostic score (``joint``; no claim to compare with): the same alignment summed over the
epochs, ``sum_t -<w_t+1 - w_t, g_i(w_t; server_t)> / |g_i|``, the gradient taken through the
*trained* server of epoch t. It reads the server's weights after every epoch, so its bound is a
lower bound on the epsilon of the client's and the server's weights released together, which
no defense here claims; it shows where the canaries are.

Power, measured (docs/audits.md, 400 canaries, 80 guesses, 300 training beats, 20 epochs):
without noise the diagnostic finds the canaries (79 of 80 right, AUC .957, epsilon >= 2.78 of
the 3.26 80 guesses can show) but the client-only score does not (51 of 80, AUC .54, .16). The
diagnostic's power may come from the client's steps carrying the canary along its gradient
through the server as trained (a direction the client's weights alone do not give), from the
server having fitted the canary, or both; it cannot tell which. Tried and no
better (AUC .46-.59 without noise): the client-only alignment along the epochs' client weights
through the initial server; a proxy server trained on public test beats (with or without all
the canaries) along the client's checkpoints; the energy of the client's step in each canary's
gradient subspace (randomised range of its Jacobian, 2-32 directions, at w_0 and along the
epochs). At the default budget (1,000 canaries, 200 guesses; ``splitpriv audit --run
studies/out/compare_defenses/runs/dpsgd-e4-s0 --one-run 1000``, claim 3.99): the claim's bound
0 (90 of 200 right, AUC .475), the diagnostic 1.06 (159, AUC .665), 118 s; the same config with
noise multiplier 0: 0 (82, AUC .466) and 1.27 (166, AUC .749), 130 s. The audit of the claim
is sound; a 0 from it says the canaries were not found, not that the claim is tight.

Shapes: canary beats (m, 1, 128), labels (m,), gradients (m, P), P the client's parameters.
Cost: one training run of the audited config, plus m per-canary gradients at every epoch's
weights (vectorised; seconds to a minute).
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
#: std of the canaries' Gaussian inputs
CANARY_AMPLITUDE = 5.0
#: record number of canary i (each its own patient): CANARY_RECORDS + i
CANARY_RECORDS = 100_000


def _bad(msg: str) -> ValueError:
    return ValueError(f"one-run audit: {msg}")


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
                  seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Train the canary run of ``config`` (which must hold a defense whose claim covers the
    client's weights: ``dpsgd``, ``dpsgd-patient``) and audit it (module docstring).
    ``guesses``: r, the canaries guessed (default m / 5, half each way), fixed before the run
    (choosing r after seeing the scores would void the confidence). Returns the audit document:
    the claim, the guesses, the bound, the scores' separation and the seconds it took."""
    from splitpriv.fast import fast_kernels
    from splitpriv.io import resolve_device, torch_threads
    from splitpriv.run import (
        build_defenses,
        build_run_data,
        build_run_models,
        prepare_defenses,
        resolve_topology,
    )
    from splitpriv.trainer import SplitTrainer

    r = canaries // 5 if guesses is None else guesses
    if canaries < 2:
        raise _bad(f"--one-run needs at least 2 canaries, got {canaries}")
    if not 1 <= r <= canaries:
        raise _bad(f"guesses must be in 1..{canaries} (the canaries), got {r}")
    if not 0.5 <= confidence < 1:
        raise _bad(f"confidence must be in [0.5, 1), got {confidence}")
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
    x_can, y_can = canary_beats(rng, canaries, data.n_classes, device, data.input_shape)
    included = rng.random(canaries) < 0.5
    inc = np.flatnonzero(included)
    train = dataclasses.replace(
        data, x_train=torch.cat([data.x_train, x_can[torch.as_tensor(inc)]]),
        y_train=torch.cat([data.y_train, y_can[torch.as_tensor(inc)]]),
        # each canary a patient of its own (dpsgd-patient), in no pool
        record_train=np.concatenate([data.record_train,
                                     (CANARY_RECORDS + inc).astype(data.record_train.dtype)]),
        pool_idx_train=np.concatenate([data.pool_idx_train, -1 - inc]))
    prepare_defenses(defenses, train, config)
    models = build_run_models(config, resolve_topology(config, defenses), device)
    initial = copy.deepcopy(models)  # hook-free (Opacus wraps the client when attached)
    t1 = time.perf_counter()
    states = [_state(models)]  # every module's parameters after each epoch
    with torch_threads(config.threads):
        with fast_kernels(config.fast):
            trainer = SplitTrainer(models, train.x_train, train.y_train, lr=config.lr,
                                   batch_size=config.batch_size, seed=config.seed,
                                   defenses=defenses)
            losses = []
            for epoch in range(1, config.epochs + 1):
                losses.append(trainer.train_epochs(epoch)[0].loss)
                states.append(_state(models))
        train_seconds = time.perf_counter() - t1
        client_scores = _alignment(initial, x_can, y_can, [states[0], states[-1]], ())
        joint_scores = _alignment(initial, x_can, y_can, states, ("server", "head"))
    claim = private[0].report()
    delta = float(claim.delta or 0.0)
    joint = guess_and_bound(joint_scores, included, r, delta=delta, confidence=confidence)
    return {
        "scope": ONE_RUN_SCOPE, "claim": {"name": claim.name, "epsilon": claim.epsilon,
                                          "delta": claim.delta, "details": claim.details},
        **guess_and_bound(client_scores, included, r, delta=delta, confidence=confidence),
        "included": int(included.sum()), "seed": seed, "canary_amplitude": CANARY_AMPLITUDE,
        "score": "-<w_T - w_0, g_i(w_0)> / |g_i| (client weights; server and head initial)",
        **_separation(client_scores, included),
        "joint": {"scope": JOINT_SCOPE, **joint, **_separation(joint_scores, included),
                  "score": "sum over epochs t of -<w_t+1 - w_t, g_i(w_t; server_t)> / |g_i|"},
        "final_train_loss": losses[-1], "epochs": config.epochs,
        "n_train": len(data.y_train), "train_seconds": train_seconds,
        "seconds": time.perf_counter() - t0,
    }


def canary_beats(rng: np.random.Generator, m: int, n_classes: int, device: torch.device,
                 input_shape: tuple[int, ...] = (1, 128)) -> tuple[torch.Tensor, torch.Tensor]:
    """m canaries: i.i.d. Gaussian inputs of std :data:`CANARY_AMPLITUDE` (real beats and the
    digits' pixels lie in [0, 1]) of the run's ``input_shape`` (C, *spatial) with uniform random
    labels 0..n_classes-1: (m, *input_shape), (m,)."""
    x = CANARY_AMPLITUDE * rng.standard_normal((m, *input_shape))
    y = rng.integers(0, n_classes, size=m)
    return (torch.as_tensor(x, dtype=torch.float32, device=device),
            torch.as_tensor(y, device=device))


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
                echo: bool = True) -> dict[str, Any]:
    """``splitpriv audit --run DIR --one-run M``: the one-run audit of the run's config (a fresh
    canary run: the run's own weights are not used), written atomically to ``out`` (default
    DIR/attacks/audit_one_run.json) and summarised on stdout."""
    from attacks.runs import check_run_dir
    from splitpriv.data import missing_record_files
    from splitpriv.io import write_json

    if canaries < 2:
        raise _bad(f"--one-run needs at least 2 canaries, got {canaries}")
    path = check_run_dir(run_dir)
    config = TrainConfig.load(path / "config.json")
    records = (config.mitdb_dir if config.mitdb_dir and not missing_record_files(config.mitdb_dir)
               else None)  # the records named where they are here, else the local ones
    config = dataclasses.replace(config, mitdb_dir=records, cache_dir=None)
    a = one_run_audit(config, canaries=canaries, guesses=guesses, seed=seed,
                      confidence=confidence)
    doc = {"run": str(path), "one_run": a}
    target = Path(out) if out else path / "attacks" / "audit_one_run.json"
    write_json(target, doc)
    if echo:
        print(f"one-run audit of {path} -> {target}: {a['v']} of {a['r']} guesses right among "
              f"{a['m']} canaries: epsilon >= {a['epsilon_lower']:.3g} (confidence "
              f"{a['confidence']}; largest showable {a['largest']:.3g}) beside the claim "
              f"{a['claim']['epsilon']}; score AUC {a['score_auc']:.3f}; {a['seconds']:.1f} s")
        j = a["joint"]
        print(f"  diagnostic, client and server weights together (no claim): {j['v']} of "
              f"{j['r']} right: epsilon >= {j['epsilon_lower']:.3g}; score AUC "
              f"{j['score_auc']:.3f}")
    return doc


__all__ = ["CANARY_AMPLITUDE", "CANARY_RECORDS", "JOINT_SCOPE", "ONE_RUN_SCOPE", "canary_beats",
           "canary_gradients", "guess_and_bound", "one_run_audit", "one_run_cli"]
