"""Studies: each script end to end on a tiny budget (real beats, 1 epoch, few hundred beats), its
files and columns, its figures, and that a rerun skips what is done. Plus the shared helpers on
hand-worked cases."""

from __future__ import annotations

import csv
import json
import math
import time
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from splitpriv.options import field_docs
from studies import audit, common, compare_defenses, depth, dp_tradeoff, paper_figures

TINY = ["--quick", "--no-progress", "--jobs", "1", "--train-subset", "300", "--test-subset", "200",
        "--epochs", "1", "--dcor-victims", "100", "--dtw-victims", "40",
        "--decoder-victims", "50", "--decoder-epochs", "2"]


def tiny(pool_dirs, out: Path, *extra: str) -> list[str]:
    mitdb, cache = pool_dirs
    return [*TINY, "--out", str(out), "--mitdb-dir", str(mitdb), "--cache-dir", str(cache),
            *extra]


def read_rows(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def assert_finite(rows: list[dict[str, str]], columns: list[str]) -> None:
    for r in rows:
        for c in columns:
            assert math.isfinite(float(r[c])), (c, r[c], r["run_dir"])


def assert_figures(folder: Path, names: list[str]) -> None:
    for name in names:
        img = mpimg.imread(folder / f"{name}.png")
        assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, name
        assert img.std() > 0, f"{name}.png is blank"
        assert (folder / f"{name}.pdf").read_bytes()[:5] == b"%PDF-"
        assert (folder / f"{name}.txt").read_text().strip()
    captions = (folder / "captions.md").read_text()
    assert all(f"**{n}**" in captions for n in names)


@pytest.fixture(scope="module")
def dp_out(pool_dirs, tmp_path_factory) -> tuple[Path, float]:
    """dp_tradeoff on a tiny budget: the baseline, paper epsilon 3, formal epsilon 4."""
    out = tmp_path_factory.mktemp("dp_tradeoff")
    t0 = time.perf_counter()
    # --seeds 3 as main.sh's default budget has it: the grid still trains one seed
    # (--formal-seeds 1), which every header and caption must say
    dp_tradeoff.main(tiny(pool_dirs, out, "--paper-epsilons", "3", "none",
                          "--formal-epsilons", "4", "none", "--designs", "512", "--seeds", "3"))
    return out, time.perf_counter() - t0


def test_dp_tradeoff_writes_results_summary_and_figures(dp_out):
    out, _ = dp_out
    rows = read_rows(out / "results.csv")
    required = ["study", "mode", "epsilon", "seed", "protocol", "test_accuracy",
                "best_test_accuracy", "dcor_max", "dcor_batch", "dtw_min",
                "inversion_pearson_r", "inversion_prd", "run_dir"]
    assert set(required) <= set(rows[0])
    # one row per run: the shared undefended baseline, paper eps 3, formal eps 4
    assert sorted((r["mode"], r["epsilon"]) for r in rows) == [
        ("formal", "4"), ("none", "none"), ("paper", "3")]
    assert_finite(rows, required[5:-1])
    for r in rows:
        assert 0 <= float(r["test_accuracy"]) <= 100
        assert 0 <= float(r["dcor_max"]) <= 1
        assert Path(r["run_dir"], "result.json").exists()
    formal = next(r for r in rows if r["mode"] == "formal")
    assert float(formal["accounted_epsilon"]) == pytest.approx(4, rel=0.01)
    # the noise reaches what the server sees: leakage drops below the undefended run's
    base = next(r for r in rows if r["mode"] == "none")
    assert float(formal["dcor_max"]) < float(base["dcor_max"])
    summary = (out / "summary.md").read_text()
    assert "Paper mode" in summary and "Formal mode" in summary
    assert "73.78" in summary and "98.44" in summary  # the paper's accuracies beside ours
    assert_figures(out / "figures", ["accuracy_vs_epsilon", "leakage_vs_epsilon", "tradeoff"])
    # the audit columns (attacks/audit.py): an empirical epsilon for every run, the robustness
    # bound only where a formal activation-DP claim is
    assert_finite(rows, ["epsilon_lower_k10", "epsilon_lower_k100"])
    assert math.isfinite(float(formal["rero_bound_k10"]))
    assert math.isnan(float(base["rero_bound_k10"]))
    assert "## Audit" in summary


def test_audit_study_audits_every_run_without_touching_them(dp_out, tmp_path):
    out, _ = dp_out
    mtimes = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    audit.main(["--studies", str(out), "--out", str(tmp_path), "--victims", "150"])
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == mtimes
    rows = read_rows(tmp_path / out.name / "results.csv")
    assert len(rows) == 3 and all(r["audit_violation"] == "no" for r in rows)
    assert_finite(rows, ["epsilon_lower_k10", "test_epsilon_lower_k10", "test_success_k10"])
    formal = next(r for r in rows if r["mode"] == "formal")
    assert float(formal["test_success_k10"]) <= float(formal["test_rero_bound_k10"])
    assert float(formal["dfil_mse_bound"]) > 0
    none = next(r for r in rows if r["mode"] == "none")
    assert float(none["test_success_k10"]) == 1.0  # no noise: every test beat picked out
    assert "# Privacy audits" in (tmp_path / "summary.md").read_text()
    assert_figures(tmp_path / "figures", ["audit_epsilon", "audit_reidentification"])


def test_headers_and_captions_say_what_the_runs_are(dp_out):
    """main.sh's runs are all seed 0, one per setting: a header or caption claiming "3 seed(s)"
    or "mean ± sd over seeds" would be a false statement copied into papers."""
    out, _ = dp_out
    texts = [(out / "summary.md").read_text(), (out / "figures" / "captions.md").read_text()]
    texts += [p.read_text() for p in (out / "figures").glob("*.txt")]
    for text in texts:
        assert "3 seed" not in text and "over seeds" not in text, text
        assert "1 seed per setting (seed 0): single runs, no interval" in text, text
        # the tiny budget, as the runs' configs hold it
        assert "1 epochs, train subset 300, test subset 200" in text, text


def test_interval_text_counts_seeds_per_setting():
    def rows(*runs: tuple[str, int]) -> list[dict]:
        return [{"run_dir": f"/x/runs/{name}-s{seed}", "seed": float(seed)} for name, seed in runs]

    # two settings with seeds 0, 1, 2 each: an interval over 3 seeds
    three = rows(*[(n, s) for n in ("none", "dp-e3") for s in range(3)])
    assert common.interval_text(three) == "mean ± sd over 3 seeds per setting (seeds 0, 1, 2)"
    # the same names at seed 0 only (main.sh's dp_tradeoff): no interval at all
    assert common.interval_text(rows(("none", 0), ("dp-e3", 0))) == (
        "1 seed per setting (seed 0): single runs, no interval")
    # "none" at seeds 0 and 1, "dp-e3" at 0: both counts named, and the setting left single
    mixed = common.interval_text(rows(("none", 0), ("none", 1), ("dp-e3", 0)))
    assert mixed.startswith("mean ± sd over each setting's seeds (1 to 2 seeds per setting "
                            "(seeds 0, 1)")
    assert "the 1 setting(s) with 1 seed: single runs, no interval" in mixed
    assert common.interval_sentence(rows(("a", 4))) == (
        "1 seed per setting (seed 4): single runs, no interval.")


def test_dp_tradeoff_rerun_skips_finished_runs_and_attacks(dp_out, pool_dirs):
    out, first = dp_out
    runs = sorted((out / "runs").iterdir())
    done = [p for d in runs for p in (d / "result.json", d / "attacks" / "dcor.json")]
    before = {p: p.stat().st_mtime_ns for p in done}
    missing = runs[0] / "attacks" / "dtw.json"
    missing.unlink()  # a study killed during this attack
    t0 = time.perf_counter()
    # --seeds 3 as main.sh's default budget has it: the grid still trains one seed
    # (--formal-seeds 1), which every header and caption must say
    dp_tradeoff.main(tiny(pool_dirs, out, "--paper-epsilons", "3", "none",
                          "--formal-epsilons", "4", "none", "--designs", "512", "--seeds", "3"))
    again = time.perf_counter() - t0
    assert {p: p.stat().st_mtime_ns for p in done} == before  # nothing retrained or re-attacked
    assert missing.exists()  # ... but the missing attack was run
    assert again < first
    assert len(read_rows(out / "results.csv")) == 3


def test_paper_figures_redraws_from_saved_results(dp_out, tmp_path):
    out, _ = dp_out
    figs = paper_figures.main(["--dp-tradeoff", str(out), "--compare", str(tmp_path / "none"),
                               "--depth", str(tmp_path / "none"), "--out", str(tmp_path)])
    names = ["beat_classes", "visual_invertibility", "per_channel_leakage",
             "dp_accuracy_vs_epsilon", "dp_leakage_vs_epsilon", "dp_tradeoff",
             "reconstructions"]
    assert list(figs.captions) == names
    assert_figures(tmp_path, names)
    assert not list((out / "runs").glob("*/attacks/*.tmp"))


def test_compare_defenses_quick(pool_dirs, tmp_path):
    # --enrol-beats 3: at 300 training beats no patient has 10 (--quick's) beats in the first
    # 30% of its record, so identity is enrolled from 3 (about 14 patients, chance about 1/14)
    rows = compare_defenses.main(tiny(pool_dirs, tmp_path, "--only", "none", "ushape",
                                      "nopeek-a1", "depth3", "--enrol-beats", "3"))
    assert {r["defense"] for r in rows} == {"none", "ushape", "nopeek-a1", "depth3"}
    table = read_rows(tmp_path / "results.csv")
    cols = ["test_accuracy", "best_test_accuracy", "dcor_max", "dcor_batch", "dtw_min",
            "inversion_pearson_r", "inversion_prd", "label_attack_accuracy"]
    assert {"defense", "family", "mode", "epsilon", "seed", "protocol", "run_dir"} <= set(table[0])
    assert_finite(table, cols)
    by = {r["defense"]: r for r in table}
    assert float(by["none"]["label_attack_accuracy"]) == 100.0  # labels cross in the clear
    assert by["ushape"]["topology"] == "ushape"
    assert by["depth3"]["depth"] == "3"
    summary = (tmp_path / "summary.md").read_text()
    assert "Pareto" in summary and "identity top-1, 1 beat (chance 1/N)" in summary
    assert_figures(tmp_path / "figures", ["tradeoff"])
    # identity runs on every setting, both topologies: accuracies in [0, 1] with chance 1/N
    # among the N enrolled patients (the windows of 50 beats need more victims than 300 beats)
    identity = [c for c in common.attack_column_names(["identity"]) if "w50" not in c
                and c not in ("identity_attack", "identity_patients")]
    assert {"identity_top1", "identity_top5", "identity_top1_w10", "identity_chance"} <= set(
        identity)
    assert_finite(table, identity)
    for r in table:
        assert all(0 <= float(r[c]) <= 1 for c in identity), r
        assert float(r["identity_chance"]) == pytest.approx(1 / float(r["identity_patients"]))
        assert float(r["identity_top1"]) <= float(r["identity_top5"])
    # undefended, one epoch: 0.60 of the victims named among 14 (chance 0.07; measured with
    # `splitpriv attack identity -o enrol_beats=3` on such a run); 3 x chance is a loose floor
    assert float(by["none"]["identity_top1"]) > 3 * float(by["none"]["identity_chance"])


def test_identity_that_cannot_apply_is_skipped_in_one_line(dp_out, capsys):
    """No patient of a 300-beat run has 1,000 enrolment beats: the study leaves identity out,
    says why in one line and writes nothing."""
    out, _ = dp_out
    run = out / "runs" / "none-s0"
    before = sorted((p.name, p.stat().st_mtime_ns) for p in (run / "attacks").iterdir())
    got = common.run_attacks(run, ["identity"], common.AttackBudget(enrol_beats=1000), epochs=1)
    assert got == {}
    assert sorted((p.name, p.stat().st_mtime_ns) for p in (run / "attacks").iterdir()) == before
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("none-s0: identity skipped: identity: 0 patients")
    assert math.isnan(common.attack_columns({"identity": got.get("identity")})["identity_top1"])


def test_depth_quick(pool_dirs, tmp_path):
    depth.main(tiny(pool_dirs, tmp_path, "--depths", "2", "3", "--seeds", "2"))
    table = read_rows(tmp_path / "results.csv")
    assert sorted(r["depth"] for r in table) == ["2", "2", "3", "3"]
    # each depth's two seeds were trained together as one stacked model
    for r in table:
        assert json.loads((Path(r["run_dir"]) / "result.json").read_text())["batched"] == 2
    assert_finite(table, ["test_accuracy", "best_test_accuracy", "dcor_max", "dcor_min",
                          "dtw_min", "dtw_max", "test_macro_f1", "test_balanced_accuracy"])
    for r in table:  # the per-class measures come from the run's own result.json
        result = json.loads((Path(r["run_dir"]) / "result.json").read_text())
        assert float(r["test_macro_f1"]) == pytest.approx(result["test_macro_f1"])
    summary = (tmp_path / "summary.md").read_text()
    assert "98.52" in summary and "98.46" in summary and "macro-F1" in summary
    assert_figures(tmp_path / "figures", ["depth"])


def test_the_utility_axis_is_a_known_column():
    from studies.common import UTILITIES, FigureSet, StudyArgs

    assert StudyArgs(utility="test_macro_f1").utility == "test_macro_f1"
    with pytest.raises(ValueError, match="utility must be one of"):
        StudyArgs(utility="fun")
    assert FigureSet(Path("."), utility="test_macro_f1").utility_label == UTILITIES[
        "test_macro_f1"]


# --- shared helpers, hand-worked ---


def test_pareto_front_hand_worked():
    # (leakage, accuracy): b dominates c (less leakage, more accuracy); a and d trade off
    leak = [0.1, 0.5, 0.6, 0.9, math.nan]
    acc = [50.0, 80.0, 70.0, 95.0, 99.0]
    assert common.pareto_front(leak, acc) == [0, 1, 3]
    assert common.pareto_front([0.2, 0.2], [10.0, 20.0]) == [1]  # ties: the higher one


def test_stat_mean_sd_over_finite_values():
    s = common.stat([1.0, 3.0, math.nan])
    assert (s.mean, s.sd, s.n) == (2.0, pytest.approx(math.sqrt(2)), 2)
    assert str(common.stat([])) == "-"


def test_parse_args_quick_fills_only_what_was_not_given():
    args = common.parse_args(dp_tradeoff.Args, ["--quick", "--epochs", "7"], quick=common.QUICK)
    assert args.epochs == 7  # given wins
    assert args.seeds == common.QUICK["seeds"] and args.train_subset == common.QUICK[
        "train_subset"]
    full = common.parse_args(dp_tradeoff.Args, ["--paper-epsilons", "1", "none"])
    assert full.paper_epsilons == [1.0, None] and full.seeds == 3 and full.train_subset is None
    assert [common.parse_epsilon(e) for e in full.paper_epsilons] == [1.0, None]
    assert "seeds per setting" in field_docs(dp_tradeoff.Args)["seeds"]


def test_plan_shares_the_baseline_and_matches_formal_epochs():
    args = common.parse_args(dp_tradeoff.Args, ["--formal-seeds", "2", "--epochs", "12"])
    plan = dp_tradeoff.plan(args)
    names = [p.name for p in plan]
    # per seed: none, paper 3 and 10, and per cut 7 epsilons at 12 releases + 3 budgets x 2
    assert len(names) == len(set(names)) == 2 * (1 + 2 + 2 * (7 + 3 * 2))
    assert all(p.name.endswith(f"-s{p.config.seed}") for p in plan)
    formal = [p for p in plan if p.labels["mode"] == "formal"]
    assert all(p.config.defenses[0].options["epochs"] == 12 for p in formal)


def test_attack_budget_is_nested_and_its_flags_stay_flat():
    args = common.parse_args(depth.Args, ["--dcor-victims", "123", "--aux", "train:0.2"])
    assert isinstance(args.budget, common.AttackBudget)
    assert (args.budget.dcor_victims, args.budget.aux) == (123, "train:0.2")
    assert args.budget.dtw_victims == common.AttackBudget().dtw_victims
    quick = common.parse_args(depth.Args, ["--quick", "--dtw-victims", "9"], quick=common.QUICK)
    assert quick.budget.dcor_victims == common.QUICK["dcor_victims"]  # --quick: small budget
    assert quick.budget.dtw_victims == 9 and quick.seeds == 1  # ... but what is given wins


def test_attacks_say_what_a_study_runs_them_with():
    from attacks.registry import ATTACKS, load_builtin

    load_builtin()
    budget = common.AttackBudget(dcor_victims=500, dtw_victims=40, decoder_victims=30)
    assert ATTACKS["dcor"].study_options(budget) == {
        "source": "weights", "max_victims": 500, "n_batches": 5, "batch_size": 250,
        "control_victims": 200}
    assert ATTACKS["dtw"].study_options(budget)["control_victims"] == 40
    assert ATTACKS["decoder"].study_options(budget)["epochs"] == budget.decoder_epochs
    assert ATTACKS["unsplit"].study_options(budget)["max_victims"] == 30
    aux = {n for n, cls in ATTACKS.items() if cls.needs_aux()}  # (more label attacks may join)
    assert aux >= {"decoder", "label-direction", "label-kmeans", "label-norm", "ridge",
                   "strongest"}
    assert not aux & {"dcor", "dtw", "whitebox", "unsplit"}
    cols = common.attack_columns({
        "dcor": {"paper": {"max": 0.9, "min": 0.3}, "batch": {"mean": 0.5}}, "dtw": None,
        "label-norm": {"accuracy": 0.5}, "label-direction": {"accuracy": 0.75},
        "label-kmeans": None})
    assert (cols["dcor_max"], cols["dcor_min"], cols["dcor_batch"]) == (0.9, 0.3, 0.5)
    assert math.isnan(cols["dtw_min"])  # not run
    assert cols["label_attack_accuracy"] == 75.0  # the strongest label attack


def test_privacy_columns_read_the_typed_claim():
    from splitpriv.defense import PrivacyClaim

    dp = PrivacyClaim("dp", formal=True, epsilon=4.0, delta=1e-5,
                      details={"noise_multiplier": 1.5}).to_dict()
    paper = PrivacyClaim("dp", details={"epsilon_per_release": 3.0}).to_dict()
    got = common.privacy_columns({"defenses": [paper, dp]})
    assert {k: got[k] for k in ("accounted_epsilon", "noise_multiplier")} == {
        "accounted_epsilon": 4.0, "noise_multiplier": 1.5}
    assert math.isnan(got["patient_epsilon"])  # no patient_level: the run knew no records
    none = common.privacy_columns({"defenses": [paper]})
    assert all(math.isnan(v) for v in none.values())


def test_compare_defenses_labels_are_typed_and_specs_built_from_values():
    from splitpriv.defense import DefenseSpec

    args = common.parse_args(compare_defenses.Args, ["--seeds", "1", "--epochs", "6"])
    by = {p.labels["defense"]: p for p in compare_defenses.plan(args)}
    formal = by["dp-formal-e4"]
    assert (formal.labels["mode"], formal.labels["epsilon"]) == ("formal", 4.0)
    assert formal.config.defenses[0] == DefenseSpec.parse(
        "dp:mode=formal,mechanism=gaussian,target_epsilon=4,epochs=6,clip=2")
    assert by["dpsgd-e4"].labels == {"defense": "dpsgd-e4", "family": "DP-SGD",
                                     "mode": "dpsgd", "epsilon": 4.0}
    assert by["none"].labels["epsilon"] is None and by["depth5"].config.depth == 5


def test_claim_scope_says_what_an_epsilon_covers():
    from splitpriv.defense import PrivacyClaim

    dp = PrivacyClaim("dp", formal=True, epsilon=4.0, delta=1e-5,
                      scope="activation releases of each training beat")
    assert common.claim_scope({"defenses": [dp.to_dict()], "topology": "vanilla"}) == (
        "activation releases of each training beat; client weights not private; labels in the "
        "clear")
    both = PrivacyClaim("dp", formal=True, epsilon=4.0, delta=1e-5,
                        scope="activation releases of each training beat",
                        details={"combined_with_dpsgd": {"epsilon": 8.0}})
    sgd = PrivacyClaim("dpsgd", formal=True, epsilon=4.0, delta=1e-5,
                       scope="client weights (and what is computed from them)")
    text = common.claim_scope({"defenses": [both.to_dict(), sgd.to_dict()],
                               "topology": "ushape"})
    assert text.startswith("end-to-end: ") and "not private" not in text
    assert text.endswith("labels stay on the client (no formal guarantee)")
    assert common.claim_scope({"defenses": [], "topology": "vanilla"}) == "no formal claim"


def test_strongest_names_its_winner_in_the_row():
    cols = common.attack_columns({"strongest": {"winner": "ridge", "linkage": {"k10": {
        "accuracy": 0.5, "advantage": 0.45}}}, "dcor": {"batch_unbiased": {"mean": 0.01}}})
    assert cols["strongest_attack"] == "ridge" and cols["linkage_k10_advantage"] == 0.45
    assert cols["dcor_batch_unbiased"] == 0.01
    assert {"linkage_k10", "linkage_k10_advantage", "linkage_k100_advantage", "strongest_attack",
            "dcor_batch_unbiased", "prior_mean_beat_linkage_k10",
            "prior_class_mean_pearson_r"} <= set(common.attack_column_names(
                common.Planned.attacks))


def test_dp_tradeoff_plans_the_whole_curve_releases_and_the_bottleneck():
    args = common.parse_args(dp_tradeoff.Args, [])
    plan = {p.name: p for p in dp_tradeoff.plan(args)}
    formal = [p for p in plan.values() if p.labels["mode"] == "formal"]
    # the whole curve at one release per epoch, for both cuts, up to epsilon 4096
    for design in ("512", "bottleneck"):
        eps = sorted(p.labels["epsilon"] for p in formal
                     if p.labels["design"] == design and p.labels["releases"] == 30)
        assert eps == [1, 4, 16, 64, 256, 1024, 4096]
    r1 = plan["formal-512-r1-eps1024-s0"]
    r1_dp = r1.config.defenses[0].options
    assert r1_dp["releases"] == 1 and r1_dp["target_epsilon"] == 1024
    assert r1.config.epochs == 30 and r1.config.cut_channels is None
    assert plan["formal-512-r30-eps1024-s0"].config.defenses[0].options["releases"] is None
    bottleneck = plan["formal-bottleneck-r30-eps4096-s0"]
    assert bottleneck.config.cut_channels == 4
    assert bottleneck.config.defenses[0].options["standardise"] is True
    assert {p.labels["releases"] for p in formal} == {1, 3, 10, 30}
    assert plan["none-s0"].attacks == common.Planned.attacks
    full = dp_tradeoff.plan(common.parse_args(dp_tradeoff.Args, ["--full-grid"]))
    assert sum(p.labels["mode"] == "formal" for p in full) == 2 * 7 * 4
