"""The loss and accuracy curves of a run, drawn from its metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path


def plot_metrics(csv_path: Path, png_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))

    def series(key: str):
        pts = [(int(r["epoch"]) + 1, float(r[key])) for r in rows if r.get(key) not in (None, "")]
        return [p[0] for p in pts], [p[1] for p in pts]

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(*series(key), marker="o", label=label)
    for key, label in (("train_acc", "train (bit)"), ("val_acc", "validation (bit)"),
                       ("ternary_acc", "validation (ternary)")):
        xs, ys = series(key)
        if xs:
            ax_acc.plot(xs, [100 * y for y in ys], marker="o", label=label)
    ax_loss.set(xlabel="epoch", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(png_path, dpi=100)
    plt.close(fig)
    return png_path
