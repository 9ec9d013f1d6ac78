"""The loss and accuracy curves of a run, drawn from its metrics.csv."""

from __future__ import annotations

import csv
from pathlib import Path

from bitnetcnn.atomic import replacing


def series(rows: list, key: str) -> tuple:
    """``(epochs, values)`` of one metrics.csv column, epochs numbered as the file, the log and Lightning number
    them (from 0), so that a point on the plot reads as the row and the log line of that epoch."""
    pts = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key) not in (None, "")]
    return [p[0] for p in pts], [p[1] for p in pts]


def plot_metrics(csv_path: Path, png_path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(csv_path, newline="") as f:
        rows = list(csv.DictReader(f))

    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        ax_loss.plot(*series(rows, key), marker="o", label=label)
    for key, label in (("train_acc", "train (bit)"), ("val_acc", "validation (bit)"),
                       ("ternary_acc", "validation (ternary)")):
        xs, ys = series(rows, key)
        if xs:
            ax_acc.plot(xs, [100 * y for y in ys], marker="o", label=label)
    ax_loss.set(xlabel="epoch (from 0, as in metrics.csv)", ylabel="loss", title="loss")
    ax_acc.set(xlabel="epoch (from 0, as in metrics.csv)", ylabel="top-1 accuracy (%)", title="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    with replacing(png_path) as tmp:
        fig.savefig(tmp, dpi=100, format="png")
    plt.close(fig)
    return png_path
