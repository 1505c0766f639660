"""Correlation leakage at the cut: DTW distance between each input and each activation channel."""

from __future__ import annotations

from dataclasses import dataclass

from attacks.base import Attack, AttackInputError, AttackResult, GroundTruth, Knowledge
from attacks.leakage import LeakageConfig, control_rows, paired_activations
from attacks.measures import dtw_pairs
from attacks.registry import register
from splitpriv.channel import Transcript

#: Abuadbba et al. 2020, 2-conv model, checkpoint at epoch 100 (per-channel means).
PAPER_DTW = {"min": 2.70, "max": 5.84}


@dataclass
class DtwConfig(LeakageConfig):
    """Attributes: see :class:`~attacks.leakage.LeakageConfig`."""


@register("dtw")
class DynamicTimeWarping(Attack):
    """DTW between the raw 128-sample input and each 32-long activation channel.

    ``paper`` (Abuadbba et al., ASIACCS 2020): dtaidistance's DTW on the raw series, no window, no
    normalisation; the mean over beats gives one value per channel. Lower = more similar. It mixes
    shape with scale: activations are not on the input's scale, so a channel can score far from
    the input while following its shape closely.

    ``scale_free``: both series z-normalised first, so only the shape counts.

    A control pairs each activation with another beat's input: matched pairs should be closer.

    Shape:
        transcript activations: (N, C, L); ground truth (N, 1, 128).

    Notes:
        dtaidistance's C implementation (``dtw_cc.distance``), one call per pair: the Python loop
        around it is 1.2% of the time (0.19 of 15.3 us per 128 x 32 pair, measured), so a
        vectorised DP would not be faster on a CPU. A measurement by the evaluator: it uses the
        private beats and no attacker knowledge.
    """

    citation = ("Abuadbba et al., ASIACCS 2020 (arXiv 2003.12365); DTW as in dtaidistance "
                "(Meert et al.)")
    Config = DtwConfig
    study_columns = {"dtw_min": ("paper", "min"), "dtw_max": ("paper", "max"),
                     "dtw_scale_free_min": ("scale_free", "min"),
                     "dtw_scale_free_max": ("scale_free", "max")}

    @classmethod
    def study_options(cls, budget):
        n = budget.dtw_victims
        return {"source": "weights", "max_victims": n,
                "control_victims": min(budget.control_victims, n)}

    def run(self, transcript: Transcript, knowledge: Knowledge, truth: GroundTruth) -> AttackResult:
        cfg: DtwConfig = self.config  # type: ignore[assignment]
        if truth.input_shape is not None:
            raise AttackInputError(f"attack 'dtw' compares a one-channel 1D signal with each "
                                   f"activation channel; this run's inputs are "
                                   f"{truth.input_shape}")
        obs, x = paired_activations(self, transcript, truth)
        if obs.values.shape[-1] < 2:
            raise AttackInputError("attack 'dtw' aligns each activation channel with the beat; "
                                   "this run's cut is dense (one value a channel): use dcor")
        raw = x.reshape(len(x), -1).double().numpy()  # (N, 128)
        acts = obs.values.double().numpy()  # (N, C, L)
        summary: dict = {"n_beats": len(obs.ids), "pairing": cfg.pairing}
        scores = {"ids": obs.ids.numpy()}
        control = control_rows(len(obs.ids), cfg)
        for variant, scale_free in (("paper", False), ("scale_free", True)):
            per_beat = dtw_pairs(raw, acts, scale_free=scale_free)  # (N, C)
            per_channel = per_beat.mean(0)
            summary[variant] = {
                "per_channel": per_channel.tolist(),
                "min": float(per_channel.min()), "max": float(per_channel.max()),
                "mean": float(per_channel.mean()),
                "argmin_channel": int(per_channel.argmin()),
            }
            if variant == "paper":
                summary[variant]["reference_abuadbba2020_2conv_epoch100"] = PAPER_DTW
            scores[f"dtw_{variant}"] = per_beat
            if control is not None:
                rows, others = control
                shuffled = dtw_pairs(raw[others], acts[rows], scale_free=scale_free).mean(0)
                matched = per_beat[rows].mean(0)
                summary[variant]["control_shuffled"] = {
                    "n_beats": len(rows),
                    "per_channel_matched": matched.tolist(),
                    "per_channel_shuffled": shuffled.tolist(),
                    "shuffled_minus_matched_min": float((shuffled - matched).min()),
                }
        notes = []
        if cfg.pairing != "own":
            notes.append("first-of-batch pairing reproduces a flaw of the original DP-leakage "
                         "code; it raises DTW by itself")
        return AttackResult(attack=self.name, summary=summary, scores=scores, notes=notes)

    def headline(self, summary):
        return {
            "n_beats": summary["n_beats"],
            "paper_min": summary["paper"]["min"], "paper_max": summary["paper"]["max"],
            "scale_free_min": summary["scale_free"]["min"],
            "scale_free_max": summary["scale_free"]["max"],
        }
