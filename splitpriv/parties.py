"""The two parties of split learning. Each owns its model, optimizer and data; they meet only
through a :class:`~splitpriv.channel.Channel`.

Vanilla topology (Gupta & Raskar 2018; the paper's setting): the client sends activations and the
labels, the server computes the loss and returns d loss / d activations.

U-shaped topology (Vepakomma et al., arXiv 1812.00564): the client keeps the head and the labels;
the server returns its output and receives the gradient of that output. No label crosses.

Each step is split into phases (``send_activations``, ``step``/``forward``/``backward``,
``head_step``, ``apply_gradient``) so that one process can drive both parties in order, or each
party can run its own phases in its own process, with blocking receives.

Plug-ins (see :mod:`splitpriv.defense` and :mod:`splitpriv.servers`): each party applies the run's
defenses to what it is about to send (the client: activations, labels and, U-shaped, the output
gradient; the server: the cut gradient), and the server's behaviour (honest by default, or an
adversary) chooses the cut gradient and the output the server returns. The drivers announce every
pass with :meth:`Client.begin_phase` / :meth:`Server.begin_phase` and every finished training epoch
with ``end_epoch``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from splitpriv.channel import Channel, Kind
from splitpriv.defense import Defense
from splitpriv.servers import ServerBehaviour, honest

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def cross_entropy(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, y)


def outgoing_gradient(defenses: Sequence[Defense], g: torch.Tensor, *, kind: Kind,
                      y: torch.Tensor | None) -> torch.Tensor:
    """``g`` through every defense's ``transform_gradient``, in the run's order."""
    for d in defenses:
        g = d.transform_gradient(g, kind=kind, y=y)
    return g


def distinct_plugins(parties: Sequence[Client | Server]) -> list[Any]:
    """The parties' plug-ins, each once, in order: in one process the client and the server hold
    the same defense objects, whose phase hooks must still run once per pass."""
    seen: dict[int, Any] = {}
    for party in parties:
        for p in party.plugins():
            seen.setdefault(id(p), p)
    return list(seen.values())


def begin_phase_of(parties: Sequence[Client | Server], epoch: int, phase: str) -> None:
    """Every distinct plug-in's ``begin_phase`` (see :func:`distinct_plugins`)."""
    for p in distinct_plugins(parties):
        p.begin_phase(epoch, phase)


def end_epoch_of(parties: Sequence[Client | Server], epoch: int) -> None:
    """Every distinct plug-in's ``end_epoch`` (see :func:`distinct_plugins`)."""
    for p in distinct_plugins(parties):
        p.end_epoch(epoch)


class Client:
    """The data owner: inputs (N, 1, 128), labels (N,), the conv layers and, U-shaped, the head."""

    def __init__(
        self,
        net: nn.Module,
        x: torch.Tensor,
        y: torch.Tensor,
        channel: Channel,
        make_optimizer: OptimizerFactory,
        *,
        head: nn.Module | None = None,
        defenses: Sequence[Defense] = (),
    ) -> None:
        self.net, self.head, self.x, self.y, self.channel = net, head, x, y, channel
        self.ushape = head is not None
        self.optimizer = make_optimizer(list(net.parameters()))
        self.head_optimizer = make_optimizer(list(head.parameters())) if head is not None else None
        self.defenses = list(defenses)
        self._pending: tuple[torch.Tensor, torch.Tensor | None, bool, torch.Tensor] | None = None
        for d in self.defenses:
            d.attach(self)

    def plugins(self) -> list[Any]:
        """The plug-ins whose phase hooks this party drives: its defenses."""
        return list(self.defenses)

    def begin_phase(self, epoch: int, phase: str) -> None:
        """Before every pass over ``phase`` (``train``, ``val``, ``test``) of ``epoch``."""
        begin_phase_of((self,), epoch, phase)

    def end_epoch(self, epoch: int) -> None:
        """After every training epoch."""
        end_epoch_of((self,), epoch)

    def _activations(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        a = self.net(x)  # (B, 1, 128) -> (B, 16, 32)
        for d in self.defenses:
            a = d.transform_activations(a, training=training)
        return a

    def send_activations(self, ids: torch.Tensor, *, x: torch.Tensor | None = None,
                         y: torch.Tensor | None = None) -> None:
        """Phase 1: forward the batch ``ids`` and send what crosses the cut (or a defense's
        :meth:`~splitpriv.defense.Defense.replay` of it: then no forward pass and no step).

        ``x``, ``y``: rows ``ids`` of the client's beats and labels, when the caller has already
        gathered them (the trainer gathers a whole epoch at once); default: taken here."""
        replayed = None
        for d in self.defenses:
            if (replayed := d.replay(ids)) is not None:
                break
        extra: torch.Tensor | None = None
        if replayed is not None:
            a = replayed
        else:
            x = self.x[ids] if x is None else x
            a = self._activations(x, training=True)
            terms = [t for d in self.defenses if (t := d.client_loss(x, a)) is not None]
            extra = torch.stack(terms).sum() if terms else None
        self._pending = (a, extra, replayed is not None, ids)
        self.channel.send(Kind.ACTIVATIONS, a, ids)
        if not self.ushape:
            y = self.y[ids] if y is None else y
            for d in self.defenses:
                y = d.transform_labels(y, ids=ids)
            self.channel.send(Kind.LABELS, y, ids)

    def head_step(self, ids: torch.Tensor, *, y: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """U-shape phase: loss on the server's output; send its gradient. Returns (loss, logits).

        ``y``: the labels of rows ``ids``, when the caller has gathered them."""
        assert self.head is not None and self.head_optimizer is not None
        h = self.channel.recv(Kind.SERVER_OUTPUT).requires_grad_()  # (B, 128)
        y = self.y[ids] if y is None else y
        logits = self.head(h)  # (B, 5)
        loss = cross_entropy(logits, y)
        self.head_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        gh = outgoing_gradient(self.defenses, h.grad, kind=Kind.OUTPUT_GRAD, y=y)
        self.channel.send(Kind.OUTPUT_GRAD, gh, ids)
        self.head_optimizer.step()
        return loss.detach(), logits.detach()

    def apply_gradient(self) -> None:
        """Last phase: backpropagate the received d loss / d activations (plus local loss terms),
        after every defense's ``observe_gradient`` (which may cancel the step)."""
        assert self._pending is not None, "apply_gradient before send_activations"
        a, extra, frozen, ids = self._pending
        self._pending = None
        g = self.channel.recv(Kind.ACT_GRAD)
        if frozen:
            return  # a replayed release: the client takes no step
        for d in self.defenses:  # a detector reads it; a probe batch takes no step
            if (g := d.observe_gradient(g, ids=ids)) is None:
                return
        self.optimizer.zero_grad(set_to_none=True)
        if extra is None:
            a.backward(g)
        else:
            torch.autograd.backward([a, extra], [g, torch.ones_like(extra)])
        self.optimizer.step()

    @torch.no_grad()
    def send_eval(self, x: torch.Tensor, ids: torch.Tensor) -> None:
        self.channel.send(Kind.ACTIVATIONS, self._activations(x, training=False), ids)

    @torch.no_grad()
    def receive_eval(self) -> torch.Tensor:
        out = self.channel.recv(Kind.SERVER_OUTPUT)
        return self.head(out) if self.head is not None else out  # (B, 5)

    def train(self, mode: bool = True) -> None:
        self.net.train(mode)
        if self.head is not None:
            self.head.train(mode)


class Server:
    """The server: the dense layers and, in the vanilla topology, the loss.

    What it returns is chosen by its ``behaviour`` (:mod:`splitpriv.servers`; default the honest
    server: curious, but it follows the protocol), then passed through the run's ``defenses``
    (their ``transform_gradient`` with ``Kind.ACT_GRAD``).
    """

    def __init__(
        self,
        net: nn.Module,
        channel: Channel,
        make_optimizer: OptimizerFactory,
        *,
        defenses: Sequence[Defense] = (),
        behaviour: ServerBehaviour | None = None,
    ) -> None:
        self.net, self.channel = net, channel
        self.optimizer = make_optimizer(list(net.parameters()))
        self.defenses = list(defenses)
        self.behaviour = behaviour if behaviour is not None else honest()
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.behaviour.attach(self)

    def plugins(self) -> list[Any]:
        """The plug-ins whose phase hooks this party drives: its defenses, then its behaviour."""
        return [*self.defenses, self.behaviour]

    def begin_phase(self, epoch: int, phase: str) -> None:
        """Before every pass over ``phase`` (``train``, ``val``, ``test``) of ``epoch``."""
        begin_phase_of((self,), epoch, phase)

    def end_epoch(self, epoch: int) -> None:
        """After every training epoch."""
        end_epoch_of((self,), epoch)

    def _send_cut_gradient(self, a: torch.Tensor, ids: torch.Tensor,
                           y: torch.Tensor | None) -> None:
        """The behaviour chooses d loss / d activations from the honest one, the defenses map it,
        and it crosses."""
        assert a.grad is not None
        g = self.behaviour.cut_gradient(a.detach(), a.grad, ids, y=y)
        self.channel.send(Kind.ACT_GRAD, outgoing_gradient(self.defenses, g, kind=Kind.ACT_GRAD,
                                                           y=y), ids)

    def _send_output(self, a: torch.Tensor, out: torch.Tensor, ids: torch.Tensor) -> None:
        self.channel.send(Kind.SERVER_OUTPUT, self.behaviour.server_output(a.detach(), out, ids),
                          ids)

    def step(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vanilla phase: loss from activations and labels; return the gradient.

        Returns (loss, logits)."""
        a = self.channel.recv(Kind.ACTIVATIONS).requires_grad_()  # (B, 16, 32)
        y = self.channel.recv(Kind.LABELS)
        logits = self.net(a)  # (B, 5)
        loss = cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self._send_cut_gradient(a, ids, y)
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def forward(self, ids: torch.Tensor) -> None:
        """U-shape phase 1: run the middle layers and send their output."""
        a = self.channel.recv(Kind.ACTIVATIONS).requires_grad_()
        h = self.net(a)  # (B, 16, 32) -> (B, 128)
        self._pending = (a, h)
        self._send_output(a, h, ids)

    def backward(self, ids: torch.Tensor) -> None:
        """U-shape phase 2: backpropagate the gradient of the output; return d / d activations."""
        assert self._pending is not None, "backward before forward"
        a, h = self._pending
        self._pending = None
        gh = self.channel.recv(Kind.OUTPUT_GRAD)
        self.optimizer.zero_grad(set_to_none=True)
        h.backward(gh)
        self._send_cut_gradient(a, ids, None)
        self.optimizer.step()

    @torch.no_grad()
    def eval_step(self, ids: torch.Tensor) -> None:
        a = self.channel.recv(Kind.ACTIVATIONS)
        self._send_output(a, self.net(a), ids)

    def train(self, mode: bool = True) -> None:
        self.net.train(mode)
