"""U-shaped split learning: the labels and the last layer stay with the client."""

from __future__ import annotations

from dataclasses import dataclass

from defenses.registry import register
from splitpriv.defense import Defense, PrivacyClaim


@register("ushape")
class UShape(Defense):
    """Label hiding by topology (Vepakomma et al., "Split learning for health", arXiv 1812.00564).

    The client holds the input, the first layers, the head (last layer and loss) and the labels;
    the server runs the middle layers, receives the activations, returns its output and receives
    the gradient of that output. No label crosses the channel. The defense only names the topology
    (``run_training`` builds the U-shaped models and parties); it changes no tensor.

    Notes:
        Hidden in the clear is not hidden in effect: the output gradient the server receives is
        a function of the label (through the client's head), the signal that label-inference
        attacks on gradients exploit (Li et al., ICLR 2022; Kariyappa & Qureshi, SaTML 2023).
        No formal guarantee is claimed.
    """

    topology = "ushape"

    @dataclass
    class Config:
        """``ushape`` takes no parameters."""

    @classmethod
    def stacks(cls, config: Config) -> bool:
        """Whether K U-shaped runs can train as one stacked model (``splitpriv.batched``): yes,
        the defense changes no tensor; the stacked trainer runs the clients' heads."""
        return True

    def __init__(self, config: Config) -> None:
        self.config = config

    def report(self) -> PrivacyClaim:
        return PrivacyClaim(
            name=self.name, formal=False, mechanism="topology",
            privacy_unit="one beat's label", scope="labels (they stay on the client)",
            conditions=["no formal guarantee: the output gradient the server receives is a "
                        "function of the label"],
            details={"topology": self.topology, "labels_cross": False,
                     "note": "the server still receives d loss / d its output, a function of "
                             "the label"},
        )


__all__ = ["UShape"]
