"""The strongest label attack of a run, chosen without looking at the victims."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np
import torch

from attacks.base import AttackInputError, AuxData, GroundTruth, Knowledge
from attacks.labels import LabelAttack, LabelConfig, Prediction, label_scores
from attacks.registry import ATTACKS, load_builtin, register
from splitpriv.channel import Transcript


@dataclass
class StrongestConfig(LabelConfig):
    """Attributes:
        candidates: the label attacks to choose from, comma-separated (empty: every registered
            label attack but this one).
        heldout: fraction of the aux rows held out to score the candidates (each candidate is
            given the other rows as its aux set), in (0, 1).
    """

    candidates: str = ""
    heldout: float = 0.5

    def __post_init__(self) -> None:
        if not 0 < self.heldout < 1:  # also refuses NaN
            raise ValueError(f"attack 'label-strongest': heldout must be in (0, 1), "
                             f"got {self.heldout}")


@register("label-strongest")
class StrongestLabelAttack(LabelAttack):
    """Per run, the label attack that does best on the attacker's own held-out aux rows, run on
    the victims; like picking the strongest inversion, but by a criterion the attacker can
    compute (it never looks at the victims' labels).

    Selection: a seeded ``heldout`` fraction of the aux rows is set aside; every candidate
    (norm, direction, k-means, model completion by default) attacks those rows with the rest as
    its aux set; the candidate with the highest held-out accuracy (ties: mean one-vs-rest AUC)
    wins and attacks the victims with the whole aux set. A candidate that cannot attack this
    transcript (e.g. completion without server outputs) is skipped and named in ``selection``.
    The summary is the chosen attack's, with ``chosen`` (its name) and ``selection`` (each
    candidate's held-out accuracy and AUC, or why it was skipped).

    Shape:
        as the candidates; aux: known-label rows observed in the transcript (``own:F``).
    """

    citation = ("strongest of Li et al. ICLR 2022 (norm, direction), k-means (Liu & Lyu, "
                "arXiv 2203.05222) and model completion (Fu et al., USENIX Security 2022)")
    Config = StrongestConfig
    requires = ("aux",)

    def candidates(self) -> list[LabelAttack]:
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        load_builtin()
        names = ([n.strip() for n in cfg.candidates.split(",") if n.strip()] or
                 [n for n, c in ATTACKS.items()
                  if issubclass(c, LabelAttack) and c is not type(self)])
        common = {f.name: getattr(cfg, f.name) for f in dataclasses.fields(LabelConfig)}
        out = []
        for name in names:
            cls = ATTACKS.get(name)
            if cls is None or not issubclass(cls, LabelAttack) or cls is type(self):
                raise ValueError(f"attack 'label-strongest': {name!r} is not a label attack")
            out.append(cls(cls.Config(**common)))
        return out

    def select(self, transcript: Transcript, knowledge: Knowledge
               ) -> tuple[LabelAttack, dict[str, dict]]:
        """The candidate with the best held-out aux accuracy, and every candidate's score."""
        cfg: StrongestConfig = self.config  # type: ignore[assignment]
        aux = knowledge.aux
        if aux is None or aux.ids is None:
            raise AttackInputError(f"attack {self.name!r} needs aux rows observed in the "
                                   "transcript (--aux own:F)")
        order = torch.from_numpy(np.random.default_rng(cfg.seed).permutation(len(aux.y)))
        n_held = max(1, int(round(cfg.heldout * len(order))))
        held, fit = order[:n_held], order[n_held:]
        if len(fit) == 0:
            raise AttackInputError(f"attack {self.name!r}: too few aux rows to hold some out")
        fit_aux = AuxData(x=aux.x[fit], y=aux.y[fit], ids=aux.ids[fit],
                          source=f"{aux.source} (fit part)")
        fit_knowledge = dataclasses.replace(knowledge, aux=fit_aux)
        selection: dict[str, dict] = {}
        best: tuple[tuple[float, float], LabelAttack] | None = None
        for cand in self.candidates():
            cand.n_classes = knowledge.n_classes
            try:
                p: Prediction = cand.predict(transcript, fit_knowledge, aux.ids[held],
                                             aux.y[held])
            except AttackInputError as e:
                selection[cand.name] = {"skipped": str(e)}
                continue
            s = label_scores(aux.y[held].numpy(), p.scores, p.pred, knowledge.n_classes)
            key = (s["accuracy"], s["mean_auc"] if s["mean_auc"] is not None else 0.0)
            selection[cand.name] = {"heldout_accuracy": key[0], "heldout_mean_auc": s["mean_auc"]}
            if best is None or key > best[0]:
                best = (key, cand)
        if best is None:
            raise AttackInputError(f"attack {self.name!r}: no candidate could attack this "
                                   f"transcript ({selection})")
        return best[1], selection

    def run(self, transcript: Transcript, knowledge: Knowledge, truth: GroundTruth):
        chosen, selection = self.select(transcript, knowledge)
        result = chosen.run(transcript, knowledge, truth)
        result.summary |= {"chosen": chosen.name, "selection": selection,
                           "criterion": "held-out aux accuracy (ties: mean AUC)"}
        result.notes.append(f"strongest label attack by held-out aux accuracy: {chosen.name}")
        return result

    @classmethod
    def columns(cls, summary):
        """The label columns, and the chosen attack's name as ``strongest_label_attack``."""
        chosen = summary.get("chosen") if summary else None
        return super().columns(summary) | {
            "strongest_label_attack": chosen if isinstance(chosen, str) else math.nan}

    def headline(self, summary):
        return super().headline(summary) | {"chosen": summary.get("chosen")}
