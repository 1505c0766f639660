"""Every study figure rendered from a fixture (tests/data/study_results/: the results.csv of the
default-budget dp_tradeoff, compare_defenses and depth runs of 2026-12-07, run_dir made relative
and each run's chance accuracy added from its result.json), checked the way a reviewer looks at
it: legends outside the axes at a readable size, no "(+N)" label, chance at the majority class
with its label, the undefended model named, no line across an epsilon that was not measured."""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
from matplotlib.legend import Legend
from matplotlib.lines import Line2D
from matplotlib.text import Text

from studies import common, compare_defenses, depth, dp_tradeoff

DATA = Path(__file__).parent / "data" / "study_results"
#: paper-unique's test set: 3000 beats of N, L, R and V and 1245 of A; always guessing a
#: 3000-beat class scores 3000 / 13245
MAJORITY = 100 * 3000 / 13245  # 22.650...%
STUDIES = {"dp_tradeoff": (dp_tradeoff, ["accuracy_vs_epsilon", "leakage_vs_epsilon",
                                         "tradeoff"]),
           "compare_defenses": (compare_defenses, ["tradeoff"]),
           "depth": (depth, ["depth"])}


@pytest.fixture(scope="module", params=sorted(STUDIES))
def drawn(request, tmp_path_factory) -> tuple[str, dict[str, plt.Figure], common.FigureSet]:
    """A study's figures drawn from its fixture, each kept (as saved) for inspection."""
    study = request.param
    module, _ = STUDIES[study]
    rows = common.read_csv(DATA / f"{study}.csv")
    kept: dict[str, plt.Figure] = {}
    figs = common.FigureSet(tmp_path_factory.mktemp(study))
    save = figs.save

    def keep(fig, name, caption):
        fig.canvas.draw()  # lay the figure out as saved, so that extents are final
        fig.test_renderer = fig.canvas.get_renderer()  # closed after saving: keep its renderer
        kept[name] = fig
        return save(fig, name, caption)

    figs.save = keep  # type: ignore[method-assign]
    module.draw_figures(rows, figs, f"Budget: {common.budget_text(rows)}.")
    return study, kept, figs


def texts(fig: plt.Figure) -> list[Text]:
    return [t for t in fig.findobj(Text) if t.get_text().strip() and t.get_visible()]


def test_each_figure_is_drawn_and_captioned(drawn):
    study, kept, figs = drawn
    assert sorted(kept) == sorted(STUDIES[study][1])
    for name in kept:
        caption = figs.captions[name]
        assert "(+" not in caption and "over seeds" not in caption
        assert (figs.folder / f"{name}.png").stat().st_size > 10_000


def test_legends_sit_outside_every_axes_at_a_readable_size(drawn):
    _, kept, _ = drawn
    for name, fig in kept.items():
        renderer = fig.test_renderer
        legends = fig.findobj(Legend)
        assert legends, name
        for legend in legends:
            box = legend.get_window_extent(renderer)
            for ax in fig.axes:
                assert not box.overlaps(ax.get_window_extent(renderer)), (name, "legend on axes")
            assert min(t.get_fontsize() for t in legend.get_texts()) >= 8, name
        assert min(t.get_fontsize() for t in texts(fig)) >= 7, name


def test_no_label_hides_other_settings(drawn):
    _, kept, _ = drawn
    for name, fig in kept.items():
        assert not [t.get_text() for t in texts(fig) if "(+" in t.get_text()], name


def test_chance_is_the_majority_class_with_its_label(drawn):
    study, kept, figs = drawn
    label = f"chance: majority class ({MAJORITY:.1f}%)"
    for name, fig in kept.items():
        accuracy_axes = [ax for ax in fig.axes if "accuracy" in ax.get_ylabel()
                         and ax.get_ylim()[0] <= MAJORITY <= ax.get_ylim()[1]]
        for ax in accuracy_axes:
            lines = [ln for ln in ax.get_lines() if ln.get_label() == label]
            assert lines, (name, "no chance line")
            assert lines[0].get_ydata()[0] == pytest.approx(MAJORITY)
            assert not [ln for ln in ax.get_lines() if list(ln.get_ydata()) == [20.0, 20.0]]
    if study == "depth":  # accuracies of 95-99%: the chance level is said in the caption
        assert f"{MAJORITY:.1f}%, below the accuracy axis" in figs.captions["depth"]


def test_the_undefended_model_is_named(drawn):
    study, kept, _ = drawn
    for name, fig in kept.items():
        if study == "depth":
            continue  # every depth is undefended
        words = " ".join(t.get_text() for t in texts(fig))
        assert "no defense" in words, name


def test_lines_join_only_neighbouring_measured_epsilons(drawn):
    study, kept, _ = drawn
    if study != "dp_tradeoff":
        pytest.skip("epsilon axes are dp_tradeoff's")
    rows = common.read_csv(DATA / "dp_tradeoff.csv")
    grid = sorted({float(r["epsilon"]) for r in rows if r["mode"] == "formal"})
    # 1 release per beat is measured at 16 and 1024 only: no line may join them across 64, 256
    assert {16.0, 64.0, 256.0, 1024.0} <= set(grid)
    for name in ("accuracy_vs_epsilon", "leakage_vs_epsilon"):
        ax = kept[name].axes[0]
        joined = 0
        for line in ax.get_lines():
            xs = [float(x) for x in line.get_xdata()]
            if len(xs) < 2 or line.get_linestyle() in ("None", "none", "") or \
                    not set(xs) <= set(grid):
                continue  # markers, or a reference line across the whole axis
            steps = [grid.index(b) - grid.index(a) for a, b in zip(xs, xs[1:], strict=False)]
            assert steps and all(s == 1 for s in steps), (name, xs)
            joined += 1
        assert joined >= 2, name  # the 30-release curves of both cuts are drawn as lines
        markers = [ln for ln in ax.findobj(Line2D) if ln.get_marker() not in (None, "None", "")]
        points = {(float(x), float(y)) for ln in markers
                  for x, y in zip(ln.get_xdata(), ln.get_ydata(), strict=False)
                  if math.isfinite(float(y))}
        assert sum(1 for x, _ in points if x == 1024.0) >= 8  # every release budget at 1024
