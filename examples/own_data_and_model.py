"""Your own arrays and your own split network through the Python API only: train it undefended
and under formal activation DP, attack every run with the strongest inversion, and draw the
privacy-utility trade-off (docs/api.md, "Your own data and model").

    python examples/own_data_and_model.py --out runs/own          # a few minutes on a laptop CPU

The arrays here are scikit-learn's 8x8 digits (real, shipped offline) standing in for yours:
any (N, C, *spatial) float array, (N,) integer labels and, if you have them, (N,) subjects. The
network is an ``nn.Module`` of your own, cut where you choose: the client's part runs where the
data is, the server's on the other side. tests/test_own_data_api.py runs this script.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from torch import nn

import splitpriv


class Client(nn.Module):
    """The data owner's layers: (B, 1, 8, 8) -> the cut (B, 8, 4, 4)."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(channels, 8, 3, padding=1)
        self.pool = nn.MaxPool2d(2)

    def forward(self, x):
        return self.pool(nn.functional.relu(self.conv(x)))


def my_split(input_shape, n_classes):
    """The split: (client, server, head); the head is the server's last layer in the vanilla
    topology and stays with the client when U-shaped."""
    client = Client(input_shape[0])
    server = nn.Sequential(nn.Flatten(), nn.Linear(8 * 4 * 4, 64), nn.ReLU())
    return client, server, nn.Linear(64, n_classes)


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/own_data_and_model")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--epsilons", default="none,16,4",
                        help="formal DP's target epsilon per image, none: undefended")
    parser.add_argument("--victims", type=int, default=500)
    parser.add_argument("-o", dest="options", action="append", default=[],
                        metavar="KEY=VALUE", help="an option of the strongest attack "
                        "(decoder_epochs=10 for a quick look)")
    args = parser.parse_args(argv)
    options = dict(o.split("=", 1) for o in args.options)

    digits = load_digits()
    x = (digits.images / 16.0).astype(np.float32)[:, None]  # (1797, 1, 8, 8): your arrays
    splitpriv.register_arrays("my-arrays", x, digits.target)
    splitpriv.register_model("my-split", my_split)

    rows = []
    for eps in args.epsilons.split(","):
        defenses = [] if eps == "none" else [
            f"dp:mode=formal,mechanism=gaussian,target_epsilon={eps}"]
        run = splitpriv.train(dataset="my-arrays", model="my-split", epochs=args.epochs,
                              defenses=defenses, out=Path(args.out) / f"eps-{eps}")
        attack = splitpriv.attack(run, "strongest", aux="train:0.2",
                                  max_victims=args.victims, **options)
        rows.append({"epsilon": eps, "test_accuracy": run.result["test_accuracy"],
                     "reid_k10_advantage": attack["headline"]["reid_across_k10_advantage"]})
        print(rows[-1])
    draw(rows, Path(args.out) / "tradeoff.png")
    return rows


def draw(rows: list[dict], path: Path) -> None:
    """Accuracy against the strongest attack's re-identification advantage, one point a run."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(4.5, 3.5))
    adv = [r["reid_k10_advantage"] for r in rows]
    acc = [r["test_accuracy"] for r in rows]
    ax.plot(adv, acc, "o-", color="#0072B2")
    for r, a, c in zip(rows, adv, acc, strict=True):
        ax.annotate("no defense" if r["epsilon"] == "none" else f"DP eps={r['epsilon']}",
                    (a, c), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xlabel("re-identification advantage (k=10; 0 chance, 1 always)")
    ax.set_ylabel("test accuracy (%)")
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)
    print(f"figure: {path}")


if __name__ == "__main__":
    main()
