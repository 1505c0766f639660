"""Label inference by clustering the per-sample output gradients."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attacks.labels import LabelAttack, LabelConfig, References, class_means, unit_rows
from attacks.registry import register
from splitpriv.models import N_CLASSES


@dataclass
class KMeansConfig(LabelConfig):
    """Attributes:
        n_clusters: clusters (>= 5; more than 5 lets a class split by what it is confused with).
        n_init: k-means restarts.
    """

    n_clusters: int = N_CLASSES
    n_init: int = 10

    def __post_init__(self) -> None:
        if self.n_clusters < N_CLASSES or self.n_init < 1:
            raise ValueError(f"n_clusters must be >= {N_CLASSES} and n_init >= 1")


@register("label-kmeans")
class KMeansLabelAttack(LabelAttack):
    """k-means clustering of the unit output gradients (the unsupervised variant of the direction
    attack; cf. Li et al., ICLR 2022, and the clustering attacks of Kariyappa & Qureshi, ExPLoit,
    SaTML 2023, and Liu & Lyu, "Clustering Label Inference Attack against Practical Split
    Learning", arXiv 2203.05222).

    Clusters are named by the known-label references they contain (majority; a cluster without
    references takes the class whose reference direction is closest to its centre). Without
    references the clusters are named by the best one-to-one matching with the true labels
    (Hungarian), an optimistic ``oracle`` naming reported as such; the adjusted Rand index needs
    no naming. Class scores: the largest cosine with a centre named that class.

    Shape:
        transcript output_grad: (N, 128); aux (optional): known-label training rows.
    """

    citation = "Li et al., ICLR 2022; Liu & Lyu, arXiv 2203.05222 (clustering label inference)"
    Config = KMeansConfig
    needs_references = False

    def infer(self, grads: torch.Tensor, refs: References | None, oracle_y: torch.Tensor):
        from scipy.optimize import linear_sum_assignment  # imported here: `attack --help` and
        from sklearn.cluster import KMeans  # the requirement checks stay fast
        from sklearn.metrics import adjusted_rand_score

        cfg: KMeansConfig = self.config  # type: ignore[assignment]
        u = unit_rows(grads)
        k, n_clusters = self.n_classes, max(cfg.n_clusters, self.n_classes)
        km = KMeans(n_clusters=n_clusters, n_init=cfg.n_init, random_state=cfg.seed)
        clusters = km.fit_predict(u.numpy())  # (N,)
        centres = unit_rows(torch.as_tensor(km.cluster_centers_))  # (n_clusters, D)
        if refs is not None:
            naming = "references"
            ref_cluster = km.predict(unit_rows(refs.grads).numpy())
            means, present = class_means(refs.grads, refs.y, self.n_classes)
            closest = (centres @ unit_rows(means).T).numpy()
            closest[:, ~present] = -np.inf
            names = np.empty(n_clusters, dtype=int)
            for j in range(n_clusters):
                members = refs.y.numpy()[ref_cluster == j]
                names[j] = (np.bincount(members, minlength=k).argmax() if len(members)
                            else closest[j].argmax())
        else:
            naming = "oracle (best one-to-one matching with the true labels; optimistic)"
            counts = np.zeros((n_clusters, k))
            np.add.at(counts, (clusters, oracle_y.numpy()), 1)
            rows, cols = linear_sum_assignment(-counts)  # clusters beyond 5 stay unmatched
            names = counts.argmax(1)
            names[rows] = cols
        cos = (u @ centres.T).numpy()  # (N, n_clusters)
        scores = np.full((len(u), k), -np.inf)
        for c in range(k):
            if (names == c).any():
                scores[:, c] = cos[:, names == c].max(1)
        extra = {
            "naming": naming,
            "cluster_names": names.tolist(),
            "adjusted_rand_index": float(adjusted_rand_score(oracle_y.numpy(), clusters)),
        }
        return scores, names[clusters], extra
