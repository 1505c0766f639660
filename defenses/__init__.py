"""Defense modules that plug into the split trainer at the cut (see ``splitpriv.defense``).

A defense is a class registered by name with a typed dataclass config; ``build_defense`` turns a
spec ``name[:key=value,...]`` into an instance, checking every parameter before training starts.
"""

from defenses.registry import DEFENSES, build_defense, parse_spec, register

__all__ = ["DEFENSES", "build_defense", "parse_spec", "register"]
