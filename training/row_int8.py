"""int8 dense layers whose answers do not depend on the batch: one activation scale per row.

ONNX Runtime's dynamic quantization (``quantize_dynamic``) scales a layer's input with one number
per call: the largest activation of any row in the batch. A formula's int8 answer then changes
with the formulas that share its call (measured on the shipped band-gap network: up to 0.08 eV,
``benchmarks/int8.py``), and a service that batches concurrent requests must not answer that way.

This rewrite gives each row its own scale, with standard ONNX operators only:

    s   = max(|x|, over the row) / 127                    (one number per row)
    x_q = round(x / s) + 128                              (uint8, zero point 128)
    y   = MatMulInteger(x_q, W_q, 128) * w_scale * s + b  (W_q in [-63, 63], one scale per column)

so a row's result is a function of that row alone. uint8 activations against int8 weights is the
pair ORT's integer GEMM runs fast (on AMX, AVX512-VNNI, ...); int8 x int8 has no fast kernel here.
The weights use 7 bits: on a CPU with AVX2 but no VNNI, ORT's u8s8 kernel adds pairs of products in
int16 (vpmaddubsw), and 2 x 255 x 127 overflows it. The same file then answered wrongly there (signs
flipped) while right on the machine that exported it; 2 x 255 x 63 fits, so every kernel computes
the same exact integers (ORT's own ``reduce_range`` is this fix).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

QMAX = 127  # activations: uint8 around the zero point
WEIGHT_QMAX = 63  # weights: 7 bits, so no int16 pair sum saturates on AVX2 (module docstring)
ZERO_POINT = 128
_TINY = np.float32(1e-30)  # an all-zero row keeps a finite scale (and quantizes to zeros)


def _attributes(node: onnx.NodeProto) -> dict[str, object]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def quantizable_weight(node: onnx.NodeProto, initializers: dict[str, np.ndarray]) -> np.ndarray | None:
    """The [K, N] weight of a Gemm this rewrite handles (y = x @ W + b), or None."""
    if node.op_type != "Gemm" or len(node.input) < 2 or node.input[1] not in initializers:
        return None
    attributes = _attributes(node)
    scaled = (attributes.get("alpha", 1.0), attributes.get("beta", 1.0)) != (1.0, 1.0)
    if attributes.get("transA", 0) or scaled:
        return None
    weight = initializers[node.input[1]]
    return weight.T if attributes.get("transB", 0) else weight


def quantize_weight(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric 7-bit per output column: (int8 [K, N] in [-63, 63], float32 scales [N])."""
    scale = np.abs(weight).max(axis=0).astype(np.float32) / WEIGHT_QMAX
    scale[scale == 0] = 1.0
    return np.round(weight / scale).astype(np.int8), scale


def rewrite(source: Path, target: Path, min_weights: int) -> int:
    """Write ``source`` with every handled Gemm of >= ``min_weights`` weights in per-row int8;
    returns how many layers were rewritten. The other layers stay float32."""
    model = onnx.load(str(source))
    graph = model.graph
    opset = max(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    initializers = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    added: list[onnx.TensorProto] = []
    nodes: list[onnx.NodeProto] = []
    quantized_inputs: dict[str, tuple[str, str]] = {}  # input tensor -> (uint8 tensor, row scales)

    def constant(name: str, value: np.ndarray) -> str:
        added.append(numpy_helper.from_array(value, name))
        return name

    inverse_qmax = constant("row_int8/inverse_qmax", np.array(1.0 / QMAX, dtype=np.float32))
    tiny = constant("row_int8/tiny", np.array(_TINY))
    offset = constant("row_int8/offset", np.array(ZERO_POINT, dtype=np.float32))
    zero_point = constant("row_int8/zero_point", np.array(ZERO_POINT, dtype=np.uint8))
    row_axis = constant("row_int8/axis", np.array([1], dtype=np.int64))

    def quantized(x: str) -> tuple[str, str]:
        """The uint8 rows of tensor ``x`` and their scales [rows, 1]; built once per tensor."""
        if x not in quantized_inputs:
            p = f"row_int8/{x}"
            reduce = (
                helper.make_node("ReduceMax", [f"{p}/abs", row_axis], [f"{p}/max"], keepdims=1)
                if opset >= 18
                else helper.make_node("ReduceMax", [f"{p}/abs"], [f"{p}/max"], axes=[1], keepdims=1)
            )
            nodes.extend([
                helper.make_node("Abs", [x], [f"{p}/abs"]),
                reduce,
                helper.make_node("Mul", [f"{p}/max", inverse_qmax], [f"{p}/scale0"]),
                helper.make_node("Max", [f"{p}/scale0", tiny], [f"{p}/scale"]),
                helper.make_node("Div", [x, f"{p}/scale"], [f"{p}/scaled"]),
                helper.make_node("Round", [f"{p}/scaled"], [f"{p}/rounded"]),
                helper.make_node("Add", [f"{p}/rounded", offset], [f"{p}/shifted"]),
                helper.make_node("Cast", [f"{p}/shifted"], [f"{p}/uint8"], to=TensorProto.UINT8),
            ])  # fmt: skip
            quantized_inputs[x] = (f"{p}/uint8", f"{p}/scale")
        return quantized_inputs[x]

    rewritten = 0
    for node in graph.node:
        weight = quantizable_weight(node, initializers)
        if weight is None or weight.size < min_weights:
            nodes.append(node)
            continue
        rewritten += 1
        x_q, row_scale = quantized(node.input[0])
        w_q, w_scale = quantize_weight(weight.astype(np.float32))
        p = f"row_int8/{node.name or node.output[0]}"
        output = node.output[0]
        has_bias = len(node.input) > 2 and node.input[2]
        w_name = constant(f"{p}/weight", w_q)
        nodes.extend([
            helper.make_node("MatMulInteger", [x_q, w_name, zero_point], [f"{p}/int32"]),
            helper.make_node("Cast", [f"{p}/int32"], [f"{p}/float"], to=TensorProto.FLOAT),
            helper.make_node("Mul", [f"{p}/float", constant(f"{p}/weight_scale", w_scale)], [f"{p}/columns"]),
            helper.make_node("Mul", [f"{p}/columns", row_scale], [f"{p}/rows" if has_bias else output]),
        ])  # fmt: skip
        if has_bias:
            nodes.append(helper.make_node("Add", [f"{p}/rows", node.input[2]], [output]))

    used = {name for node in nodes for name in node.input}
    kept = [i for i in graph.initializer if i.name in used]
    del graph.node[:]
    graph.node.extend(nodes)
    del graph.initializer[:]
    graph.initializer.extend([*kept, *(a for a in added if a.name in used)])
    onnx.checker.check_model(model)
    onnx.save(model, str(target))
    return rewritten
