"""Small real training runs for the tests: the CLI with CPU-friendly settings, and the run's log."""

from __future__ import annotations

import csv
from pathlib import Path

from app.cli import main


def train_run(folder: Path, out: Path, *extra: str) -> int:
    """``ibrnet train`` on a small folder of real rows: batch 64, lr 1e-3, one thread."""
    return main(
        ["train", "--data", str(folder), "--out", str(out), "--batch-size", "64", "--lr", "1e-3",
         "--no-progress", "--threads", "1", *extra]
    )  # fmt: skip


def read_log(run: Path) -> list[dict[str, str]]:
    """The run's log.csv, one dict per epoch."""
    with (run / "log.csv").open() as handle:
        return list(csv.DictReader(handle))
