"""Run an exported model through ONNX Runtime, the way export and evaluate both score it.

No torch here: ``ibrnet evaluate`` must work on a serving install. Export and evaluate share
this one function (same session options, same chunking), so evaluate reproduces the metrics
export wrote into the manifest bit for bit.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort

SCORING_BATCH = 8192  # rows per ORT call: large enough to be fast, small enough for any RAM
SCORING_THREADS = 1  # fixed: the same summation order (so every digit) everywhere, no spin-waiting


def session(path: Path, threads: int = SCORING_THREADS) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def predict(model: ort.InferenceSession, x: np.ndarray, batch: int = SCORING_BATCH) -> np.ndarray:
    """y for every row: [n, 1] for a point model, [n, 2] (mean, std) for an ensemble."""
    x = np.ascontiguousarray(x, dtype=np.float32)
    if len(x) == 0:
        return np.zeros((0, model.get_outputs()[0].shape[1] or 1), dtype=np.float32)
    return np.concatenate([model.run(["y"], {"x": x[i : i + batch]})[0] for i in range(0, len(x), batch)])
