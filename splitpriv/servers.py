"""What the server does with what crosses: the honest server, or an adversary's plug-in.

A *server behaviour* sits inside :class:`~splitpriv.parties.Server` and chooses what the server
returns across the cut; the server's task network, loss and optimizer stay the server's and keep
running as in the protocol. The default, ``honest``, is the curious-but-honest server of the
paper's threat model (Abuadbba et al. 2020): it follows the protocol and returns the true
d loss / d activations. Adversaries that deviate from it are plug-ins in ``attacks/servers/``
(one file each, discovered like defenses), chosen by a spec ``NAME[:key=value,...]`` with a typed
``Config`` (``build_server("scaled:factor=2")``).

Hooks and when the server calls them:

========================  ===================================================================
hook                      when
========================  ===================================================================
``configure``             once, with the run's plan, before anything is written
``provide``               once, after the run's data is built: the public auxiliary beats the
                          behaviour's ``aux_spec`` names (resolved by the run, never the
                          client's) and the evaluator's ``record`` sink for reconstructions
``attach``                once, when the server is built (its ``net``, ``optimizer``, device)
``begin_phase``           before every pass: ``(epoch, "train" | "val" | "test")``
``cut_gradient``          every training step: the gradient the server returns, from the
                          activations and labels received and the honest gradient
``server_output``         every time the server sends its output (U-shape training, evaluation)
``end_epoch``             after every training epoch
``report``                the behaviour's entry of result.json
========================  ===================================================================

A behaviour sees only what crossed the channel (detached copies of the received activations, the
labels in the vanilla topology, the sample ids) and what the server computes itself (the honest
gradient, its output). It may keep its own models, optimizers and auxiliary data and train them
in ``cut_gradient``. A feature-space hijacking server (FSHA, Pasquini et al., CCS 2021, arXiv
2012.02670) fits as one: its ``Config`` names its public auxiliary beats; ``attach`` builds the
pilot encoder, its decoder and the discriminator on the server's device; ``cut_gradient`` takes a
step of each (pilot and decoder on the auxiliary beats, the discriminator on ``a`` against the
pilot's features) and returns d(adversarial loss)/d a instead of ``g``, which steers the client's
layers into the pilot's feature space; ``server_output`` sees every evaluation release, which the
decoder inverts. It is ``attacks/servers/fsha.py``; its public beats arrive through ``provide``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch

from splitpriv.registry import Registry

if TYPE_CHECKING:
    from splitpriv.parties import Server

#: the evaluator's sink for a behaviour's reconstructions: ``record(step, ids, x_hat)`` with the
#: training step, the sample ids (B,) that crossed and the reconstructions (B, 1, 128); the run
#: scores them against the true beats the behaviour never sees
RecordSink = Callable[[int, torch.Tensor, torch.Tensor], None]


@dataclass
class AuxBeats:
    """Public auxiliary beats handed to a behaviour by the run (``ServerBehaviour.provide``).

    Attributes:
        x: (M, 1, 128) float32 beats the client does not hold; y: (M,) their labels.
        source: where they come from, in words (for result.json).
    """

    x: torch.Tensor
    y: torch.Tensor
    source: str


class Scorer(Protocol):
    """The run's evaluator of a behaviour's reconstructions: the ``record`` sink the behaviour
    gets in :meth:`ServerBehaviour.provide`. The run builds it from the behaviour class's
    ``scorer`` as ``scorer(path, x_train, y_train, prior, seed=, groups=)`` with the true
    training beats (N, 1, 128), their labels (N,), the mean public beat (or None) and each beat's
    record; it writes its records to ``path`` and its :meth:`summary` to result.json. The
    implementation lives with the behaviours (``attacks/servers/scoring.py``)."""

    stateful: bool
    rows: list[dict[str, Any]]

    def __call__(self, step: int, ids: torch.Tensor, x_hat: torch.Tensor) -> None: ...

    def summary(self) -> dict[str, Any]: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> None: ...


class ServerBehaviour:
    """Base class: the hooks, each defaulting to the honest server's action.

    Subclasses define a nested ``Config`` dataclass of their parameters (validated in its
    ``__post_init__``), take it as their only constructor argument, and are registered with
    :func:`register_server`.
    """

    name: str = "honest"
    #: whether the behaviour returns what the protocol prescribes (reported in result.json)
    follows_protocol: bool = True
    #: the class of the run's evaluator of this behaviour's reconstructions (:class:`Scorer`),
    #: for a behaviour that reconstructs what crossed; None: nothing to score
    scorer: ClassVar[Callable[..., Scorer] | None] = None
    #: whether a checkpoint keeps the behaviour's state (:meth:`state_dict`)
    stateful: bool = False
    #: whether K runs' servers, each with this behaviour, can step as one stacked server
    #: (``splitpriv.batched``): only a behaviour whose hooks change no tensor (the honest one)
    stacks: bool = False

    @dataclass
    class Config:
        """No parameters."""

    def __init__(self, config: Any) -> None:
        self.config = config

    def configure(self, *, epochs: int, batch_size: int) -> None:
        """Called once with the run's plan, before anything is written; may refuse it with a
        ValueError naming the parameter."""

    def aux_spec(self) -> str | None:
        """The public auxiliary beats the behaviour needs, as a spec the run resolves
        (an :class:`~splitpriv.aux.AuxSpec` of kind ``public:F``, ``public:N`` or
        ``records:R1,...``, resolved by ``splitpriv.run.behaviour_aux``); None
        (the default): none, and :meth:`provide` receives ``aux=None``."""
        return None

    def provide(self, *, aux: AuxBeats | None, record: RecordSink | None) -> None:
        """Called once by the run after its data is built (before training): the beats
        :meth:`aux_spec` named, and the evaluator's sink for reconstructions (None when nothing
        scores them, e.g. a bare ``SplitTrainer``)."""

    def attach(self, server: Server) -> None:
        """Called once when the server is built; ``server.net`` and ``server.optimizer`` are the
        server's task model and optimizer (and give the device)."""

    def begin_phase(self, epoch: int, phase: str) -> None:
        """Called before every pass over a phase (``train``, ``val``, ``test``)."""

    def cut_gradient(self, a: torch.Tensor, g: torch.Tensor, ids: torch.Tensor, *,
                     y: torch.Tensor | None) -> torch.Tensor:
        """The gradient the server returns for a training batch.

        Shape:
            a: (B, C, L) the activations received (detached); g: (B, C, L) the honest
            d loss / d a; ids: (B,) their sample ids; y: (B,) the labels received (vanilla
            topology; None U-shaped) -> (B, C, L).
        """
        return g

    def server_output(self, a: torch.Tensor, out: torch.Tensor, ids: torch.Tensor
                      ) -> torch.Tensor:
        """The output the server sends for activations ``a`` (detached): the U-shape hidden
        (B, 128) in training, logits (B, 5) or the hidden in evaluation; honest: ``out``. In
        training the server backpropagates from its true ``out`` whatever is sent; evaluation
        runs under ``torch.no_grad()`` (a behaviour that trains here enables grad itself)."""
        return out

    def end_epoch(self, epoch: int) -> None:
        """Called after every training epoch."""

    def state_dict(self) -> dict[str, Any]:
        """The behaviour's state, for a checkpoint (a class that declares ``stateful``)."""
        raise NotImplementedError(f"server behaviour {self.name!r} keeps no state")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (a resumed run)."""
        raise NotImplementedError(f"server behaviour {self.name!r} keeps no state")

    def report(self) -> dict[str, Any]:
        """The behaviour and its parameters, for result.json."""
        return {"name": self.name, "follows_protocol": self.follows_protocol,
                **dataclasses.asdict(self.config)}


#: every server behaviour by name, filled by the plug-in packages (``attacks/servers/``)
SERVERS: Registry[type[ServerBehaviour]] = Registry("server behaviour", "splitpriv.servers")
register_server = SERVERS.register


@register_server("honest")
class HonestServer(ServerBehaviour):
    """The curious-but-honest server: it follows the protocol (the base class's hooks)."""

    stacks = True


def honest() -> ServerBehaviour:
    return HonestServer(HonestServer.Config())


def load_plugins() -> Registry[type[ServerBehaviour]]:
    """The behaviour registry, every plug-in loaded."""
    SERVERS.classes()
    return SERVERS


def build_server(spec: str) -> ServerBehaviour:
    """A behaviour from its spec ``NAME[:key=value,...]`` (``honest``, ``scaled:factor=2``).

    Raises:
        ValueError: an unknown name (the known ones are listed), an unknown option or a value of
            the wrong type (naming it), or the Config's own checks.
    """
    return SERVERS.build(spec)


__all__ = ["SERVERS", "AuxBeats", "HonestServer", "RecordSink", "Scorer", "ServerBehaviour",
           "build_server",
           "honest", "load_plugins", "register_server"]
