"""What a training run directory holds, and how later steps (export, compare) read it back."""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

import torch

from training.nets import build_network
from training.run_config import CONFIG_FILE, RunConfig  # config.json: the run, typed

__all__ = ["CONFIG_FILE", "RunConfig"]  # re-exported: a run directory's files are named here
LOG_FILE = "log.csv"  # epoch, train_mae, val_mae, lr, seconds
CHECKPOINT_FILE = "checkpoint.pt"  # last completed epoch: model, optimizer, schedulers, RNG states
BEST_FILE = "best.pt"  # weights of the epoch with the lowest validation MAE
LEARNING_CURVE_FILE = "learning_curve.png"
PARITY_FILE = "val_parity.png"


def write_json(path: Path, value: dict[str, Any]) -> None:
    """Atomically, so a run killed mid-write never leaves half a file."""
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    partial.write_text(json.dumps(value, indent=2, ensure_ascii=False, default=str) + "\n")
    os.replace(partial, path)


def save_torch(path: Path, value: dict[str, Any]) -> None:
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    torch.save(value, partial)
    os.replace(partial, path)


def load_best_model(run_dir: Path) -> tuple[RunConfig, torch.nn.Module]:
    """The run's config and its best-epoch network, on CPU, in eval mode."""
    config = RunConfig.load(run_dir)
    best = run_dir / BEST_FILE
    if not best.exists():
        raise FileNotFoundError(f"{run_dir} has no {BEST_FILE}: the run has not finished an epoch")
    model = build_network(config.net)
    state = torch.load(best, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    model.eval()
    return config, model


def hardware_description(device: torch.device) -> str:
    if device.type == "cuda":
        return f"GPU {torch.cuda.get_device_name(device)}"
    name = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                name = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"CPU {name}, {os.cpu_count()} cores, torch {torch.get_num_threads()} threads"
