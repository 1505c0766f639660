"""How a malicious server's reconstructions are scored while it trains: the run's evaluator.

A behaviour that reconstructs what crossed (FSHA) names this class as its ``scorer``; the run
builds it with the true training beats, which the behaviour never sees, and hands it to the
behaviour as its ``record`` sink.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from attacks.shapes import as_signal, one_signal


class ReconstructionLog:
    """The evaluator of a server behaviour's reconstructions (its ``record`` sink, named by its
    class's ``scorer``: :class:`splitpriv.servers.Scorer`): scores each
    recorded batch against the true training beats the behaviour never sees, with the inversion
    attacks' metrics (``attacks.metrics``: r, PRDN, SNR... and linkage among k = 10, 100 training
    beats of the victim's class), beside the mean aux beat's prior, and appends a line to
    ``path`` (JSON lines, one per record, with the first :data:`EXAMPLES` true beats and their
    reconstructions for figures, with the input's shape: (128,) a one-lead beat, else (C,
    *spatial)); given the beats' records (``groups``), the linkage within patient too.

    Shape:
        x_train: (N, 1, 128), y_train: (N,); a record: step, ids (B,), x_hat (B, 1, 128).
    """

    stateful = True
    #: the reconstruction quality whose first step :meth:`summary` reports
    THRESHOLDS = {"linkage_k10_advantage": 0.5, "pearson_median": 0.9}
    #: beats of every record whose true and reconstructed samples the log keeps
    EXAMPLES = 3

    def __init__(self, path: Path, x_train: torch.Tensor, y_train: torch.Tensor,
                 prior: torch.Tensor | None, *, seed: int,
                 groups: np.ndarray | None = None) -> None:
        self.path, self.seed = path, seed
        # any input (N, C, *spatial) as the attacks see it, (N, 1, D) (attacks.shapes)
        self.x, self.y = as_signal(x_train.detach().cpu()), y_train.detach().cpu()
        self.input_shape = tuple(x_train.shape[1:])
        # each beat's record, for linkage within patient (none where a record is unknown)
        self.groups = (None if groups is None or (np.asarray(groups) < 0).any()
                       else torch.as_tensor(np.asarray(groups)).long())
        self.prior = None if prior is None else prior.detach().cpu().reshape(1, 1, -1)
        self.rows: list[dict[str, Any]] = []
        self.lines: list[str] = []  # the file's lines (rows with their examples)
        path.unlink(missing_ok=True)  # a (re)started behaviour starts its log afresh

    def __call__(self, step: int, ids: torch.Tensor, x_hat: torch.Tensor) -> None:
        from attacks.metrics import linkage_report, reconstruction_metrics  # scikit-learn: slow

        ids = ids.detach().cpu().long()
        x, y, x_hat = self.x[ids], self.y[ids], x_hat.detach().cpu().float()
        row: dict[str, Any] = {"step": int(step), "n": len(ids)}
        for name, rec in (("", x_hat), ("prior_mean_beat_", self.prior)):
            if rec is None:
                continue
            rec = rec.expand_as(x) if rec.shape[0] == 1 else rec
            m = reconstruction_metrics(x, rec)
            row |= {f"{name}{k}_median": float(np.median(m[k]))
                    for k in ("pearson", "prdn", "snr_db", "mse")}
            g = self.groups
            link = linkage_report(x, rec, y, pool_x=self.x, pool_y=self.y, seed=self.seed,
                                  groups=None if g is None else g[ids], pool_groups=g)
            row |= {f"{name}{game}_{k}_advantage": link[game][k]["advantage"]
                    for game in ("linkage", "linkage_within") if game in link
                    for k in ("k10", "k100")}
        self.rows.append(row)
        keep = slice(0, self.EXAMPLES)  # a few true beats and their reconstructions, for figures
        shape = self.input_shape[1:] if one_signal(self.input_shape) else self.input_shape
        examples = {"ids": ids[keep].tolist(),
                    **{k: v[keep].reshape(-1, *shape).round(decimals=4).tolist()
                       for k, v in (("x", x), ("x_hat", x_hat))}}
        self.lines.append(json.dumps(row | {"examples": examples}) + "\n")
        with self.path.open("a") as f:
            f.write(self.lines[-1])

    def state_dict(self) -> dict[str, Any]:
        """The records so far (a resumed run's log goes on from them, not afresh)."""
        return {"lines": list(self.lines)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`: the file holds exactly those records again (a killed
        epoch's later ones are dropped)."""
        self.lines = list(state["lines"])
        self.rows = [{k: v for k, v in json.loads(line).items() if k != "examples"}
                     for line in self.lines]
        self.path.write_text("".join(self.lines))

    def summary(self) -> dict[str, Any]:
        """The first and last record and the first step passing each of :data:`THRESHOLDS`."""
        if not self.rows:
            return {"records": 0}
        first_pass = {f"steps_to_{k}_{v}": next((r["step"] for r in self.rows if r[k] >= v), None)
                      for k, v in self.THRESHOLDS.items()}
        return {"records": len(self.rows), "log": self.path.name, **first_pass,
                "first": self.rows[0], "final": self.rows[-1]}


__all__ = ["ReconstructionLog"]
