"""Half-size ONNX files: weights stored as float16, computed in float32.

Every large float32 initializer (a weight matrix) is stored as float16 and followed by a Cast
back to float32. Inputs, outputs and all arithmetic stay float32, so the file runs on any ONNX
Runtime CPU build (which has few float16 kernels); ORT folds the Casts of constants once when
the session is created, so inference speed and memory are those of the float32 model. The only
change is the rounding of each weight to 11 significant bits (relative error <= 2^-11).

Why this and not onnxconverter-common's full float16 conversion: that one runs the matrix
products in float16 too, which ORT's CPU provider either lacks or emulates slowly, and it would
change the output dtype unless told to keep it. The disk/download size is what the 120 MB
models/ budget constrains, and this halves it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

MIN_ELEMENTS = 1024  # smaller tensors (biases, normalisation statistics) stay float32: they weigh nothing
FLOAT16_MAX = float(np.finfo(np.float16).max)


def convert(source: Path, target: Path, min_elements: int = MIN_ELEMENTS) -> int:
    """Write ``target`` with float16 storage for ``source``'s large weights; returns how many."""
    model = onnx.load(str(source))
    graph = model.graph
    casts = []
    initializers = []
    for tensor in graph.initializer:
        values = numpy_helper.to_array(tensor)
        convertible = (
            tensor.data_type == TensorProto.FLOAT
            and values.size >= min_elements
            and bool(np.all(np.abs(values) <= FLOAT16_MAX))  # beyond it float16 holds only inf
        )
        if not convertible:
            initializers.append(tensor)
            continue
        stored = f"{tensor.name}__fp16"
        initializers.append(numpy_helper.from_array(values.astype(np.float16), name=stored))
        casts.append(
            helper.make_node("Cast", [stored], [tensor.name], to=TensorProto.FLOAT, name=f"{stored}_cast")
        )
    nodes = [*casts, *graph.node]  # the Casts first: a graph's nodes must be in topological order
    del graph.initializer[:]
    graph.initializer.extend(initializers)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    partial = target.with_name(f".{target.name}.tmp")
    onnx.save(model, str(partial))
    partial.replace(target)
    return len(casts)
