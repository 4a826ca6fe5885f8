"""Start a network from a shipped model's weights (``ibrnet train --init-from MODEL_DIR[#MEMBER]``).

Transfer learning between DFT databases: a Materials Project formation-energy network starts
from an OQMD formation-enthalpy member, which already knows the chemistry, and is fine-tuned on
MP energies. The weights come from the shipped ONNX file itself (its initializers keep the
PyTorch parameter names, ``members.K.`` in an ensemble, ``__fp16`` where stored in half
precision), so no training run has to be kept around. The source's input standardisation and
target scaling come along: the network starts as exactly the source member's function.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from app.inference.manifest import ONNX_FILE, ModelManifest
from training.nets import NetConfig, build_network

FP16_SUFFIX = "__fp16"


def _float32(tensor: onnx.TensorProto) -> torch.Tensor:
    return torch.from_numpy(numpy_helper.to_array(tensor).astype(np.float32))


def parse_source(text: str) -> tuple[Path, int]:
    """``models/oqmd-formation-enthalpy#0`` -> (folder, member 0); no ``#``: member 0."""
    folder, _, member = text.partition("#")
    return Path(folder), int(member or 0)


def load_member(model_dir: Path, member: int) -> tuple[NetConfig, torch.nn.Module]:
    """The source's network (member ``member`` of an ensemble) with its weights, float32."""
    manifest = ModelManifest.load(model_dir)
    first = NetConfig.from_dict(manifest.architecture.config)
    separate_members = manifest.output.kind == "ensemble" and first.heads <= 1  # a student is one network
    if separate_members and not 0 <= member < manifest.output.members:
        raise SystemExit(f"ibrnet train --init-from: {model_dir} has members 0-{manifest.output.members - 1}")
    config = NetConfig.from_dict(manifest.architecture.member_config(member)) if separate_members else first
    prefix = f"members.{member}." if separate_members else ""
    # Keep the ModelProto alive while reading: a sub-message of a freed proto is not valid.
    source = onnx.load(str(model_dir / ONNX_FILE))
    tensors = {tensor.name.removesuffix(FP16_SUFFIX): _float32(tensor) for tensor in source.graph.initializer}
    # The exporter keeps one copy of equal tensors (members share the train split's statistics):
    # a dropped one is an Identity node's output, read from the copy kept, whichever member's it is.
    aliases = {node.output[0]: node.input[0] for node in source.graph.node if node.op_type == "Identity"}
    network = build_network(config)
    state = {}
    for name in network.state_dict():
        key = f"{prefix}{name}"
        while key not in tensors and key in aliases:
            key = aliases[key]
        if key in tensors:
            state[name] = tensors[key]
    missing = [name for name in network.state_dict() if name not in state]
    if missing:
        raise SystemExit(f"ibrnet train --init-from: {model_dir} lacks weights {missing[:5]}")
    network.load_state_dict(state)
    return config, network
