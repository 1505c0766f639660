"""The built-in datasets, one module each; importing this package registers them."""

from splitpriv.datasets.builtins import arrays, digits, mitdb  # noqa: F401
