"""The plug-in packages' import names: ``splitpriv.attacks``, ``splitpriv.defenses``,
``splitpriv.studies``, with the old top-level names kept for one release (issue 34, item 7)."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest


@pytest.mark.parametrize(("new", "old"), [
    ("splitpriv.attacks", "attacks"),
    ("splitpriv.attacks.strongest", "attacks.strongest"),
    ("splitpriv.attacks.servers.fsha", "attacks.servers.fsha"),
    ("splitpriv.defenses", "defenses"),
    ("splitpriv.defenses.dp", "defenses.dp"),
    ("splitpriv.studies.common", "studies.common"),
])
def test_the_new_and_the_old_name_are_one_module(new, old):
    assert importlib.import_module(new) is importlib.import_module(old)


def test_a_fresh_process_that_uses_only_the_new_names_registers_every_plugin_once():
    # imported first under the new names, the plug-ins register once each (a second module
    # object of the same file would raise "registered twice"); the attack and defense built
    # by name are the registry's classes
    code = (
        "from splitpriv.attacks import build_attack\n"
        "from splitpriv.defenses import build_defense\n"
        "import splitpriv.attacks.strongest as s, attacks.strongest as t\n"
        "assert s is t\n"
        "a = build_attack('ridge', {}); d = build_defense('dp:mode=paper,epsilon=3')\n"
        "from splitpriv.registry import ATTACKS\n"
        "assert type(a) is ATTACKS['ridge'] and type(a).__module__ == 'attacks.ridge'\n"
        "print(type(a).__name__, type(d).__name__)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.split() == ["RidgeInversion", "PaperDP"]


def test_a_name_outside_the_packages_is_not_aliased():
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("splitpriv.nosuchpackage")
