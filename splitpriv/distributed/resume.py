"""How a distributed run resumes: each party's checkpoints and the epoch the parties agree on.

Every party keeps its own state after each of its last two epochs in its own file
(:class:`PartyCheckpoints`: ``party-server.pt``, ``party-client-K.pt``): the parties end an epoch
at different moments, so after a kill one may hold epoch e and another e - 1, never further
apart (a client cannot finish an epoch the server has not served). When the parties of a
restarted run meet, each client tells the server the epochs it holds (``Op.RESUME``), the server
takes the latest epoch every party holds (:func:`agree`) and tells every client; each loads it
and the run goes on from the next epoch, as one never killed would (tested). A party that holds
nothing makes every party start afresh.

What a party's state holds: the client's networks, optimizers, batch generator, stateful
defenses, history and best validation number; the server's networks and optimizers (every copy
in SplitFed), its stateful plug-ins, its per-epoch history, and, through the run directory, the
transcript's parts and release log up to that epoch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from splitpriv.io import torch_load, torch_save

#: an epoch a party holds no state of, on the wire
NONE = -1


@dataclass
class PartyCheckpoints:
    """A party's states after its last two epochs, in one file written atomically (read once:
    only this party writes it)."""

    path: Path
    _held: dict[int, Any] | None = field(default=None, init=False, repr=False)

    def _states(self) -> dict[int, Any]:
        if self._held is None:
            self._held = (dict(torch_load(self.path)["states"]) if self.path.exists() else {})
        return self._held

    def epochs(self) -> list[int]:
        """The epochs held, oldest first (at most two)."""
        return sorted(self._states())

    def save(self, epoch: int, state: Mapping[str, Any]) -> None:
        """Keep ``state`` as the party's after ``epoch`` and the previous epoch's; drop older."""
        states = {e: s for e, s in self._states().items() if e == epoch - 1}
        states[epoch] = dict(state)
        torch_save({"states": states}, self.path)
        self._held = states

    def load(self, epoch: int) -> dict[str, Any]:
        states = self._states()
        if epoch not in states:
            raise ValueError(f"{self.path} holds the states of epochs {sorted(states)}, not "
                             f"{epoch}")
        return states[epoch]

    def wire(self) -> tuple[int, int]:
        """(latest, previous) epoch held, :data:`NONE` for none: what ``Op.RESUME`` carries."""
        held = self.epochs()
        return (held[-1] if held else NONE, held[-2] if len(held) > 1 else NONE)


def hello(ushape: bool, depth: int, mode: int, held: tuple[int, int]) -> tuple[int, int, int]:
    """``Op.HELLO``'s fields: the client's topology, depth and mode, with the (latest, previous)
    epochs it holds in their high bits (none: the fields of a client that knows nothing of
    resuming, which the server answers with nothing)."""
    latest, previous = held
    return int(ushape) + 2 * (latest + 1), depth + 16 * (previous + 1), mode


def parse_hello(a: int, b: int, c: int) -> tuple[tuple[int, int, int], tuple[int, int]]:
    """(ushape, depth, mode) and the (latest, previous) epochs of :func:`hello`'s fields."""
    return (a % 2, b % 16, c), (a // 2 - 1, b // 16 - 1)


def agree(held: Mapping[str, tuple[int, int]]) -> int:
    """The epoch the run resumes after: the latest one every party holds (0: start afresh).

    ``held``: each party's (latest, previous) epochs, :data:`NONE` for none.

    Raises:
        ValueError: the parties' checkpoints are too far apart to share an epoch (from
            different attempts), naming each party's.
    """
    if any(latest == NONE for latest, _ in held.values()):
        return 0
    epoch = min(latest for latest, _ in held.values())
    missing = [p for p, pair in held.items() if epoch not in pair]
    if missing:
        seen = ", ".join(f"{p}: {sorted(e for e in pair if e != NONE)}" for p, pair in held.items())
        raise ValueError(f"the parties hold no common epoch to resume from ({seen}); rerun "
                         "every party with --force to train afresh")
    return epoch


__all__ = ["NONE", "PartyCheckpoints", "agree", "hello", "parse_hello"]
