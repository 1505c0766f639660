"""Every training study runs end to end on the built-in datasets other than one-lead MIT-BIH:
scikit-learn's digits on the small 2D CNN and two-lead MIT-BIH beats on the 1D CNN, each on a
tiny budget (--quick, then 300 training rows, one epoch, small attacks, a few settings), and
writes results.csv with the settings planned, summary.md naming the data and the model, and
its figures. Settings of the paper model's ``cut_channels`` have no counterpart on these models:
they are dropped, and the summary says so.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from studies import (
    audit,
    compare_defenses,
    depth,
    dp_tradeoff,
    label_privacy,
    malicious_server,
    paper_figures,
    patient_privacy,
)
from tests.test_studies import assert_figures, read_rows, tiny

SETUPS = {"digits": ("digits", "cnn2d"), "two-lead": ("mitdb:leads=2", "cnn1d")}

#: study -> (its extra arguments, the column naming a run's setting, the settings expected,
#: its figures)
PLANS = {
    "dp_tradeoff": (["--paper-epsilons", "none", "--formal-epsilons", "4",
                     "--designs", "512", "bottleneck"], "mode", {"none", "formal"},
                    ["accuracy_vs_epsilon", "leakage_vs_epsilon", "tradeoff"]),
    "compare_defenses": (["--only", "depth3", "ressfl-l1", "shredder-s0.1"], "defense",
                         {"depth3", "ressfl-l1", "shredder-s0.1"}, ["tradeoff"]),
    "depth": (["--depths", "3"], "depth", {"3"}, ["depth"]),
    "label_privacy": (["--labeldp-epsilons", "1", "--prior-epsilons", "1", "--marvell-bounds",
                       "0.75"], "setting",
                      {"none", "labeldp-e1", "labeldp-prior-e1", "ushape", "maxnorm-s1",
                       "marvell-b0.75"}, ["label_tradeoff"]),
    "patient_privacy": (["--only", "depth6"], "setting", {"depth6"}, ["identity", "membership"]),
    "malicious_server": (["--settings", "depth8"], "setting",
                         {"fsha-depth8", "detect-honest", "detect-fsha", "honest-none"},
                         ["detection"]),
}
MODULES = {"dp_tradeoff": dp_tradeoff, "compare_defenses": compare_defenses, "depth": depth,
           "label_privacy": label_privacy, "patient_privacy": patient_privacy,
           "malicious_server": malicious_server}


@pytest.mark.parametrize("study", list(PLANS))
@pytest.mark.parametrize("setup", list(SETUPS))
def test_study_runs_on_the_dataset(setup, study, pool_dirs, tmp_path):
    dataset, model = SETUPS[setup]
    extra, key, expected, figures = PLANS[study]
    MODULES[study].main(tiny(pool_dirs, tmp_path, "--dataset", dataset, "--model", model,
                             "--enrol-beats", "3", *extra))
    rows = read_rows(tmp_path / "results.csv")
    assert {r[key] for r in rows} == expected
    assert all(math.isfinite(float(r["test_accuracy"])) for r in rows)
    summary = (tmp_path / "summary.md").read_text()
    # the data and the model actually run, read back from the runs' configs
    holdout = ":split=groups" if study == "patient_privacy" and setup == "digits" else ""
    assert f"data {dataset}{holdout}" in summary and f"model {model}" in summary, summary[:300]
    assert_figures(tmp_path / "figures", figures)
    captions = (tmp_path / "figures" / "captions.md").read_text()
    assert f"model {model}" in captions
    if study == "dp_tradeoff":  # the bottleneck is the paper model's cut_channels: dropped
        assert "Settings dropped: the bottleneck design (cut_channels" in summary
        assert f"model '{model}' has no option of that name" in captions
        # audit.py and paper_figures.py read the study's outputs (images drawn as images, each
        # lead of a signal; no per-channel DTW figure: DTW compares one-lead signals only)
        audit.main(["--studies", str(tmp_path), "--out", str(tmp_path / "audit"),
                    "--victims", "100"])
        assert f"({'data ' + dataset}" in (tmp_path / "audit" / "summary.md").read_text()
        assert_figures(tmp_path / "audit" / "figures", ["audit_epsilon", "audit_reidentification"])
        figs = tmp_path / "paper"
        paper_figures.main(["--dp-tradeoff", str(tmp_path), "--compare", str(tmp_path / "no"),
                            "--depth", str(tmp_path / "no"), "--out", str(figs)])
        assert_figures(figs, ["beat_classes", "visual_invertibility", "dp_tradeoff",
                              "reconstructions"])
        assert f"({dataset}, inputs" in (figs / "reconstructions.txt").read_text()
    if study in ("depth", "compare_defenses", "patient_privacy", "malicious_server"):
        # the paper model's depth maps to the model's own option
        deep = [r for r in rows if r.get(key, "").startswith("depth")] or rows
        for r in deep:
            d = "".join(c for c in r[key] if c.isdigit()) if study != "depth" else r[key]
            if d:
                assert r["depth"] == d
                config = (Path(r["run_dir"]) / "config.json").read_text()
                assert (f"{model}:depth={d}" in config) == (d != "2")
    if study == "patient_privacy":  # patients (groups) held out: membership has non-members
        assert all(float(r["membership_non_members"]) >= 1 for r in rows)
