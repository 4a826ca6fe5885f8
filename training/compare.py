"""``ibrnet compare``: several architectures on one dataset, one table like the papers'.

Each network trains in ``OUT/<arch>`` with the same data, seed and schedule, is selected on
validation (best-epoch weights) and scored once on test. A random forest on the physical
attributes (``pa``) is the classical baseline. An interrupted comparison resumes: runs with a
checkpoint continue, finished ones are only re-scored.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import torch

from training.data import DataRequest, load_dataset
from training.metrics import regression_metrics
from training.run_config import RunConfig, TrainConfig
from training.run_dir import CHECKPOINT_FILE, load_best_model
from training.train import command_line, config_from_args, predict, train

NAMES = {
    "ibrnet": "iBRNet",
    "brnet": "BRNet",
    "irnet": "IRNet-17",
    "elemnet": "ElemNet-17",
    "attention": "Element attention",
    "rf": "Random forest",
}


@dataclass
class Row:
    model: str
    features: str
    parameters: str
    epochs: str
    best_epoch: str
    wall_time_s: float
    val_mae: float
    test_mae: float


def best_epoch_mae(run_dir: Path, device: str = "cpu") -> tuple[RunConfig, dict[str, float]]:
    """The run's config, and its best-epoch network's MAE on validation and test (scored once)."""
    saved, model = load_best_model(run_dir)
    model = model.to(device)
    dataset = load_dataset(saved.data, splits=("val", "test"))
    mae = {}
    for split in ("val", "test"):
        x = torch.from_numpy(dataset.splits[split].x).to(device)
        predicted = predict(model, x, TrainConfig.eval_batch_size).cpu().numpy()
        mae[split] = regression_metrics(dataset.splits[split].y, predicted)["mae"]
    return saved, mae


def _network_row(config: TrainConfig, request: DataRequest, out: Path, progress: bool) -> Row:
    run_dir = out / config.arch
    result = train(config, request, run_dir, resume=(run_dir / CHECKPOINT_FILE).exists(), progress=progress)
    saved, mae = best_epoch_mae(run_dir)
    return Row(
        model=NAMES[config.arch],
        features=request.features,
        parameters=f"{saved.parameters:,}",
        epochs=str(result.epochs_completed),
        best_epoch=str(result.best_epoch),
        wall_time_s=result.wall_time_s,
        val_mae=mae["val"],
        test_mae=mae["test"],
    )


def _forest_row(request: DataRequest, trees: int, seed: int, threads: int | None) -> Row:
    from sklearn.ensemble import RandomForestRegressor

    dataset = load_dataset(request)
    started = time.monotonic()
    forest = RandomForestRegressor(n_estimators=trees, random_state=seed, n_jobs=threads or -1)
    forest.fit(dataset.splits["train"].x, dataset.splits["train"].y)
    wall = time.monotonic() - started
    mae = {
        split: regression_metrics(dataset.splits[split].y, forest.predict(dataset.splits[split].x))["mae"]
        for split in ("val", "test")
    }
    nodes = sum(tree.tree_.node_count for tree in forest.estimators_)
    return Row(NAMES["rf"], request.features, f"{nodes:,} nodes", "-", "-", wall, mae["val"], mae["test"])


def markdown(rows: list[Row], dataset: str, unit: str) -> str:
    head = (
        f"| model | features | parameters | epochs | best epoch | wall time (min) | val MAE ({unit}) "
        f"| test MAE ({unit}) |\n|---|---|---|---|---|---|---|---|"
    )
    body = [
        f"| {r.model} | {r.features} | {r.parameters} | {r.epochs} | {r.best_epoch} "
        f"| {r.wall_time_s / 60:.1f} | {r.val_mae:.4f} | {r.test_mae:.4f} |"
        for r in rows
    ]
    return "\n".join([f"Dataset: {dataset}", "", head, *body]) + "\n"


def run(args: argparse.Namespace) -> int:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    base_config, base_request = config_from_args(args)
    rows: list[Row] = []
    for arch in args.arch:
        if arch == "rf":
            request = replace(base_request, features=args.rf_features)
            rows.append(_forest_row(request, args.rf_trees, base_config.seed, base_config.threads))
        else:
            config = replace(base_config, arch=arch)
            rows.append(_network_row(config, base_request, out, progress=sys.stderr.isatty()))
        print(
            f"{rows[-1].model}: val MAE {rows[-1].val_mae:.5f}, test MAE {rows[-1].test_mae:.5f}",
            file=sys.stderr,
        )
    dataset = load_dataset(replace(base_request, limit=1), splits=("val",))  # for its name and unit
    table = markdown(rows, dataset.name, dataset.unit)
    (out / "comparison.md").write_text(table + f"\nCommand: `{command_line(args, 'compare')}`\n")
    (out / "comparison.json").write_text(json.dumps([asdict(r) for r in rows], indent=2) + "\n")
    print(table)
    return 0
