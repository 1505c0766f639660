"""splitpriv: privacy in split learning.

The plug-in packages are imported as ``splitpriv.attacks``, ``splitpriv.defenses`` and
``splitpriv.studies`` (``from splitpriv.attacks import build_attack``); their folders stay at the
top of the repository, and for one release their old top-level names (``attacks``,
``defenses``, ``studies``) still work. Both names are the same module objects: the finder below
answers ``splitpriv.attacks[.x]`` with the module ``attacks[.x]`` (imported once, so every plug-in
registers once), the way ``six.moves`` aliases modules.

The Python API (``splitpriv.train``, ``splitpriv.attack``, ``splitpriv.load_runs``,
``splitpriv.register_arrays``, ``splitpriv.register_model``) is :mod:`splitpriv.api`.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from types import ModuleType

#: the import names of the plug-in packages -> the folders (old top-level names) that hold them
ALIASES = {"splitpriv.attacks": "attacks", "splitpriv.defenses": "defenses",
           "splitpriv.studies": "studies"}


class _PluginAliases(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``splitpriv.attacks[.x]`` -> the module ``attacks[.x]`` (one object under both names)."""

    @staticmethod
    def _target(fullname: str) -> str | None:
        for new, old in ALIASES.items():
            if fullname == new or fullname.startswith(new + "."):
                return old + fullname[len(new):]
        return None

    def find_spec(self, fullname: str, path: object = None, target: object = None
                  ) -> importlib.machinery.ModuleSpec | None:
        if self._target(fullname) is None:
            return None
        return importlib.util.spec_from_loader(fullname, self)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        name = self._target(spec.name)
        assert name is not None
        return importlib.import_module(name)

    def exec_module(self, module: ModuleType) -> None:
        """Nothing: the module ran when it was imported under its folder's name."""


if not any(isinstance(f, _PluginAliases) for f in sys.meta_path):
    sys.meta_path.insert(0, _PluginAliases())

#: the Python API (``splitpriv/api.py``), imported on first use so that ``import splitpriv``
#: stays light
API = ("Run", "attack", "load_runs", "register_arrays", "register_model", "train")


def __getattr__(name: str) -> object:
    if name in API:
        return getattr(importlib.import_module("splitpriv.api"), name)
    raise AttributeError(f"module 'splitpriv' has no attribute {name!r}")
