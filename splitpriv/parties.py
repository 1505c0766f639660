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

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
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


@dataclass
class RunView:
    """What a stacking defense's ``attach`` reads of its own run when K runs train as one stacked
    model (:attr:`Defense.stacks`): the run's inputs (N, 1, 128), labels (N,) and defenses. A
    defense that does not stack is attached to the :class:`Client` itself (and may wrap its
    ``net`` or ``optimizer``)."""

    x: torch.Tensor
    y: torch.Tensor
    defenses: list[Defense]
    ushape: bool


class _Party:
    """What both parties share: the runs they step and the plug-ins of each.

    One run (``runs`` None): tensors are (B, ...) and ``defenses`` act on them. K stacked runs
    (``runs``: each run's defenses, :mod:`splitpriv.batched`): the party's networks map
    (K, B, ...) to (K, B, ...), tensors carry the runs in front, and run k's plug-ins act on its
    slice [k] only, in the order one run's would.
    """

    def __init__(self, defenses: Sequence[Defense], runs: Sequence[Sequence[Defense]] | None
                 ) -> None:
        if runs is not None and defenses:
            raise ValueError("a stacked party takes its runs' defenses as runs=, not defenses=")
        self.runs = None if runs is None else [list(ds) for ds in runs]
        self.defenses = (list(defenses) if self.runs is None
                         else list({id(d): d for ds in self.runs for d in ds}.values()))
        refused = sorted({d.name for d in self.defenses if not d.stacks(d.config)})
        if self.runs is not None and refused:
            raise ValueError(f"stacked runs: defense(s) {refused} do not stack (they need the "
                             "client's model, optimizer or a frozen step); train them alone "
                             "(SplitTrainer)")

    @property
    def stacked(self) -> bool:
        return self.runs is not None

    def plugins(self) -> list[Any]:
        """The plug-ins whose phase hooks this party drives: its defenses."""
        return list(self.defenses)

    def begin_phase(self, epoch: int, phase: str) -> None:
        """Before every pass over ``phase`` (``train``, ``val``, ``test``) of ``epoch``."""
        begin_phase_of((self,), epoch, phase)  # type: ignore[arg-type]

    def end_epoch(self, epoch: int) -> None:
        """After every training epoch."""
        end_epoch_of((self,), epoch)  # type: ignore[arg-type]

    def each_run(self, *tensors: torch.Tensor | None) -> Iterator[tuple[Any, ...]]:
        """(run's defenses, its slice of each tensor) for every run; a None stays None."""
        if self.runs is None:
            yield (self.defenses, *tensors)
            return
        for k, ds in enumerate(self.runs):
            yield (ds, *(None if t is None else t[k] for t in tensors))

    def per_run(self, fn: Callable[..., torch.Tensor], t: torch.Tensor,
                *more: torch.Tensor | None) -> torch.Tensor:
        """``fn(defenses, t, *more)`` of every run on its own slices, stacked back (``t`` itself
        when no run has a defense)."""
        if not self.defenses:
            return t
        if self.runs is None:
            return fn(self.defenses, t, *more)
        return torch.stack([fn(*args) for args in self.each_run(t, *more)])

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The cross-entropy of each run: a 0-d mean, or (K,) stacked (each run's mean)."""
        if self.runs is None:
            return cross_entropy(logits, y)
        return nn.functional.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none"
                                           ).view_as(y).mean(1)

    def outgoing(self, g: torch.Tensor, kind: Kind, y: torch.Tensor | None) -> torch.Tensor:
        """A gradient about to be sent through each run's ``transform_gradient``."""
        def transform(defenses: Sequence[Defense], g: torch.Tensor, y: torch.Tensor | None
                      ) -> torch.Tensor:
            return outgoing_gradient(defenses, g, kind=kind, y=y)

        return self.per_run(transform, g, y)

    def backward_loss(self, loss: torch.Tensor) -> None:
        """Backpropagate :meth:`loss` (stacked: the sum; runs share no parameter, so each run's
        gradient is its own)."""
        (loss if self.runs is None else loss.sum()).backward()


def _single(results: list[Any], what: str) -> list[Any] | None:
    """Every run's result of a hook that may return None, or None when all did. Stacked runs
    take one step together, so they cannot disagree (a defense whose hook may skip a run's step
    declares that it does not stack)."""
    if len({r is None for r in results}) > 1:
        raise RuntimeError(f"stacked runs disagree on {what}")
    return None if results[0] is None else results


class Client(_Party):
    """The data owner: inputs (N, 1, 128), labels (N,), the conv layers and, U-shaped, the head.

    Stacked (``runs``): ``net`` and ``head`` map (K, B, ...) -> (K, B, ...) (their parameters
    stacked), batches of ids are (K, B), and the shared evaluation inputs go through the K
    clients ``eval_piece`` rows at a time.
    """

    def __init__(
        self,
        net: Any,
        x: torch.Tensor,
        y: torch.Tensor,
        channel: Channel,
        make_optimizer: OptimizerFactory,
        *,
        head: Any | None = None,
        defenses: Sequence[Defense] = (),
        runs: Sequence[Sequence[Defense]] | None = None,
    ) -> None:
        super().__init__(defenses, runs)
        self.net, self.head, self.x, self.y, self.channel = net, head, x, y, channel
        self.ushape = head is not None
        self.optimizer = make_optimizer(list(net.parameters()))
        self.head_optimizer = make_optimizer(list(head.parameters())) if head is not None else None
        self.eval_piece: int | None = None
        self._pending: tuple[torch.Tensor, torch.Tensor | None, bool, torch.Tensor] | None = None
        if runs is None:  # stacked runs' defenses are attached to views of their own runs
            for d in self.defenses:
                d.attach(self)

    def _defend(self, a: torch.Tensor, training: bool) -> torch.Tensor:
        """The activations about to be sent: each run's ``transform_activations``, in order."""
        def transform(defenses: Sequence[Defense], a: torch.Tensor) -> torch.Tensor:
            for d in defenses:
                a = d.transform_activations(a, training=training)
            return a

        return self.per_run(transform, a)

    def _replay(self, ids: torch.Tensor) -> torch.Tensor | None:
        """A defense's :meth:`~splitpriv.defense.Defense.replay` of the batch, else None."""
        if not self.defenses:
            return None
        replayed = _single([next((r for d in ds if (r := d.replay(i)) is not None), None)
                            for ds, i in self.each_run(ids)], "a replay")
        if replayed is None:
            return None
        return replayed[0] if self.runs is None else torch.stack(replayed)

    def send_activations(self, ids: torch.Tensor, *, x: torch.Tensor | None = None,
                         y: torch.Tensor | None = None) -> None:
        """Phase 1: forward the batch ``ids`` and send what crosses the cut (or a defense's
        :meth:`~splitpriv.defense.Defense.replay` of it: then no forward pass and no step).

        ``x``, ``y``: rows ``ids`` of the client's beats and labels, when the caller has already
        gathered them (the trainer gathers a whole epoch at once); default: taken here."""
        replayed = self._replay(ids)
        extra: torch.Tensor | None = None
        if replayed is not None:
            a = replayed
        else:
            x = self.x[ids] if x is None else x
            a = self._defend(self.net(x), training=True)  # (B, 1, 128) -> (B, 16, 32)
            terms = [t for ds, xk, ak in self.each_run(x, a) for d in ds
                     if (t := d.client_loss(xk, ak)) is not None]
            extra = torch.stack(terms).sum() if terms else None
        self._pending = (a, extra, replayed is not None, ids)
        self.channel.send(Kind.ACTIVATIONS, a, ids)
        if not self.ushape:
            def transform(defenses: Sequence[Defense], y: torch.Tensor, ids: torch.Tensor
                          ) -> torch.Tensor:
                for d in defenses:
                    y = d.transform_labels(y, ids=ids)
                return y

            y = self.y[ids] if y is None else y
            self.channel.send(Kind.LABELS, self.per_run(transform, y, ids), ids)

    def head_step(self, ids: torch.Tensor, *, y: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """U-shape phase: loss on the server's output; send its gradient. Returns (loss, logits)
        (stacked: each run's loss (K,)).

        ``y``: the labels of rows ``ids``, when the caller has gathered them."""
        assert self.head is not None and self.head_optimizer is not None
        h = self.channel.recv(Kind.SERVER_OUTPUT).requires_grad_()  # (B, 128)
        y = self.y[ids] if y is None else y
        logits = self.head(h)  # (B, 5)
        loss = self.loss(logits, y)
        self.head_optimizer.zero_grad(set_to_none=True)
        self.backward_loss(loss)
        assert h.grad is not None
        self.channel.send(Kind.OUTPUT_GRAD, self.outgoing(h.grad, Kind.OUTPUT_GRAD, y), ids)
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
        if self.defenses:  # a detector reads it; a probe batch takes no step
            def observe(defenses: Sequence[Defense], g: torch.Tensor | None, ids: torch.Tensor
                        ) -> torch.Tensor | None:
                for d in defenses:
                    if g is None:
                        break
                    g = d.observe_gradient(g, ids=ids)
                return g

            seen = _single([observe(*args) for args in self.each_run(g, ids)], "a step")
            if seen is None:
                return
            g = seen[0] if self.runs is None else torch.stack(seen)
        self.optimizer.zero_grad(set_to_none=True)
        if extra is None:
            a.backward(g)
        else:
            torch.autograd.backward([a, extra], [g, torch.ones_like(extra)])
        self.optimizer.step()

    @torch.no_grad()
    def send_eval(self, x: torch.Tensor, ids: torch.Tensor) -> None:
        """Evaluation: the activations of rows ``x`` (stacked: of every run, (K, B, ...))."""
        if self.runs is None:
            a = self.net(x)
        else:  # the shared rows through the K clients, eval_piece rows at a time
            k = len(self.runs)
            parts = [self.net(p.expand(k, *p.shape)) for p in x.split(self.eval_piece or len(x))]
            a = parts[0] if len(parts) == 1 else torch.cat(parts, 1)
        self.channel.send(Kind.ACTIVATIONS, self._defend(a, training=False), ids)

    @torch.no_grad()
    def receive_eval(self) -> torch.Tensor:
        out = self.channel.recv(Kind.SERVER_OUTPUT)
        return self.head(out) if self.head is not None else out  # (B, 5)

    def train(self, mode: bool = True) -> None:
        self.net.train(mode)
        if self.head is not None:
            self.head.train(mode)


class Server(_Party):
    """The server: the dense layers and, in the vanilla topology, the loss.

    What it returns is chosen by its ``behaviour`` (:mod:`splitpriv.servers`; default the honest
    server: curious, but it follows the protocol), then passed through the run's ``defenses``
    (their ``transform_gradient`` with ``Kind.ACT_GRAD``). Stacked (``runs``, as
    :class:`Client`), the behaviour must stack (:attr:`ServerBehaviour.stacks`: the honest one).
    """

    def __init__(
        self,
        net: Any,
        channel: Channel,
        make_optimizer: OptimizerFactory,
        *,
        defenses: Sequence[Defense] = (),
        behaviour: ServerBehaviour | None = None,
        runs: Sequence[Sequence[Defense]] | None = None,
    ) -> None:
        super().__init__(defenses, runs)
        self.net, self.channel = net, channel
        self.optimizer = make_optimizer(list(net.parameters()))
        self.behaviour = behaviour if behaviour is not None else honest()
        if runs is not None and not self.behaviour.stacks:
            raise ValueError(f"server behaviour {self.behaviour.name!r} does not stack")
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self.behaviour.attach(self)

    def plugins(self) -> list[Any]:
        """The plug-ins whose phase hooks this party drives: its defenses, then its behaviour."""
        return [*self.defenses, self.behaviour]

    def _send_cut_gradient(self, a: torch.Tensor, ids: torch.Tensor,
                           y: torch.Tensor | None) -> None:
        """The behaviour chooses d loss / d activations from the honest one, the defenses map it,
        and it crosses."""
        assert a.grad is not None
        g = self.behaviour.cut_gradient(a.detach(), a.grad, ids, y=y)
        self.channel.send(Kind.ACT_GRAD, self.outgoing(g, Kind.ACT_GRAD, y), ids)

    def _send_output(self, a: torch.Tensor, out: torch.Tensor, ids: torch.Tensor) -> None:
        self.channel.send(Kind.SERVER_OUTPUT, self.behaviour.server_output(a.detach(), out, ids),
                          ids)

    def step(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Vanilla phase: loss from activations and labels; return the gradient.

        Returns (loss, logits) (stacked: each run's loss (K,))."""
        a = self.channel.recv(Kind.ACTIVATIONS).requires_grad_()  # (B, 16, 32)
        y = self.channel.recv(Kind.LABELS)
        logits = self.net(a)  # (B, 5)
        loss = self.loss(logits, y)
        self.optimizer.zero_grad(set_to_none=True)
        self.backward_loss(loss)
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


def train_step(ids: torch.Tensor, *, ushape: bool, client: Client | None = None,
               server: Server | None = None, x: torch.Tensor | None = None,
               y: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor] | None:
    """One step of split learning: the protocol, written once for every driver.

    Vanilla: the client sends its activations (through its defenses) and the labels; the server
    takes its loss, its step and returns the cut gradient; the client backpropagates it.
    U-shaped: the server returns its output, the client's head takes the loss and returns the
    output's gradient, the server steps and returns the cut gradient.

    Both parties in one process (the in-process and the stacked trainers) pass both; a
    distributed party passes its own only and its blocking receives keep the order. ``x``, ``y``:
    the batch's rows when the client's driver gathered them. Returns (loss, logits) from the
    party that holds the loss, when it was given; else None.
    """
    out = None
    if client is not None:
        client.send_activations(ids, x=x, y=y)
    if ushape:
        if server is not None:
            server.forward(ids)
        if client is not None:
            out = client.head_step(ids, y=y)
        if server is not None:
            server.backward(ids)
    elif server is not None:
        out = server.step(ids)
    if client is not None:
        client.apply_gradient()
    return out
