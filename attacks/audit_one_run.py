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

Canaries: test beats (never training rows of the run) each given a fresh random *wrong* label
(the true label plus 1..C-1 mod C, uniformly): a mislabelled beat keeps a large loss through
training, so its clipped gradient keeps pulling the client's weights its own way, and its
gradient is far from the real beats' (which is what lets the weights carry it).

Score (white-box "gradient alignment", Nasr et al. 2023 / Steinke et al. 2023 Sec. 7): canary
i's score is ``-<w_T - w_0, g_i> / |g_i|``, w_0 and w_T the client's initial and final weights
(flattened, all of them), g_i the gradient of canary i's loss with respect to the client's
weights at w_0, through the server (and head) at their *initial* weights. Why this score: the
DP-SGD claim covers the client's weights only (the server's are trained on unprotected
activations and labels), so a sound audit must read nothing but the client's weights and public
data; the initial weights are drawn from the run's seed before any data is seen (public
randomness), so g_i and w_0 are data-independent and the score is a post-processing of w_T. A
descent step on an included canary moves the client by about ``-lr g_i`` (clipped, and rescaled
per coordinate by Adam), so included canaries score higher; an excluded canary's score is the
projection of the other beats' updates (and the noise) on its direction.

Power, measured (docs/audits.md): none. Without noise, on 300 training beats and 400 canaries,
the score's AUC is .47-.53 and the bound 0-.007; the client's conv layers keep little of any one
mislabelled beat (the server, trained without noise, fits it). The audit is sound; a 0 from it
says the canaries were not found, not that the claim is tight.

Shapes: canary beats (m, 1, 128), labels (m,), gradients (m, P), P the client's parameters.
Cost: one training run of the audited config (plus m per-beat gradients, seconds).
"""

from __future__ import annotations

import copy
import dataclasses
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.audit import CONFIDENCE, one_run_epsilon_lower
from splitpriv.run import TrainConfig

#: the scope of the one-run audit's bound
ONE_RUN_SCOPE = ("client DP-SGD's weight claim: canaries (test beats, wrong labels) inserted "
                 "with probability 1/2 into a fresh training run of the run's config; the score "
                 "reads only the client's initial and final weights and the canaries")


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


def canary_gradients(models: Any, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Each canary's loss gradient with respect to the client's weights, through the given
    (initial) client, server and head in eval mode: (m, 1, 128), (m,) -> (m, P)."""
    from splitpriv.parties import cross_entropy

    nets = [models.client, models.server] + ([models.head] if models.head is not None else [])
    for net in nets:
        net.eval()
    params = [p for p in models.client.parameters() if p.requires_grad]
    rows = []
    for xi, yi in zip(x, y, strict=True):
        out = xi.unsqueeze(0)
        for net in nets:
            out = net(out)
        grads = torch.autograd.grad(cross_entropy(out, yi.unsqueeze(0)), params)
        rows.append(torch.cat([g.reshape(-1) for g in grads]))
    return torch.stack(rows)


def _auc(scores: np.ndarray, included: np.ndarray) -> float:
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(included, scores)) if 0 < included.sum() < len(included) \
        else math.nan


def _flat(net: torch.nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in net.parameters() if p.requires_grad])


def one_run_audit(config: TrainConfig, *, canaries: int, guesses: int | None = None,
                  seed: int = 0, confidence: float = CONFIDENCE) -> dict[str, Any]:
    """Train the canary run of ``config`` (which must hold a defense whose claim covers the
    client's weights: ``dpsgd``, ``dpsgd-patient``) and audit it (module docstring).
    ``guesses``: r, the canaries guessed (default m / 5, half each way), fixed before the run
    (choosing r after seeing the scores would void the confidence). Returns the audit document:
    the claim, the guesses, the bound, the scores' separation and the seconds it took."""
    from splitpriv.data import protocol_prep
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
    if canaries > len(data.y_test):
        raise _bad(f"{canaries} canaries, but the run has {len(data.y_test)} test beats to draw "
                   "them from")
    rng = np.random.default_rng(seed)
    n_classes = len(protocol_prep(config.protocol, config.labels).classes)
    pick = torch.as_tensor(np.sort(rng.choice(len(data.y_test), canaries, replace=False)))
    x_can = data.x_test[pick]
    shift = torch.as_tensor(rng.integers(1, n_classes, size=canaries), device=device)
    y_can = (data.y_test[pick] + shift) % n_classes  # a wrong label, uniform among the others
    included = rng.random(canaries) < 0.5
    inc = torch.as_tensor(np.flatnonzero(included), dtype=torch.long)
    train = dataclasses.replace(
        data, x_train=torch.cat([data.x_train, x_can[inc]]),
        y_train=torch.cat([data.y_train, y_can[inc]]),
        record_train=np.concatenate([data.record_train, data.record_test[pick[inc].numpy()]]),
        pool_idx_train=np.concatenate([data.pool_idx_train,
                                       data.pool_idx_test[pick[inc].numpy()]]))
    prepare_defenses(defenses, train, config)
    models = build_run_models(config, resolve_topology(config, defenses), device)
    initial = copy.deepcopy(models)
    w0 = _flat(initial.client)
    t1 = time.perf_counter()
    with torch_threads(config.threads), fast_kernels(config.fast):
        trainer = SplitTrainer(models, train.x_train, train.y_train, lr=config.lr,
                               batch_size=config.batch_size, seed=config.seed,
                               defenses=defenses)
        losses = [trainer.train_epochs(epoch)[0].loss for epoch in range(1, config.epochs + 1)]
        train_seconds = time.perf_counter() - t1
        grads = canary_gradients(initial, x_can, y_can)
    step = _flat(models.client) - w0
    scores = (-(grads @ step) / grads.norm(dim=1).clamp_min(1e-12)).cpu().numpy()
    claim = private[0].report()
    out = guess_and_bound(scores, included, r, delta=float(claim.delta or 0.0),
                          confidence=confidence)
    return {
        "scope": ONE_RUN_SCOPE, "claim": {"name": claim.name, "epsilon": claim.epsilon,
                                          "delta": claim.delta, "details": claim.details},
        **out, "included": int(included.sum()), "seed": seed,
        "score": "-<w_T - w_0, g_i(w_0)> / |g_i| (client weights; server and head initial)",
        "score_mean_in": float(scores[included].mean()) if included.any() else math.nan,
        "score_mean_out": float(scores[~included].mean()) if (~included).any() else math.nan,
        # after the fact, a diagnostic of the score's power (not part of the bound)
        "score_auc": _auc(scores, included),
        "final_train_loss": losses[-1], "epochs": config.epochs,
        "n_train": len(data.y_train), "train_seconds": train_seconds,
        "seconds": time.perf_counter() - t0,
    }


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
    return doc


__all__ = ["ONE_RUN_SCOPE", "canary_gradients", "guess_and_bound", "one_run_audit", "one_run_cli"]
