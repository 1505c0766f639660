"""Every release a curious server holds of a training beat, as attacks read them: the windows of
a run's release log (``splitpriv.releases``), for the victims and the attacker's own beats.

A run that kept its releases (``TrainConfig.record_releases``, default ``windows``) lets an
attack combine each beat's releases over the last 1, 2, 4, 8 or all epochs: under noise the mean
of R releases has 1 / sqrt(R) of one release's noise, while the client's drift over those epochs
blurs it. Which window serves an attack best is the attacker's choice, made on its own beats
(the aux set, whose releases it holds under the same ids), never on the victims.

Shape:
    a window: victims (N, C, L), aux (M, C, L).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from attacks.shapes import as_cut
from splitpriv.channel import Kind, Transcript
from splitpriv.releases import ReleaseLog

#: ``releases`` option values besides a window's number of blocks
RELEASE_CHOICES = ("auto", "last", "all")


@dataclass
class Windowed:
    """One way of combining each beat's releases, for the victims and the aux beats.

    Attributes:
        name: ``last`` (the attacked epoch's recorded activations), or ``window J`` (the last J
            blocks of the release log).
        victims: (N, C, L) the victims' combined activations.
        aux: (M, C, L) the aux beats' (None when the attacker has no aux set paired by id).
        info: what was combined (blocks, epochs spanned, releases per beat).
    """

    name: str
    victims: torch.Tensor
    aux: torch.Tensor | None
    info: dict[str, Any]

    @property
    def releases(self) -> float:
        return float(self.info.get("releases_mean", 1.0))

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, **self.info}


def check_releases(value: str) -> str:
    """A ``releases`` option: ``auto``, ``last``, ``all`` or a window's number of blocks."""
    v = str(value).strip().lower()
    if v not in RELEASE_CHOICES and not (v.isdigit() and int(v) >= 1):
        raise ValueError(f"releases must be one of {RELEASE_CHOICES} or a number of blocks >= 1, "
                         f"got {value!r}")
    return v


def release_windows(transcript: Transcript, victim_ids: torch.Tensor, last_victims: torch.Tensor,
                    *, aux_ids: torch.Tensor | None, last_aux: torch.Tensor | None, phase: str,
                    epoch: int | None, recorded: bool) -> tuple[list[Windowed], str | None]:
    """The ways an attacker can combine the victims' releases: first the attacked activations
    (``last``: what ``observed`` read), then each window of the run's release log that differs
    from it. Returns the windows and, when the log could not be used, why (a note).

    ``recorded``: whether ``last`` are recorded messages of the transcript (else they are the
    log's latest block). The log serves only the training phase at the last epoch, and only with
    an aux set paired with the transcript by id (``aux_ids``; an aux set of queried activations
    has one release per beat, which would not match the victims' windows).
    """
    last = Windowed("last", last_victims, last_aux,
                    {"blocks": 0 if recorded else 1, "releases_mean": 1.0,
                     "source": "recorded messages" if recorded else "release log"})
    log = transcript.releases
    if log is None or not log.held():
        return [last], None
    if phase != "train":
        return [last], f"the release log holds training releases; phase {phase!r} read once"
    if epoch is not None and epoch != max(hi for _, hi in log.blocks):
        return [last], f"epoch {epoch} attacked: the release log's windows end at the last epoch"
    if last_aux is not None and aux_ids is None:
        return [last], ("the aux activations were queried (one release each): only the last "
                        "release of the victims is used")
    out = [last]
    victims = log.windows(victim_ids)
    aux = log.windows(aux_ids) if aux_ids is not None else None
    for j, w in enumerate(victims):
        if j == 0 and not recorded:
            last.info = {**last.info, **w.describe()}
            continue  # ``last`` is this window already
        if j == 0 and _same_as_recorded(log, w):
            continue  # the last epoch alone: what ``last`` holds, at float32
        out.append(Windowed(f"window {w.blocks}", as_cut(w.mean),
                            None if aux is None else as_cut(aux[j].mean), w.describe()))
    return out, None


def _same_as_recorded(log: ReleaseLog, w: Any) -> bool:
    """Whether window ``w`` is one release of the last epoch for every id (the recorded
    transcript's own activations of that epoch)."""
    return w.first == w.last == max(hi for _, hi in log.blocks) and int(w.count.max()) == 1


def pick(windows: list[Windowed], releases: str) -> Windowed | None:
    """The window a fixed ``releases`` option names (None for ``auto``).

    Raises:
        ValueError: a number of blocks the run's log does not have.
    """
    if releases == "auto":
        return None
    if releases == "last" or len(windows) == 1:
        return windows[0]
    if releases == "all":
        return windows[-1]
    for w in windows:
        if w.info.get("blocks") == int(releases):
            return w
    raise ValueError(f"releases={releases}: the run's release log has windows of "
                     f"{[w.info.get('blocks') for w in windows]} blocks")


def recorded(transcript: Transcript, kind: Kind, phase: str, epoch: int | None) -> bool:
    """Whether the transcript holds recorded messages of ``kind`` for ``phase`` (at ``epoch``,
    else at any)."""
    return any(k == kind.value and p == phase and (epoch is None or e == epoch)
               for k, p, e in transcript.keys())


def observed_from_log(transcript: Transcript, kind: Kind, phase: str,
                      epoch: int | None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """The latest training release of every id from the release log, for a transcript that
    recorded no activation messages (the studies keep only the log); None where it cannot
    serve (another kind or phase, an earlier epoch, no log)."""
    log = transcript.releases
    if (kind is not Kind.ACTIVATIONS or phase != "train" or log is None or not log.held()
            or (epoch is not None and epoch != max(hi for _, hi in log.blocks))):
        return None
    ids = log.released_ids()
    return ids, as_cut(log.windows(ids)[0].mean)


__all__ = ["RELEASE_CHOICES", "Windowed", "check_releases", "observed_from_log", "pick",
           "recorded", "release_windows"]
