"""Label inference from the direction of the per-sample output gradients."""

from __future__ import annotations

import numpy as np
import torch

from attacks.labels import LabelAttack, References, class_means, unit_rows
from attacks.registry import register


@register("label-direction")
class DirectionLabelAttack(LabelAttack):
    """The direction (cosine) attack of Li et al., "Label Leakage and Protection in Two-party Split
    Learning", ICLR 2022, generalised to K classes.

    Li et al. (binary): a gradient whose cosine with a known positive example's gradient is
    positive is labelled positive. Here: the mean unit gradient of each class's known references
    is that class's direction; a victim gets the class whose direction has the largest cosine with
    its gradient. Class scores are the cosines.

    Shape:
        transcript output_grad: (N, 128); aux: known-label training rows.

    Notes:
        Needs references of every class to name every class; a class without references scores
        -inf (never predicted).
    """

    citation = "Li et al., Label Leakage and Protection in Two-party Split Learning, ICLR 2022"

    def infer(self, grads: torch.Tensor, refs: References | None, oracle_y: torch.Tensor):
        assert refs is not None
        means, present = class_means(refs.grads, refs.y, self.n_classes)
        cos = (unit_rows(grads) @ unit_rows(means).T).numpy()  # (N, K)
        cos[:, ~present] = -np.inf
        return cos, None, {"reference_counts": np.bincount(refs.y.numpy(), minlength=5).tolist()}
