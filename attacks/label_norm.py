"""Label inference from the norm of the per-sample output gradients."""

from __future__ import annotations

import numpy as np
import torch

from attacks.labels import LabelAttack, References
from attacks.registry import register


@register("label-norm")
class NormLabelAttack(LabelAttack):
    """The norm attack of Li et al., "Label Leakage and Protection in Two-party Split Learning",
    ICLR 2022, generalised to K classes.

    Li et al. (binary, imbalanced): examples of the rare positive class have larger gradient norms,
    so the norm itself is the score (leak measured by its AUC). The norm carries one number per
    example, so with 5 classes it can at best tell classes with typically large gradients (hard,
    rare classes) from the rest. Reported here:

    * ``norm_auc``: per class, the one-vs-rest AUC of the raw norm (Li et al.'s measure; > 0.5: the
      class has larger norms than the rest, < 0.5: smaller);
    * a 5-class prediction: a Gaussian naive-Bayes classifier on log ||g||, fitted on the known
      references (class priors from their counts); its log posteriors are the class scores.

    Shape:
        transcript output_grad: (N, 128); aux: known-label training rows.
    """

    citation = "Li et al., Label Leakage and Protection in Two-party Split Learning, ICLR 2022"

    def infer(self, grads: torch.Tensor, refs: References | None, oracle_y: torch.Tensor):
        assert refs is not None
        tiny = np.finfo(np.float64).tiny
        v = np.log(np.maximum(grads.norm(dim=1).numpy(), tiny))  # (N,)
        r = np.log(np.maximum(refs.grads.norm(dim=1).numpy(), tiny))
        ry = refs.y.numpy()
        pooled_sd = max(float(r.std()), 1e-12)
        logpost = np.full((len(v), self.n_classes), -np.inf)
        for c in range(self.n_classes):
            rc = r[ry == c]
            if len(rc) == 0:
                continue
            sd = float(rc.std()) if len(rc) > 1 and rc.std() > 0 else pooled_sd
            prior = len(rc) / len(r)
            logpost[:, c] = np.log(prior) - np.log(sd) - 0.5 * ((v - rc.mean()) / sd) ** 2
        return logpost, None, {"norm_auc": None}

    def run(self, transcript, knowledge, truth):
        from sklearn.metrics import roc_auc_score  # here: the registry imports fast

        result = super().run(transcript, knowledge, truth)
        if "grad_norm" in result.scores:
            norms, y = result.scores["grad_norm"], result.scores["y_true"]
            result.summary["norm_auc"] = {
                str(c): float(roc_auc_score(y == c, norms)) if 0 < (y == c).sum() < len(y) else None
                for c in range(self.n_classes)
            }
        return result
