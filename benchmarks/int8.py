"""int8 vs float32 on CPU for every shipped model with an int8 variant: throughput and accuracy.

    python benchmarks/int8.py [--rows 8192] [--rounds 3]

Both files of a model run in the same process on the same real test-split features, through
sessions built exactly as the service builds them (app.inference.registry.session_options), at
two operating points: large batches with every ORT thread (screening, /predict/batch) and
batches of 32 on one thread (what the dynamic batcher sees under concurrent single requests,
with the other cores busy serving HTTP). Rounds alternate float32 and int8 and the median is
reported, so machine noise hits both alike. Accuracy is the test MAE each manifest records
(reproduced by ``ibrnet evaluate --variant int8``).

An int8 answer must not depend on the rows sharing its ORT call (training/row_int8.py scales
activations per row; ORT's dynamic int8 scales them per call): the script prints the largest
difference between each row scored alone and all rows scored in one call.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

from app.inference.manifest import MANIFEST_FILE, ONNX_FILE, ModelManifest
from app.inference.registry import session_options
from app.settings import REPOSITORY_MODELS_DIR, available_cpus
from training.data import DataRequest, load_dataset


def rows_per_second(session: ort.InferenceSession, x: np.ndarray, batch: int) -> float:
    session.run(None, {"x": x[:batch]})  # warm-up
    started = time.perf_counter()
    for start in range(0, len(x), batch):
        session.run(None, {"x": x[start : start + batch]})
    return len(x) / (time.perf_counter() - started)


def compare(model_dir: Path, rows: int, rounds: int) -> None:
    manifest = ModelManifest.load(model_dir)
    int8 = manifest.variants["int8"]
    request = DataRequest(data=manifest.dataset.name, features=manifest.features.spec)
    x = load_dataset(request, splits=("test",)).splits["test"].x[:rows]
    cores = available_cpus()
    print(f"{manifest.name}: {int8.quantized_layers} of {int8.layers} dense layers int8 "
          f"(those with >= {int8.min_layer_weights:,} weights); {len(x):,} test rows")  # fmt: skip
    for label, threads, batch in (
        (f"batch 1024, {cores} threads", cores, 1024),
        ("batch 32, 1 thread", 1, 32),
    ):
        sessions = {
            name: ort.InferenceSession(
                str(model_dir / file), session_options(threads), providers=["CPUExecutionProvider"]
            )
            for name, file in (("fp32", ONNX_FILE), ("int8", int8.file))
        }
        rates: dict[str, list[float]] = {"fp32": [], "int8": []}
        for _ in range(rounds):
            for name, session in sessions.items():
                rates[name].append(rows_per_second(session, x, batch))
        fp32, quantized = statistics.median(rates["fp32"]), statistics.median(rates["int8"])
        print(f"  {label:<24} fp32 {fp32:>9,.0f} rows/s   int8 {quantized:>9,.0f} rows/s   "
              f"{quantized / fp32:.2f}x")  # fmt: skip
    print_batch_dependence(model_dir / int8.file, x, manifest.unit)
    fp32_mae, int8_mae = manifest.metrics["test"].mae, int8.metrics["test"].mae
    print(f"  test MAE: fp32 {fp32_mae:.5f}, int8 {int8_mae:.5f} {manifest.unit} "
          f"({100 * (int8_mae / fp32_mae - 1):+.2f}%; the rule: within 2%)")  # fmt: skip


def print_batch_dependence(path: Path, x: np.ndarray, unit: str, rows: int = 4000) -> None:
    """The same rows scored one per call and all in one call: per-call activation scales differ."""
    session = ort.InferenceSession(str(path), session_options(1), providers=["CPUExecutionProvider"])
    x = x[:rows]
    alone = np.concatenate([session.run(None, {"x": x[i : i + 1]})[0] for i in range(len(x))])
    together = session.run(None, {"x": x})[0]
    shift = np.abs(alone[:, 0] - together[:, 0])
    moved = 100 * (shift > 0.01).mean()
    print(f"  int8 answers alone vs in one call of {len(x):,} rows: mean |difference| {shift.mean():.5f} "
          f"{unit}, > 0.01 for {moved:.1f}% of rows, max {shift.max():.3g}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=8192, help="test rows per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    dirs = sorted(p.parent for p in REPOSITORY_MODELS_DIR.glob(f"*/{MANIFEST_FILE}"))
    with_int8 = [d for d in dirs if "int8" in ModelManifest.load(d).variants]
    if not with_int8:
        raise SystemExit("no shipped model has an int8 variant")
    for model_dir in with_int8:
        compare(model_dir, args.rows, args.rounds)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
