"""Server behaviours that deviate from the protocol: a malicious server's plug-ins.

One module per behaviour, each a :class:`splitpriv.servers.ServerBehaviour` registered with
:func:`splitpriv.servers.register_server`; :func:`import_all` (the package's entry point,
``splitpriv.servers``) imports every module here when the core's registry is first read, and
:func:`splitpriv.servers.build_server` builds one from a spec ``NAME[:key=value,...]``.

Registered: ``scaled`` (returns ``factor`` times the honest cut gradient).
"""

from __future__ import annotations

import importlib
import pkgutil


def import_all() -> None:
    """Import every module of the package so that its behaviours register."""
    for mod in pkgutil.iter_modules(__path__):
        importlib.import_module(f"{__name__}.{mod.name}")


__all__ = ["import_all"]
