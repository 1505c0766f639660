"""Split architectures as plug-ins: ``--model NAME[:key=value,...]`` or ``--model MODULE:FUNCTION``.

An architecture builds, for an input shape (C, *spatial) and a class count, the client's
network (input -> the activations it sends), the server's and the U-shaped client's head:
:meth:`Architecture.build` returns ``(client, body, head)``, where ``body`` is the server's part
up to the head. The core assembles a run's :class:`~splitpriv.models.SplitModels` from them
(:func:`build_split`): vanilla, the server runs ``body`` then ``head``; U-shaped, the server runs
``body`` and the client the head. The cut's shape is probed from the client (one forward of a
zero batch, :func:`probe_shape`), never declared.

Built-ins (``splitpriv.datasets``' pattern: this package, registered when the registry is first
read): ``paper`` (the paper's 1D CNN, ``--depth``/``--cut-channels``/``--paper-softmax``, the
default: every earlier run's weights bit for bit), ``cnn1d`` (C leads, any length), ``cnn2d``
(images). A user's model is a function ``FUNCTION(input_shape, n_classes)`` returning
``(client, server)`` or ``(client, server, head)`` torch modules, named ``MODULE:FUNCTION`` (the
module importable, e.g. from the working directory), or a class registered with
``@MODELS.register("NAME")`` (entry-point group ``splitpriv.models``).
"""

from __future__ import annotations

import importlib
from typing import Any

import torch
from torch import nn

from splitpriv.models import SplitModels
from splitpriv.registry import Registry, SpecPlugin

#: every split architecture by name; the built-ins are ``splitpriv.architectures.builtins``
MODELS: Registry[type] = Registry("model", "splitpriv.models",
                                  builtin="splitpriv.architectures.builtins")


class Architecture(SpecPlugin):
    """A split architecture plug-in: a typed ``Config`` and :meth:`build`.

    ``run`` is the run's :class:`~splitpriv.run.TrainConfig` (the paper's CNN reads its depth,
    bottleneck and softmax from it).
    """

    def check(self, run: Any) -> None:
        """Refuse a run this architecture cannot serve (ValueError), before anything is written:
        by default, one that sets the paper model's options."""
        for key, default in (("depth", 2), ("cut_channels", None), ("paper_softmax", False)):
            if getattr(run, key) != default:
                raise ValueError(f"--{key.replace('_', '-')} is the paper model's option; "
                                 f"model {self.name!r} takes its own (NAME:key=value,...)")

    def build(self, input_shape: tuple[int, ...], n_classes: int, run: Any
              ) -> tuple[nn.Module, nn.Module, nn.Module | None]:
        """(client, body, head) for inputs (B, *input_shape) and ``n_classes`` outputs."""
        raise NotImplementedError

    def assemble(self, input_shape: tuple[int, ...], n_classes: int, run: Any, *,
                 ushape: bool) -> SplitModels:
        """The run's models from :meth:`build` (the caller seeds torch first)."""
        client, body, head = self.build(input_shape, n_classes, run)
        return assemble(client, body, head, ushape=ushape, what=f"model {self.name!r}")


class UserFunction(Architecture):
    """``MODULE:FUNCTION``: the user's ``FUNCTION(input_shape, n_classes)``."""

    name = "MODULE:FUNCTION"

    def __init__(self, spec: str) -> None:
        super().__init__(None)
        module, _, function = spec.partition(":")
        try:
            self.function = getattr(importlib.import_module(module), function)
        except (ImportError, AttributeError) as exc:
            raise ValueError(f"model {spec!r}: cannot import {function!r} from {module!r}: "
                             f"{exc}") from None
        self.name = spec  # type: ignore[misc]

    def build(self, input_shape: tuple[int, ...], n_classes: int, run: Any
              ) -> tuple[nn.Module, nn.Module, nn.Module | None]:
        parts = self.function(tuple(input_shape), n_classes)
        if not (isinstance(parts, tuple) and len(parts) in (2, 3)
                and all(isinstance(p, nn.Module) for p in parts)):
            raise ValueError(f"model {self.name!r}: the function must return (client, server) or "
                             "(client, server, head) torch modules")
        return parts[0], parts[1], parts[2] if len(parts) == 3 else None


def user_function(spec: str) -> bool:
    """Whether a model spec names a user's ``MODULE:FUNCTION`` (no ``=`` after the colon)."""
    name, colon, rest = spec.partition(":")
    return bool(colon) and "=" not in rest and bool(rest.strip())


def build_architecture(spec: str) -> Architecture:
    """An architecture from ``NAME[:key=value,...]`` or ``MODULE:FUNCTION`` (ValueError naming
    what is wrong)."""
    if user_function(spec):
        return UserFunction(spec)
    return MODELS.build(spec)


def probe_shape(module: nn.Module, input_shape: tuple[int, ...]) -> tuple[int, ...]:
    """The trailing shape of ``module``'s output on a zero batch of two (B, *input_shape); the
    module's training mode is kept and no gradient is taken.

    Raises:
        ValueError: the module cannot take such inputs (torch's reason on one line).
    """
    param = next(module.parameters(), None)
    device = param.device if param is not None else torch.device("cpu")
    was = module.training
    module.eval()
    try:
        with torch.no_grad():
            out = module(torch.zeros(2, *input_shape, device=device))
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"the model cannot take inputs {tuple(input_shape)}: {first}") from None
    finally:
        module.train(was)
    return tuple(out.shape[1:])


def assemble(client: nn.Module, body: nn.Module, head: nn.Module | None, *, ushape: bool,
             what: str) -> SplitModels:
    """A run's :class:`SplitModels` from an architecture's parts: vanilla, the head (if any)
    runs on the server after the body; U-shaped, on the client.

    Raises:
        ValueError: a U-shaped run of a model without a head.
    """
    if ushape:
        if head is None:
            raise ValueError(f"{what} has no head (it returns (client, server)); a U-shaped run "
                             "needs (client, server, head)")
        return SplitModels(client=client, server=body, head=head)  # type: ignore[arg-type]
    server = body if head is None else nn.Sequential(body, head)
    return SplitModels(client=client, server=server)  # type: ignore[arg-type]


__all__ = ["MODELS", "Architecture", "UserFunction", "assemble", "build_architecture",
           "probe_shape", "user_function"]
