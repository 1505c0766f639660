"""The studies' default plans (MIT-BIH, the paper's model) are those of the code before studies
took ``--dataset``/``--model`` (commit 9fb8297): the same run names and the same rerun keys
(``TrainConfig.rerun_key``), so the run directories under studies/out are still recognised.

Both sides are computed: the same listing script runs on this checkout and on the commit's
files (``git archive``), each in a subprocess with its own tree first on ``sys.path``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BASE = "9fb8297"  # the last commit before the studies took --dataset and --model
STUDIES = ("dp_tradeoff", "compare_defenses", "depth", "label_privacy", "patient_privacy",
           "malicious_server")

#: every study's planned runs, default budget and --quick: name -> rerun key (JSON)
LISTING = """
import importlib, json, sys
from studies import common
out = {}
for name in sys.argv[1:]:
    m = importlib.import_module("studies." + name)
    quick = getattr(m, "QUICK_DP", None) or getattr(m, "QUICK", common.QUICK)
    for argv in ([], ["--quick"]):
        args = common.parse_args(m.Args, argv, quick=quick)
        for p in m.plan(args):
            key = json.dumps(p.config.rerun_key(), sort_keys=True, default=str)
            out[f"{name} {' '.join(argv)} {p.name}"] = key
print(json.dumps(out))
"""


def plans(tree: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    done = subprocess.run([sys.executable, "-c", LISTING, *STUDIES], cwd=tree, env=env,
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def base_tree(tmp: Path) -> Path | None:
    """The BASE commit's packages in ``tmp`` (None without git or the commit)."""
    archive = tmp / "base.tar"
    try:
        subprocess.run(["git", "archive", "-o", str(archive), BASE, "studies", "splitpriv",
                        "attacks", "defenses"], cwd=ROOT, check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        return None
    with tarfile.open(archive) as tar:
        tar.extractall(tmp / "base", filter="data")
    return tmp / "base"


def test_default_plans_keep_their_run_names_and_rerun_keys(tmp_path):
    base = base_tree(tmp_path)
    if base is None:
        pytest.skip(f"commit {BASE} is not in this checkout's history (a shallow clone)")
    before, now = plans(base), plans(ROOT)
    assert len(before) > 200  # every study's default and quick runs (dp_tradeoff alone: 29)
    assert list(now) == list(before)  # the same names in the same order
    changed = [k for k in before if now[k] != before[k]]
    assert not changed, changed[:3]
