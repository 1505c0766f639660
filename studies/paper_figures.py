"""Every figure of the paper, redrawn from saved results only (never retraining).

Reads the output folders of the other studies (``dp_tradeoff``, ``compare_defenses``, ``depth``;
a missing folder skips its figures) and draws into OUT:

* ``beat_classes``: the five beat classes (mean ± sd and examples);
* ``visual_invertibility``: a raw beat beside its 16 activation channels (the undefended run's
  saved weights applied to the beat; with a paper-mode DP run, its noisy channels too);
* ``per_channel_leakage``: dCor and DTW per channel of the undefended run, beside the paper's
  max and min;
* ``dp_accuracy_vs_epsilon``, ``dp_leakage_vs_epsilon``, ``dp_tradeoff``: from dp_tradeoff's
  results.csv;
* ``defenses_tradeoff``: accuracy vs leakage of every defense with the Pareto front;
* ``reconstructions``: raw vs reconstructed beats (the strongest inversion's saved
  reconstructions, ``strongest.npz``; older results: the decoder's) under each defense, with the
  winner and its re-identification advantage;
* ``depth``: the depth table as a figure.

Each figure is a vector PDF and a PNG with a caption file; OUT/captions.md collects the captions.

    python studies/paper_figures.py                       # reads studies/out/{dp_tradeoff,...}
    python studies/paper_figures.py --quick               # reads the studies' -quick folders
    python studies/paper_figures.py --dp-tradeoff DIR --compare DIR --depth DIR --out DIR
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from splitpriv.io import read_json
from studies import compare_defenses, depth, dp_tradeoff
from studies.common import (
    OKABE_ITO,
    REPO_ROOT,
    FigureSet,
    apply_style,
    budget_text,
    cli,
    dataset_name,
    epsilon_label,
    parse_args,
    read_csv,
)

CLASSES = ["N (normal)", "L (left bundle branch block)", "R (right bundle branch block)",
           "A (atrial premature)", "V (premature ventricular)"]
#: a beat is 201 samples at 360 Hz around the R-peak, resampled to 128 samples
BEAT_MS = 200 / 360 * 1000


@dataclass
class Args:
    dp_tradeoff: str = ""
    """dp_tradeoff output folder (default: studies/out/dp_tradeoff[-quick])"""
    compare: str = ""
    """compare_defenses output folder (default: studies/out/compare_defenses[-quick])"""
    depth: str = ""
    """depth output folder (default: studies/out/depth[-quick])"""
    out: str = ""
    """figure folder (default: studies/out/paper_figures[-quick])"""
    quick: bool = False
    """read (and write) the studies' -quick folders"""
    examples: int = 3
    """beats per defense in the reconstruction figure"""
    settings: list[str] = field(default_factory=list)
    """settings (columns) of the reconstruction figure, e.g. none ushape nopeek-a1 (default: the
    first setting of each defense family, at most 8)"""


def folder(given: str, study: str, quick: bool) -> Path:
    if given:
        return Path(given)
    return REPO_ROOT / "studies" / "out" / (f"{study}-quick" if quick else study)


def time_axis(n: int) -> np.ndarray:
    """Milliseconds from the R-peak of the n samples of a beat (or of a pooled channel)."""
    return np.linspace(-BEAT_MS / 2, BEAT_MS / 2, n)


def is_beat(run) -> bool:
    """Whether the run's inputs are one-lead MIT-BIH beats (the paper's figures as they were);
    other inputs get the same figures drawn for their shape (leads, images)."""
    return tuple(run.input_shape) == (1, 128) and run.config.dataset == "mitdb"


def class_names(run) -> list[str]:
    classes = [str(c) for c in run.pool.classes]
    return CLASSES if dataset_name(run.config.dataset) == "mitdb" and len(classes) == 5 \
        else classes


def draw_sample(ax: plt.Axes, flat: np.ndarray, input_shape: tuple[int, ...], **style) -> None:
    """One input (flattened, as the attacks see it) in its shape: an image's first plane
    (grey scale), or each lead of a signal over time (leads stacked 1.2 apart)."""
    x = np.asarray(flat).reshape(input_shape)
    if len(input_shape) == 3:
        ax.imshow(x[0], cmap="gray_r", vmin=0, vmax=1)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    for lead, signal in enumerate(x):
        ax.plot(time_axis(len(signal)), signal - 1.2 * lead, **style)


def baseline_run(rows: list[dict]) -> Path | None:
    """The undefended run of the first seed, if the results hold one."""
    for r in rows:
        if r.get("defenses") == "none" and int(r.get("depth", 2)) == 2:
            return Path(r["run_dir"])
    return None


_RUNS: dict[str, object] = {}


def load(run_dir: Path):
    """attacks.runs.load_run, cached (the beats are rebuilt from config.json)."""
    from attacks.runs import load_run

    key = str(run_dir)
    if key not in _RUNS:
        _RUNS[key] = load_run(run_dir)
    return _RUNS[key]


def beat_classes(run_dir: Path, figs: FigureSet) -> None:
    run = load(run_dir)
    if not is_beat(run):
        return sample_classes(run, run_dir, figs)
    x = run.x["train"].reshape(len(run.x["train"]), -1).numpy()  # (N, 128)
    y = run.y["train"].numpy()
    t = time_axis(x.shape[1])
    fig, axes = plt.subplots(1, 5, figsize=(8.4, 2.2), sharey=True, layout="constrained")
    for c, ax in enumerate(axes):
        xc = x[y == c]
        for beat in xc[:5]:
            ax.plot(t, beat, color=OKABE_ITO[c], linewidth=0.5, alpha=0.5)
        if len(xc):
            m, sd = xc.mean(0), xc.std(0)
            ax.fill_between(t, m - sd, m + sd, color="0.6", alpha=0.3, linewidth=0)
            ax.plot(t, m, color="black", linewidth=1.2)
        ax.set_title(f"{CLASSES[c]}\n(n = {len(xc)})", fontsize=7)
        ax.set_xlabel("time from R-peak (ms)")
    axes[0].set_ylabel("amplitude (min-max normalised)")
    figs.save(fig, "beat_classes",
              "The five beat classes of the MIT-BIH arrhythmia database as the split model sees "
              "them (128 samples, wavelet-denoised, min-max normalised per record): five "
              "examples per class (colour), the class mean (black) and ± 1 sd (grey), training "
              f"beats of {run_dir.name}.")


def sample_classes(run, run_dir: Path, figs: FigureSet) -> None:
    """``beat_classes`` for other inputs: each class's mean training input in its shape."""
    x, y = run.x["train"].numpy(), run.y["train"].numpy()
    names = class_names(run)
    fig, axes = plt.subplots(1, len(names), figsize=(0.9 * len(names) + 1, 1.8), sharey=True,
                             squeeze=False, layout="constrained")
    for c, ax in enumerate(axes[0]):
        xc = x[y == c]
        if len(xc):
            draw_sample(ax, xc.mean(0), run.input_shape, color="black", linewidth=1)
        ax.set_title(f"{names[c]}\n(n = {len(xc)})", fontsize=7)
    figs.save(fig, "beat_classes",
              f"The {len(names)} classes of {run.config.dataset} (inputs {run.input_shape}) as "
              f"the split model sees them: each class's mean training input, {run_dir.name}.")


def visual_invertibility(run_dir: Path, figs: FigureSet, noisy_dir: Path | None) -> None:
    from attacks.runs import query_client

    runs = [(run_dir, "undefended")] + ([(noisy_dir, "paper-mode DP")] if noisy_dir else [])
    fig = plt.figure(figsize=(8.4, 2.6 * len(runs)), layout="constrained")
    sub = fig.subfigures(len(runs), 1, squeeze=False)
    for (d, what), sf in zip(runs, sub[:, 0], strict=True):
        run = load(d)
        # a whole evaluation batch: paper-mode noise scales with the batch's range
        batch = run.x["train"][: run.config.batch_size]  # (32, 1, 128)
        acts = query_client(run, batch, training=False).numpy()[0]  # (16, 32)
        x = batch[:1]  # (1, 1, 128)
        gs = sf.add_gridspec(4, 6)
        ax = sf.add_subplot(gs[:, :2])
        draw_sample(ax, x.numpy(), run.input_shape, color="black")
        ax.set_title(f"raw input (class {class_names(run)[int(run.y['train'][0])][0]})")
        if len(run.input_shape) == 2:
            ax.set_xlabel("time from R-peak (ms)")
            ax.set_ylabel("amplitude (normalised)")
        for ch in range(min(acts.shape[0], 16)):
            a = sf.add_subplot(gs[ch // 4, 2 + ch % 4])
            side = int(round(acts.shape[1] ** 0.5))
            if len(run.input_shape) == 3 and side * side == acts.shape[1]:  # an image's cut
                a.imshow(acts[ch].reshape(side, side), cmap="viridis")
            else:
                a.plot(time_axis(acts.shape[1]), acts[ch], color=OKABE_ITO[0], linewidth=0.9)
            a.set_xticks([])
            a.set_yticks([])
            a.text(0.02, 0.85, f"ch {ch}", transform=a.transAxes, fontsize=6)
        sf.suptitle(f"{what}: {d.name}, its {acts.shape[0]} activation channels "
                    f"({acts.shape[1]} values each)", fontsize=8)
    figs.save(fig, "visual_invertibility",
              f"Visual invertibility ({run.config.dataset}, model {run.config.model}): a raw "
              "training input (left) beside the first 16 activation "
              "channels the client sends for it (right; same time span, each channel on its own "
              "scale), computed from the saved weights of the undefended run"
              + (" and, below, of a paper-mode DP run (noise included)" if noisy_dir else "")
              + ". Several channels trace the beat's shape.")


def per_channel_leakage(run_dir: Path, figs: FigureSet) -> bool:
    paths = [run_dir / "attacks" / f"{n}.json" for n in ("dcor", "dtw")]
    if not all(p.exists() for p in paths):
        return False  # DTW compares 1D signals only: not drawn for images or several leads
    paper = is_beat(load(run_dir)) and load(run_dir).config.model == "paper"
    dc, dt = (read_json(p)["summary"] for p in paths)
    fig, axes = plt.subplots(1, 2, figsize=(7.0, 2.6), layout="constrained")
    for ax, s, what, ylabel in ((axes[0], dc, "dCor", "distance correlation (unitless)"),
                                (axes[1], dt, "DTW", "DTW distance (normalised amplitude)")):
        v = s["paper"]["per_channel"]
        ax.bar(range(len(v)), v, color=OKABE_ITO[0], label="this run")
        ref = s["paper"]["reference_abuadbba2020_2conv_epoch100"] if paper else {}
        for i, (k, val) in enumerate(sorted(ref.items())):
            ax.axhline(val, color=OKABE_ITO[1 + i], linestyle="--", linewidth=1,
                       label=f"paper {k} ({val})")
        ax.set_xlabel("activation channel")
        ax.set_ylabel(ylabel)
        ax.set_xticks(range(len(v)))
        ax.set_title(f"{what} per channel, paper definition ({s['n_beats']} beats)")
        ax.legend(fontsize=6)
    figs.save(fig, "per_channel_leakage",
              "Leakage per activation channel of the undefended 2-conv model: distance "
              "correlation between the input (average-pooled to 32 samples) and each channel "
              "(left, higher = more leakage) and DTW distance between the raw input and each "
              "channel (right, lower = more similar), mean over beats"
              + ("; dashed lines: the paper's max and min (Abuadbba et al. 2020, epoch 100). "
                 if paper else f" ({load(run_dir).config.dataset}). ") + run_dir.name)
    return True


#: the inversion results the reconstruction figure reads, the first found in a run
INVERSIONS = ("strongest", "decoder")


def inversion_result(run_dir: Path) -> Path | None:
    """RUN/attacks/NAME.npz of the first of :data:`INVERSIONS` the run holds."""
    for name in INVERSIONS:
        path = run_dir / "attacks" / f"{name}.npz"
        if path.exists() and path.with_suffix(".json").exists():
            return path
    return None


def _reconstruction_columns(rows: list[dict], label_key: str, settings: list[str],
                            family_key: str | None) -> dict[str, Path]:
    """The run directory of each column of :func:`reconstructions` (at most 8)."""
    cols: dict[str, Path] = {}
    families: set[str] = set()
    for r in rows:
        name = str(r[label_key])
        if name in cols or inversion_result(Path(r["run_dir"])) is None:
            continue
        if settings:
            if name not in settings:
                continue
        elif family_key is not None:
            if r[family_key] in families:
                continue
            families.add(r[family_key])
        cols[name] = Path(r["run_dir"])
    if settings:
        cols = {s: cols[s] for s in settings if s in cols}
    return dict(list(cols.items())[:8])


def reconstructions(rows: list[dict], label_key: str, figs: FigureSet, examples: int,
                    settings: list[str], family_key: str | None = None) -> bool:
    """Raw vs reconstructed beats (the strongest inversion's), one column per setting (first
    seed): the given settings, else the first of each family (at most 8)."""
    cols = _reconstruction_columns(rows, label_key, settings, family_key)
    if not cols:
        return False
    scores, titles = {}, {}
    for name, d in cols.items():
        path = inversion_result(d)
        assert path is not None
        with np.load(path) as z:
            scores[name] = {k: z[k] for k in ("ids", "reconstructions", "pearson")}
        summary = read_json(path.with_suffix(".json"))["summary"]
        adv = summary.get("linkage", {}).get("k10", {}).get("advantage")
        titles[name] = (f"{name}\n{summary.get('winner', path.stem)}"
                        + (f", adv. {adv:.2f}" if isinstance(adv, float) else ""))
    common = set.intersection(*(set(s["ids"].tolist()) for s in scores.values()))
    ids = sorted(common)[:examples] or scores[next(iter(scores))]["ids"][:examples].tolist()
    run = load(next(iter(cols.values())))
    x = run.x["train"].reshape(len(run.x["train"]), -1).numpy()
    t = time_axis(x.shape[1])
    if not is_beat(run):
        return reconstruction_grid(run, scores, titles, ids, x, figs)
    fig, axes = plt.subplots(len(ids), len(cols), figsize=(1.5 * len(cols) + 0.6,
                                                            1.3 * len(ids) + 0.6),
                             sharex=True, sharey=True, squeeze=False, layout="constrained")
    for j, (name, s) in enumerate(scores.items()):
        where = {int(i): k for k, i in enumerate(s["ids"].tolist())}
        for i, beat_id in enumerate(ids):
            ax = axes[i, j]
            ax.plot(t, x[beat_id], color="black", linewidth=1, label="raw")
            if beat_id in where:
                k = where[beat_id]
                ax.plot(t, s["reconstructions"][k], color=OKABE_ITO[3], linewidth=1,
                        label="reconstructed")
                ax.text(0.03, 0.88, f"r = {s['pearson'][k]:.2f}", transform=ax.transAxes,
                        fontsize=6)
            if i == 0:
                ax.set_title(titles[name], fontsize=7)
            if i == len(ids) - 1:
                ax.set_xlabel("time from R-peak (ms)", fontsize=7)
        axes[0, 0].legend(fontsize=5, loc="lower left")
    for i in range(len(ids)):
        axes[i, 0].set_ylabel("amplitude")
    figs.save(fig, "reconstructions",
              "Reconstructions by the strongest inversion of each run (ridge, the tuned "
              "convolutional or MLP decoder of He et al. 2019, whichever re-identifies the "
              "attacker's held-out beats best; each trained on the releases the server kept of "
              "its auxiliary 10% of training beats, combined as it chose, and refitted on all "
              "of them): raw beat (black) and its reconstruction (vermillion) for the same victim "
              "beats under each defense (columns; first seed; the title names the winner and "
              "its re-identification advantage among 10 beats of the victim's class, 0 = "
              "chance), with the Pearson r of each reconstruction.")
    return True


def reconstruction_grid(run, scores: dict, titles: dict, ids: list[int], x: np.ndarray,
                        figs: FigureSet) -> bool:
    """``reconstructions`` for other inputs, one column per setting: an image beside its
    reconstruction (a pair of columns), a signal's leads with the reconstruction's overlaid."""
    image = len(run.input_shape) == 3
    per = 2 if image else 1
    fig, axes = plt.subplots(len(ids), per * len(scores),
                             figsize=((1.1 if image else 1.7) * len(scores) + 0.6,
                                      (1.0 if image else 1.4) * len(ids) + 0.6),
                             sharex=not image, sharey=not image, squeeze=False,
                             layout="constrained")
    for j, (name, s) in enumerate(scores.items()):
        where = {int(i): k for k, i in enumerate(s["ids"].tolist())}
        for i, beat_id in enumerate(ids):
            raw, rec = axes[i, per * j], axes[i, per * j + per - 1]
            draw_sample(raw, x[beat_id], run.input_shape, color="black", linewidth=1)
            if image:
                rec.axis("off")
            if beat_id in where:
                k = where[beat_id]
                rec.axis("on")
                draw_sample(rec, s["reconstructions"][k], run.input_shape,
                            color=OKABE_ITO[3], linewidth=1)
                rec.text(0.03, 0.03, f"r = {s['pearson'][k]:.2f}", transform=rec.transAxes,
                         fontsize=6)
            if i == 0:
                raw.set_title(titles[name], fontsize=6, loc="left")
    leads = "" if image else (" (lead 0 on top, each further lead 1.2 lower)"
                              if run.input_shape[0] > 1 else "")
    figs.save(fig, "reconstructions",
              f"Reconstructions by the strongest inversion of each run ({run.config.dataset}, "
              f"inputs {run.input_shape}): for the same victim inputs (rows), the raw input "
              + ("(left of each pair) and its reconstruction (right)" if image else
                 f"(black) and its reconstruction (vermillion){leads}")
              + " under each defense (columns; first seed; the title names the winner and its "
              "re-identification advantage among 10 inputs of the victim's class, 0 = chance), "
              "with the Pearson r of each reconstruction.")
    return True


def note(rows: list[dict], folder: Path) -> str:
    """A redrawn figure's caption tail: the runs' budget (read from them) and where they are."""
    return f"Budget: {budget_text(rows)}. Results: {folder}."


def main(argv: list[str] | None = None) -> FigureSet:
    args = parse_args(Args, argv, description=__doc__)
    out = folder(args.out, "paper_figures", args.quick)
    figs = FigureSet(out)
    apply_style()
    dp_dir = folder(args.dp_tradeoff, "dp_tradeoff", args.quick)
    cmp_dir = folder(args.compare, "compare_defenses", args.quick)
    depth_dir = folder(args.depth, "depth", args.quick)
    dp_rows = read_csv(dp_dir / "results.csv") if (dp_dir / "results.csv").exists() else []
    cmp_rows = read_csv(cmp_dir / "results.csv") if (cmp_dir / "results.csv").exists() else []
    depth_rows = (read_csv(depth_dir / "results.csv") if (depth_dir / "results.csv").exists()
                  else [])
    if not (dp_rows or cmp_rows or depth_rows):
        raise SystemExit(f"no results.csv in {dp_dir}, {cmp_dir} or {depth_dir}: run a study "
                         "first")

    base = baseline_run(dp_rows) or baseline_run(cmp_rows) or baseline_run(depth_rows)
    if base is not None and (base / "weights.pt").exists():
        beat_classes(base, figs)
        noisy = [r for r in dp_rows if r.get("mode") == "paper"]
        noisy_dir = (Path(min(noisy, key=lambda r: float(r["epsilon"]))["run_dir"])
                     if noisy else None)
        visual_invertibility(base, figs, noisy_dir)
        per_channel_leakage(base, figs)
    if dp_rows:
        figs.prefix = "dp_"
        dp_tradeoff.draw_figures(dp_rows, figs, note=note(dp_rows, dp_dir))
    if cmp_rows:
        figs.prefix = "defenses_"
        compare_defenses.draw_figures(cmp_rows, figs, note=note(cmp_rows, cmp_dir))
    if depth_rows:
        figs.prefix = ""
        depth.draw_figures(depth_rows, figs, note=note(depth_rows, depth_dir))
    figs.prefix = ""
    if cmp_rows:
        reconstructions(cmp_rows, "defense", figs, args.examples, args.settings, "family")
    elif dp_rows:
        for r in dp_rows:
            r["setting"] = ("none" if r["mode"] == "none"
                            else f"{r['mode']} ε={epsilon_label(r['epsilon'])}")
        reconstructions(dp_rows, "setting", figs, args.examples, args.settings)
    figs.write_captions()
    print(f"wrote {len(figs.captions)} figures to {out}: {', '.join(figs.captions)}")
    return figs


if __name__ == "__main__":
    cli(main)
