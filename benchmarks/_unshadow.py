"""Imported first by every benchmark script.

Run as ``python benchmarks/NAME.py``, this folder heads ``sys.path``, so ``benchmarks/attacks.py``
and ``benchmarks/defenses.py`` would shadow the ``attacks`` and ``defenses`` packages for every
script here. Putting the repository root ahead of this folder (spawned workers inherit the path)
lets the packages win while this module stays importable.
"""

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(_HERE.parent))
for _name in ("attacks", "defenses"):
    _mod = sys.modules.get(_name)
    if _mod is not None and Path(getattr(_mod, "__file__", "") or "").parent == _HERE:
        del sys.modules[_name]
