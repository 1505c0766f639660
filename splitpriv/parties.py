"""The two parties of split learning. Each owns its model, optimizer and data; they meet only
through a :class:`~splitpriv.channel.Channel`.

Vanilla topology (Gupta & Raskar 2018; the paper's setting): the client sends activations and the
labels, the server computes the loss and returns d loss / d activations.

U-shaped topology (Vepakomma et al., arXiv 1812.00564): the client keeps the head and the labels;
the server returns its output and receives the gradient of that output. No label crosses.

Each step is split into phases (``send_activations``, ``step``/``forward``/``backward``,
``head_step``, ``apply_gradient``) so that one process can drive both parties in order, or each
party can run its own phases in its own process, with blocking receives.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
from torch import nn

from splitpriv.channel import Channel, Kind
from splitpriv.defense import Defense

OptimizerFactory = Callable[[list[nn.Parameter]], torch.optim.Optimizer]


def cross_entropy(outputs: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(outputs, y)


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
        self._pending: tuple[torch.Tensor, torch.Tensor | None] | None = None
        for d in self.defenses:
            d.attach(self)

    def _activations(self, x: torch.Tensor, training: bool) -> torch.Tensor:
        a = self.net(x)  # (B, 1, 128) -> (B, 16, 32)
        for d in self.defenses:
            a = d.transform_activations(a, training=training)
        return a

    def send_activations(self, ids: torch.Tensor) -> None:
        """Phase 1: forward the batch ``ids`` and send what crosses the cut."""
        x = self.x[ids]
        a = self._activations(x, training=True)
        extra = [t for d in self.defenses if (t := d.client_loss(x, a)) is not None]
        self._pending = (a, torch.stack(extra).sum() if extra else None)
        self.channel.send(Kind.ACTIVATIONS, a, ids)
        if not self.ushape:
            self.channel.send(Kind.LABELS, self.y[ids], ids)

    def head_step(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """U-shape phase: loss on the server's output; send its gradient. Returns (loss, logits)."""
        assert self.head is not None and self.head_optimizer is not None
        h = self.channel.recv(Kind.SERVER_OUTPUT).requires_grad_()  # (B, 128)
        logits = self.head(h)  # (B, 5)
        loss = cross_entropy(logits, self.y[ids])
        self.head_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.channel.send(Kind.OUTPUT_GRAD, h.grad, ids)
        self.head_optimizer.step()
        return loss.detach(), logits.detach()

    def apply_gradient(self) -> None:
        """Last phase: backpropagate the received d loss / d activations (plus local loss terms)."""
        assert self._pending is not None, "apply_gradient before send_activations"
        a, extra = self._pending
        self._pending = None
        g = self.channel.recv(Kind.ACT_GRAD)
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
    """The curious server: the dense layers and, in the vanilla topology, the loss."""

    def __init__(self, net: nn.Module, channel: Channel, make_optimizer: OptimizerFactory) -> None:
        self.net, self.channel = net, channel
        self.optimizer = make_optimizer(list(net.parameters()))
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None

    def step(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vanilla phase: loss from activations and labels; return the gradient.

        Returns (loss, logits)."""
        a = self.channel.recv(Kind.ACTIVATIONS).requires_grad_()  # (B, 16, 32)
        y = self.channel.recv(Kind.LABELS)
        logits = self.net(a)  # (B, 5)
        loss = cross_entropy(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.channel.send(Kind.ACT_GRAD, a.grad, ids)
        self.optimizer.step()
        return loss.detach(), logits.detach()

    def forward(self, ids: torch.Tensor) -> None:
        """U-shape phase 1: run the middle layers and send their output."""
        a = self.channel.recv(Kind.ACTIVATIONS).requires_grad_()
        h = self.net(a)  # (B, 16, 32) -> (B, 128)
        self._pending = (a, h)
        self.channel.send(Kind.SERVER_OUTPUT, h, ids)

    def backward(self, ids: torch.Tensor) -> None:
        """U-shape phase 2: backpropagate the gradient of the output; return d / d activations."""
        assert self._pending is not None, "backward before forward"
        a, h = self._pending
        self._pending = None
        gh = self.channel.recv(Kind.OUTPUT_GRAD)
        self.optimizer.zero_grad(set_to_none=True)
        h.backward(gh)
        self.channel.send(Kind.ACT_GRAD, a.grad, ids)
        self.optimizer.step()

    @torch.no_grad()
    def eval_step(self, ids: torch.Tensor) -> None:
        self.channel.send(Kind.SERVER_OUTPUT, self.net(self.channel.recv(Kind.ACTIVATIONS)), ids)

    def train(self, mode: bool = True) -> None:
        self.net.train(mode)
