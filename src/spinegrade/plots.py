"""Figures of a run and of an evaluation: training curves, confusion matrix, reliability diagram.

Drawn with matplotlib's Agg canvas directly (no pyplot, no global backend), so they work headless and in
worker processes, and written atomically.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .files import atomic_path


def _save(fig, path: str | Path) -> Path:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    FigureCanvasAgg(fig)
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
    return path


def plot_curves(records: Sequence[dict], path: str | Path, score_key: str = "val_wll") -> Path:
    """Training loss and the validation figures per epoch (metrics.jsonl records); best epoch marked."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    ep = [r["epoch"] + 1 for r in records]
    fig = Figure(figsize=(9, 3.6))
    ax1, ax2 = fig.subplots(1, 2)
    ax1.plot(ep, [r["train_loss"] for r in records], "o-", label="train loss")
    ax1.plot(ep, [r.get(score_key, np.nan) for r in records], "o-", label=score_key)
    best = [r for r in records if r.get("best")]
    if best:
        b = best[-1]
        ax1.axvline(b["epoch"] + 1, color="grey", ls=":", label=f"best epoch {b['epoch'] + 1}")
    ax1.set_xlabel("epoch")
    ax1.set_title("loss")
    ax1.legend(fontsize=8)
    keys = [k for k in ("val_acc", "val_bacc") if records and k in records[0]]
    for key in keys:
        ax2.plot(ep, [r[key] for r in records], "o-", label=key)
    ax2.set_xlabel("epoch")
    ax2.set_ylim(0, 1)
    ax2.set_title("validation accuracy")
    if keys:
        ax2.legend(fontsize=8)
    for ax in (ax1, ax2):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    return _save(fig, path)


def plot_confusion(cm: np.ndarray, labels: Sequence[str], path: str | Path, title: str = "") -> Path:
    """Confusion matrix, coloured by row share (recall), annotated with counts."""
    from matplotlib.figure import Figure

    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig = Figure(figsize=(4.8, 4.2))
    ax = fig.subplots()
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(cm.shape[0]):
        for j in range(cm.shape[1]):
            ax.text(j, i, f"{cm[i, j]}\n{share[i, j]:.0%}", ha="center", va="center", fontsize=9,
                    color="white" if share[i, j] > 0.6 else "black")
    ax.set_xticks(range(len(labels)), labels, rotation=20)
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title or "confusion matrix")
    fig.colorbar(im, ax=ax, fraction=0.046, label="share of true class")
    return _save(fig, path)


def plot_reliability(bins: dict, path: str | Path, title: str = "") -> Path:
    """Reliability diagram from `calibration_bins` output: accuracy against confidence, with counts."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.8, 5.2))
    ax, axh = fig.subplots(2, 1, height_ratios=(3, 1), sharex=True)
    edges = np.asarray(bins["edges"])
    centres = (edges[:-1] + edges[1:]) / 2
    width = np.diff(edges)
    count = np.asarray(bins["count"])
    acc = np.where(count > 0, bins["accuracy"], np.nan)
    ax.bar(centres, np.nan_to_num(acc), width=width * 0.9, color="tab:blue", alpha=0.8, label="accuracy")
    ax.plot([0, 1], [0, 1], "k--", lw=1, label="perfect calibration")
    ax.plot(np.where(count > 0, bins["confidence"], np.nan), acc, "o", color="tab:red", label="mean confidence")
    ax.set_ylim(0, 1)
    ax.set_ylabel("accuracy of the top class")
    ax.set_title(title or f"reliability (ECE {bins['ece']:.3f})")
    ax.legend(fontsize=8, loc="upper left")
    axh.bar(centres, count, width=width * 0.9, color="grey")
    axh.set_xlabel("confidence of the top class")
    axh.set_ylabel("rows")
    axh.set_xlim(0, 1)
    return _save(fig, path)
