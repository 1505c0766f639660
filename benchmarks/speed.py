"""Training speed: split vs unsplit vs a plain PyTorch loop, and K runs batched as one model.

Measured on the paper protocol's 13,245 training beats, 2-conv model, batch 32, in one process,
medians of repeated epochs timed round-robin (every row sees the same machine state):

- split: :class:`splitpriv.trainer.SplitTrainer` (client and server parties, in-process channel).
- split + test evaluation: a split training epoch followed by the evaluation of the test set,
  what a run (``splitpriv train``, ``benchmarks/reproduce_baseline.py``) spends per epoch less
  its checkpoint writes; x 400 it estimates the paper protocol's 400-epoch run.
- unsplit: :func:`splitpriv.trainer.train_monolithic`, the same network in one module.
- plain loop: the loop a tutorial writes: a DataLoader over a TensorDataset (shuffle, batch 32),
  client and server modules of stock layers (``nn.MaxPool1d``), two ``torch.optim.Adam``,
  ``.item()`` every step for the running loss; once with ``--threads`` like every other row and
  once with torch's default thread count (one per core), as a script that never sets it runs;
  and once more with ``torch.optim.Adam(fused=True)``, the fastest stock optimizer, which the
  split trainer should match (target: split / this row <= 1.0).
- first convolution: forward + backward of the client's first layer (one input channel) as
  ``conv1d`` and as :func:`splitpriv.models.same_conv1d` (a batched matrix product), for 1, 3
  and 10 stacked runs.
- max-pool: forward + backward of :class:`splitpriv.models.MaxPool2` against ``nn.MaxPool1d(2)``
  on the paper model's two pool inputs at batch 32, a smaller one and 10 batched runs' (the
  numbers behind :data:`splitpriv.models.PAIR_MAX_MIN_NUMEL`).
- batched: :class:`splitpriv.batched.BatchedSplitTrainer` with K = 1, 2, 5, 10 seeds, against K
  times one split epoch.
- leakage metrics: beat-channel pairs per second of the paper's per-channel dCor
  (:func:`splitpriv.dcor.dcor_per_channel`, vectorised over beats) against a loop of
  ``dcor.distance_correlation`` calls, and of DTW (:func:`attacks.measures.dtw_pairs`,
  dtaidistance's C routine) against a loop of ``dtaidistance.dtw.distance_fast`` calls, on real
  beats and the activations of an untrained 2-conv client (the loops are timed on a sample of
  pairs).

Peak resident memory of the process is reported. ``--device auto`` (the default) runs the
training rows on CUDA where torch sees one, else on the CPU; the output and the JSON say which
(the max-pool and leakage-metric rows always run on the CPU). Besides the table it prints the two
ratios the trainer is held to: split / plain loop with fused Adam (target <= 1.0) and the plain
stock-Adam loop / split (the split trainer's speed-up over the loop a tutorial writes).
Writes OUT/speed.json and OUT/speed.md.

    python benchmarks/speed.py            # 3 repeats
    python benchmarks/speed.py --quick    # 1 repeat on 2,000 beats
"""

from __future__ import annotations

import dataclasses
import math
import resource
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import _unshadow  # noqa: F401, I001  (first: keeps benchmarks/defenses.py from shadowing)
import dcor
import torch
from dtaidistance import dtw
from torch import nn

from attacks.measures import dtw_pairs, paper_pool
from splitpriv.batched import BatchedSplitTrainer
from splitpriv.dcor import dcor_per_channel
from splitpriv.io import resolve_device, torch_threads, write_json, write_text
from splitpriv.models import (
    PAIR_MAX_MIN_NUMEL,
    MaxPool2,
    ModelConfig,
    build_models,
    same_conv1d,
)
from splitpriv.options import parse_dataclass_args
from splitpriv.run import TrainConfig, load_tensors
from splitpriv.trainer import SplitTrainer, train_monolithic


@dataclass
class Args:
    repeats: int = 3
    """timed epochs per row (after one warm-up epoch); the median is reported"""
    threads: int = 1
    """torch threads"""
    ks: tuple[int, ...] = (1, 2, 5, 10)
    """batched run counts"""
    subset: int | None = None
    """training rows (None: all 13,245)"""
    device: str = "auto"
    """torch device of the training rows: auto (CUDA where present, else cpu), cpu, cuda..."""
    metric_beats: int = 10_000
    """beats for the leakage-metric throughput (x 16 channels = pairs)"""
    metric_loop_pairs: int = 2_000
    """pairs timed for the per-pair reference loops"""
    default_threads_row: bool = True
    """time the plain loop with torch's default thread count too (slow where the other cores are
    busy: 110 s/epoch on a 2-core machine with one core taken)"""
    out: str = "benchmarks/out/speed"
    quick: bool = False


def tutorial_models(cfg: ModelConfig, device: torch.device):
    """The split model as a tutorial builds it: same layers and initial weights, the client a
    plain ``nn.Sequential`` of stock layers (``nn.MaxPool1d`` in place of
    :class:`splitpriv.models.MaxPool2`, every convolution ``nn.Conv1d``'s own kernel)."""
    models = build_models(cfg, seed=0).to(device)
    models.client = nn.Sequential(*(nn.MaxPool1d(2) if isinstance(layer, MaxPool2) else layer
                                    for layer in models.client.layers))
    return models


def plain_loop_epoch(models, x: torch.Tensor, y: torch.Tensor, opts) -> float:
    """One epoch of the loop a tutorial writes (DataLoader, per-step host sync)."""
    loader = torch.utils.data.DataLoader(
        torch.utils.data.TensorDataset(x, y), batch_size=32, shuffle=True
    )
    total = 0.0
    for xb, yb in loader:
        a = models.client(xb)
        received = a.detach().requires_grad_()
        loss = nn.functional.cross_entropy(models.server(received), yb)
        for o in opts:
            o.zero_grad()
        loss.backward()
        a.backward(received.grad)
        for o in opts:
            o.step()
        total += loss.item()
    return total


# The optimizer (splitpriv.optim), one Adam step of the server's 4 tensors on one thread, as
# measured when it was written (2026-12-02/03; moved here from its docstring): torch's fused
# kernel 72-81 us, the stock single-tensor path 195-199 us, the project's former flat-buffer Adam
# 152-157 us (so it was removed); on a contended machine ``Adam(fused=True).step`` 91-143 us and
# FusedAdam's short path to the same kernel 47-63 us, of which the kernel is 37-43 us. The rows
# below time it inside whole epochs: "plain loop, fused Adam" against "split".
def plain_loop(cfg: ModelConfig, device: torch.device, x: torch.Tensor, y: torch.Tensor,
               threads: int | None = None, fused: bool = False) -> Callable[[], object]:
    """One epoch of the plain loop as a callable, on its own tutorial models and two Adams
    (``fused``: torch's fused kernel), run with ``threads`` torch threads (None: the benchmark's
    setting)."""
    models = tutorial_models(cfg, device)
    opts = [torch.optim.Adam(m.parameters(), lr=1e-3, fused=fused or None)
            for m in models.modules().values()]

    def epoch() -> None:
        with torch_threads(threads):
            plain_loop_epoch(models, x, y, opts)

    return epoch


def _sync() -> None:
    """Wait for queued CUDA work (a no-op without CUDA), so that a timing covers its kernels."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


def interleaved_times(fns: dict[str, Callable[[], object]], repeats: int
                      ) -> dict[str, list[float]]:
    """Seconds of each function per round, timed round-robin (one warm-up call each first), so
    that a drift of the machine's speed (a busy neighbour, frequency scaling) hits every row
    alike rather than whichever ran last."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync()
            t0 = time.perf_counter()
            fn()
            _sync()
            times[name].append(time.perf_counter() - t0)
    return times


def paired_ratio(times: dict[str, list[float]], a: str, b: str) -> float:
    """Median over rounds of a's time over b's in the same round."""
    return statistics.median(x / y for x, y in zip(times[a], times[b], strict=True))


def split_unsplit_epochs(
    x: torch.Tensor, y: torch.Tensor, device: torch.device
) -> dict[str, Callable[[], object]]:
    """One training epoch of the split trainer and of the same network unsplit, as callables."""
    cfg = ModelConfig()
    split = SplitTrainer(build_models(cfg, seed=0).to(device), x, y, seed=0)
    unsplit = build_models(cfg, seed=0).to(device).monolithic()
    epoch = iter(range(1, 10**9))
    return {
        "split": lambda: split.train_epoch(next(epoch)),
        "unsplit": lambda: train_monolithic(unsplit, x, y, seed=next(epoch)),
    }


#: the row of a training epoch followed by the test set's evaluation
SPLIT_EVAL = "split + test evaluation"


def split_with_evaluation(x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor,
                          y_test: torch.Tensor, device: torch.device) -> Callable[[], object]:
    """One epoch as a run spends it (less the checkpoint): train, then evaluate the test set."""
    trainer = SplitTrainer(build_models(ModelConfig(), seed=0).to(device), x, y, seed=0)
    epoch = iter(range(1, 10**9))

    def run() -> None:
        e = next(epoch)
        trainer.train_epoch(e)
        trainer.evaluate(x_test, y_test, epoch=e, phase="test")

    return run


def describe(device: torch.device) -> str:
    """The device in words: ``cuda:0 (NVIDIA ...)`` or ``cpu (N threads)``."""
    if device.type == "cuda":
        return f"{device} ({torch.cuda.get_device_name(device)})"
    return f"{device} ({torch.get_num_threads()} torch thread(s))"


def split_unsplit_seconds(
    x: torch.Tensor, y: torch.Tensor, repeats: int, device: torch.device
) -> dict[str, float]:
    """Median seconds per training epoch of the split trainer and of the same network unsplit."""
    times = interleaved_times(split_unsplit_epochs(x, y, device), repeats)
    return {name: statistics.median(ts) for name, ts in times.items()}


#: Pool inputs timed: the paper model's first and second pool at batch 32, a smaller one (below
#: :data:`splitpriv.models.PAIR_MAX_MIN_NUMEL`), and 10 batched runs' second pool (the grouped
#: (B, K * C, L) layout of :mod:`splitpriv.batched`).
POOL_SHAPES = ((32, 16, 128), (32, 16, 64), (32, 16, 32), (32, 160, 64))
# What set splitpriv.models.PAIR_MAX_MIN_NUMEL (moved here from its comment): forward + backward,
# one thread, a contended 2-core machine, interleaved medians of this table (2026-12-03):
# (32, 16, 128) native 597-716 us, pair-max 316-443; (32, 16, 64) 293-433 / 219-353; (32, 16, 32)
# 129 / 217 (native wins); (512, 16, 128) 8,785 / 3,806. The pair-max pays a fixed cost (three
# small kernels, a Python autograd node) and saves ~2 ns per input element: torch's CPU max-pool
# with gradient took ~5 ns per element, 15x its no-gradient kernel. Inside it, the NaN test on the
# output's sum took 4 us, the search for NaNs on the strided half 22 us (so it runs only when
# there is one); ``arange.add(take)`` (int64 + bool) took 10x the in-place form on (32, 160, 64);
# the form ``torch.func`` transforms require binds its arguments with ``inspect.signature`` on
# every call, ~25 us, hence the eager form outside transforms.


def microseconds(fns: dict[str, Callable[[], object]], repeats: int, calls: int = 200
                 ) -> dict[str, float]:
    """Median microseconds of one call of each function, interleaved rounds of ``calls``."""
    def calls_of(fn: Callable[[], object]) -> Callable[[], None]:
        def run() -> None:
            for _ in range(calls):
                fn()
        return run

    times = interleaved_times({name: calls_of(fn) for name, fn in fns.items()}, max(repeats, 3))
    return {name: 1e6 * statistics.median(ts) / calls for name, ts in times.items()}


def pool_microseconds(shape: tuple[int, ...], repeats: int) -> dict[str, float]:
    """Median microseconds of one forward + backward of each max-pool on a ``shape`` input."""
    x = torch.randn(*shape).requires_grad_()
    g = torch.randn(*shape[:-1], shape[-1] // 2)
    return microseconds({name: lambda pool=pool: pool(x).backward(g)
                         for name, pool in (("nn.MaxPool1d(2)", nn.MaxPool1d(2)),
                                            ("MaxPool2", MaxPool2()))}, repeats)


#: Stacked runs whose first convolution is timed: the paper model's (K = 1) at batch 32, and
#: K runs' as :mod:`splitpriv.batched` groups them
FIRST_CONV_RUNS = (1, 3, 10)


# splitpriv.models.same_conv1d (moved here from its docstring; README "Training speed"): the
# paper model's (32, 1, 128) -> (32, 16, 128) 472 -> 322 us; 3 stacked runs 733 -> 478 us;
# 10 stacked runs 2.49 -> 1.22 ms (2026-12-03, one thread, interleaved medians). Tried for the
# 16-channel convolutions and dropped, within this machine's noise: a matrix product over unfolded
# columns (809-1,052 against 761-873 us), the bias gradient summed apart, a channels-last layout.
def first_conv_microseconds(runs: int, repeats: int) -> dict[str, float]:
    """Median microseconds of one forward + backward of the client's first convolution (one
    input channel, 16 outputs, kernel 7) for ``runs`` stacked runs on (32, runs, 128) beats:
    ``conv1d`` (oneDNN) against :func:`splitpriv.models.same_conv1d`."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(32, runs, 128, generator=gen)
    w = torch.randn(runs * 16, 1, 7, generator=gen).requires_grad_()
    b = torch.randn(runs * 16, generator=gen).requires_grad_()
    g = torch.randn(32, runs * 16, 128, generator=gen)
    return microseconds({
        "conv1d": lambda: nn.functional.conv1d(x, w, b, padding=3, groups=runs).backward(g),
        "same_conv1d": lambda: same_conv1d(x, w, b, groups=runs).backward(g),
    }, repeats)


def metric_throughput(x: torch.Tensor, n_loop: int) -> dict[str, dict[str, float]]:
    """Beat-channel pairs per second: our dCor and DTW against per-pair library loops."""
    with torch.no_grad():
        acts = build_models(ModelConfig(), seed=0).client(x).double()  # (N, 16, 32)
    pooled, raw = paper_pool(x, acts.shape[-1]), x.reshape(len(x), -1).double()  # (N,32),(N,128)
    n_pairs = acts.shape[0] * acts.shape[1]
    sample = [(i % len(x), i % acts.shape[1]) for i in range(0, n_loop * 7, 7)][:n_loop]
    p_np, r_np, a_np = pooled.numpy(), raw.numpy(), acts.numpy()

    def timed(fn: Callable[[], object]) -> float:
        t0 = time.perf_counter()
        fn()
        return time.perf_counter() - t0

    ours_dcor = timed(lambda: dcor_per_channel(pooled, acts))
    loop_dcor = timed(lambda: [dcor.distance_correlation(p_np[i], a_np[i, c]) for i, c in sample])
    ours_dtw = timed(lambda: dtw_pairs(raw, acts))
    loop_dtw = timed(lambda: [dtw.distance_fast(r_np[i], a_np[i, c], use_pruning=False)
                              for i, c in sample])
    return {
        "dcor (paper, per channel)": {"ours": n_pairs / ours_dcor, "loop": n_loop / loop_dcor},
        "dtw": {"ours": n_pairs / ours_dtw, "loop": n_loop / loop_dtw},
    }


def main() -> None:
    args = parse_dataclass_args(Args, None, __doc__)
    if args.quick:
        args = dataclasses.replace(args, repeats=1, subset=args.subset or 2000, ks=(1, 2),
                                   metric_beats=500, metric_loop_pairs=200)
    default_threads = torch.get_num_threads()  # what a loop that never sets it runs with
    torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    data, _ = load_tensors(TrainConfig(protocol="paper", device=str(device)), device)
    x, y = data.x_train[: args.subset], data.y_train[: args.subset]
    cfg = ModelConfig()

    fns = {
        **split_unsplit_epochs(x, y, device),
        SPLIT_EVAL: split_with_evaluation(x, y, data.x_test, data.y_test, device),
        "plain loop": plain_loop(cfg, device, x, y),
        "plain loop, fused Adam": plain_loop(cfg, device, x, y, fused=True),
    }
    if args.default_threads_row:
        fns[f"plain loop, torch default threads ({default_threads})"] = plain_loop(
            cfg, device, x, y, threads=default_threads)
    for k in args.ks:
        runs = [build_models(cfg, seed=s).to(device) for s in range(k)]
        fns[f"batched {k}"] = BatchedSplitTrainer(runs, x, y, seeds=list(range(k))).train_epoch
    times = interleaved_times(fns, args.repeats)
    seconds = {name: statistics.median(ts) for name, ts in times.items()}
    rows = {name: s for name, s in seconds.items() if not name.startswith("batched")}
    split_over_fused = paired_ratio(times, "split", "plain loop, fused Adam")
    stock_over_split = paired_ratio(times, "plain loop", "split")
    minutes_400 = 400 * rows[SPLIT_EVAL] / 60
    batched = {k: seconds[f"batched {k}"] for k in args.ks}
    metrics = metric_throughput(data.x_train[: args.metric_beats].cpu(), args.metric_loop_pairs)
    pools = {"x".join(map(str, shape)): pool_microseconds(shape, args.repeats)
             for shape in POOL_SHAPES}
    convs = {k: first_conv_microseconds(k, args.repeats) for k in FIRST_CONV_RUNS}
    peak_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

    lines = [
        f"Device: {describe(device)}.",
        "",
        f"Seconds per training epoch ({len(y):,} beats, batch 32, {device}, "
        f"{args.threads} thread(s), median of {args.repeats} rounds; ratios: median of the "
        f"per-round ratios; '{SPLIT_EVAL}': a training epoch and the evaluation of the "
        f"{len(data.y_test):,} test beats, as a run does every epoch):",
        "",
        "| loop | s/epoch (min-max) | vs unsplit | vs plain loop | vs plain loop, fused Adam |",
        "|---|---|---|---|---|",
    ]
    for name, s in rows.items():
        lines.append(f"| {name} | {s:.3f} ({min(times[name]):.3f}-{max(times[name]):.3f}) | "
                     f"{paired_ratio(times, name, 'unsplit'):.2f}x | "
                     f"{paired_ratio(times, name, 'plain loop'):.2f}x | "
                     f"{paired_ratio(times, name, 'plain loop, fused Adam'):.2f}x |")
    lines += [
        "",
        f"split / plain loop, fused Adam: {split_over_fused:.3f} (target <= 1.0); "
        f"plain loop (stock Adam) / split: {stock_over_split:.2f}x (the split trainer's speed-up; "
        "aim 2x).",
        f"400 epochs of train + test evaluation at {rows[SPLIT_EVAL]:.3f} s/epoch: "
        f"{minutes_400:.1f} min (without a run's per-epoch checkpoint writes).",
    ]
    lines += ["", "| K runs batched | s/epoch | vs 1 split run | vs K split runs |",
              "|---|---|---|---|"]
    for k, s in batched.items():
        ratio = paired_ratio(times, f"batched {k}", "split")
        lines.append(f"| {k} | {s:.3f} | {ratio:.2f}x | {ratio / k:.2f}x |")
    lines += ["", "| leakage metric | ours (pairs/s) | per-pair loop (pairs/s) | speed-up |",
              "|---|---|---|---|"]
    for name, m in metrics.items():
        lines.append(f"| {name} | {m['ours']:,.0f} | {m['loop']:,.0f} | "
                     f"{m['ours'] / m['loop']:.1f}x |")
    lines += ["", "| max-pool input (forward + backward, CPU) | nn.MaxPool1d(2) (us) | "
              "MaxPool2 (us) | MaxPool2 takes |", "|---|---|---|---|"]
    for shape, us in zip(POOL_SHAPES, pools.values(), strict=True):
        kernel = "pair-max" if math.prod(shape) > PAIR_MAX_MIN_NUMEL else "native"
        lines.append(f"| {shape} | {us['nn.MaxPool1d(2)']:.0f} | {us['MaxPool2']:.0f} | "
                     f"{kernel} |")
    lines += ["", "| first convolution, K stacked runs (forward + backward, CPU) | conv1d (us) | "
              "same_conv1d (us) | speed-up |", "|---|---|---|---|"]
    for k, us in convs.items():
        lines.append(f"| K = {k}: (32, {k}, 128) -> (32, {16 * k}, 128) | {us['conv1d']:.0f} | "
                     f"{us['same_conv1d']:.0f} | {us['conv1d'] / us['same_conv1d']:.2f}x |")
    lines.append("")
    lines.append(f"Peak resident memory: {peak_mib:.0f} MiB.")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    write_json(out / "speed.json", {
        "seconds_per_epoch": rows, "batched_seconds_per_epoch": batched,
        "seconds_per_round": times,
        "split_over_unsplit": paired_ratio(times, "split", "unsplit"),
        "plain_over_split": paired_ratio(times, "plain loop", "split"),
        "split_over_plain_fused_adam": split_over_fused,
        "stock_loop_over_split": stock_over_split,
        "split_with_eval_seconds_per_epoch": rows[SPLIT_EVAL],
        "minutes_400_epochs_train_and_eval": minutes_400,
        "maxpool_microseconds": pools,
        "first_conv_microseconds": {str(k): us for k, us in convs.items()},
        "batched_over_split": {str(k): paired_ratio(times, f"batched {k}", "split")
                               for k in args.ks},
        "metric_pairs_per_second": metrics,
        "peak_rss_mib": peak_mib, "n_train": len(y), "n_test": len(data.y_test),
        "device": str(device), "device_name": describe(device),
        "args": dataclasses.asdict(args),
    })
    write_text(out / "speed.md", table + "\n")


if __name__ == "__main__":
    main()
