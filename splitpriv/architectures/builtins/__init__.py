"""The built-in split architectures; importing this package registers them."""

from splitpriv.architectures.builtins import convnets, paper  # noqa: F401
