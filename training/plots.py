"""The two pictures of a run: learning curve and validation parity (matplotlib, no display)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: training runs on servers and in CI

import matplotlib.pyplot as plt
import numpy as np


def learning_curve(
    history: Sequence[dict[str, float]], best_epoch: int | None, unit: str, path: Path
) -> None:
    epochs = [row["epoch"] for row in history]
    figure, axis = plt.subplots(figsize=(6, 4), dpi=120)
    axis.plot(epochs, [row["train_mae"] for row in history], label="train")
    axis.plot(epochs, [row["val_mae"] for row in history], label="validation")
    if best_epoch is not None:
        axis.axvline(best_epoch, color="grey", linestyle=":", label=f"best epoch {best_epoch}")
    axis.set_yscale("log")
    axis.set_xlabel("epoch")
    axis.set_ylabel(f"MAE ({unit})" if unit else "MAE")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


def parity(target: np.ndarray, predicted: np.ndarray, title: str, unit: str, path: Path) -> None:
    figure, axis = plt.subplots(figsize=(5, 5), dpi=120)
    axis.scatter(target, predicted, s=2, alpha=0.3, linewidths=0)
    low = float(min(target.min(), predicted.min())) if len(target) else 0.0
    high = float(max(target.max(), predicted.max())) if len(target) else 1.0
    axis.plot([low, high], [low, high], color="black", linewidth=0.8)
    label = f" ({unit})" if unit else ""
    axis.set_xlabel(f"target{label}")
    axis.set_ylabel(f"predicted{label}")
    axis.set_title(title)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
