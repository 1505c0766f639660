"""Saved runs as a pandas DataFrame (``splitpriv.results.load_runs``), the way docs/api.md shows:
one row per run, the config, the accuracies, the privacy claims and every attack's headline as
flat named columns; then a table of the privacy axis per setting.

    python examples/load_results.py studies/out/dp_tradeoff      # a study's output folder
    python examples/load_results.py RUN_DIR [RUN_DIR ...]         # or run directories

tests/test_first_hour.py runs this script, so it cannot rot.
"""

import sys

from splitpriv.results import load_runs

paths = sys.argv[1:] or ["studies/out/dp_tradeoff"]
df = load_runs(paths)
print(f"{len(df)} runs, {df.shape[1]} columns")

# the config, the accuracy and the formal claim of every run
print(df[["run", "defenses", "seed", "epochs", "test_accuracy", "accounted_epsilon"]]
      .to_string(index=False))

# the strongest attack's re-identification advantage (the studies' privacy axis), where run
privacy = [c for c in ("strongest.reid_across_k10_advantage",
                       "strongest.reid_within_k10_advantage") if c in df]
if privacy:
    df["privacy_k10_advantage"] = df[privacy].max(axis=1)
    print(df.groupby("defenses")[["test_accuracy", "privacy_k10_advantage"]]
          .agg(["mean", "count"]).round(3).to_string())

# every attack column, e.g. ridge's linkage among 10 beats with its 95% interval
linkage = [c for c in df.columns if c.endswith("linkage_k10") or "linkage_k10_ci" in c]
if linkage:
    print(df[["run", *linkage]].to_string(index=False))
