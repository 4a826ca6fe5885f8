"""Model sets for "new against previous" benchmarks: a folder, or models/ as of a git revision.

    --previous HEAD~3          models/ as committed at that revision (read with git show)
    --previous /path/to/models a folder of model directories

Also what a set costs on paper: MFLOP per formula counted from the ONNX graphs (two per
multiply-add of every Gemm/MatMul: the dense layers are all of the arithmetic) and bytes on disk.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from app.inference.manifest import MANIFEST_FILE, ONNX_FILE, ModelManifest

REPOSITORY = Path(__file__).resolve().parent.parent


def materialise(previous: str, workdir: Path) -> tuple[Path, str]:
    """(folder of model directories, label) for a folder or a git revision of models/."""
    folder = Path(previous)
    if folder.is_dir():
        return folder, str(folder)
    target = workdir / "previous-models"
    listing = _git("ls-tree", "-r", "--name-only", previous, "models/").decode().split()
    for name in listing:
        if not name.endswith((ONNX_FILE, MANIFEST_FILE, ".onnx", ".json")):
            continue
        path = target / Path(name).relative_to("models")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(_git("show", f"{previous}:{name}"))
    revision = _git("rev-parse", "--short", previous).decode().strip()
    return target, f"models/ at {previous} ({revision})"


def _git(*args: str) -> bytes:
    return subprocess.run(["git", "-C", str(REPOSITORY), *args], capture_output=True, check=True).stdout


def model_dirs(models_dir: Path) -> list[Path]:
    return sorted(p.parent for p in models_dir.glob(f"*/{MANIFEST_FILE}"))


def mflop_per_formula(model_dir: Path) -> float:
    """2 x (output elements x inner dimension) of every Gemm/MatMul for one formula, with the shapes
    read from running the graph on one row: the dense layers are all of the arithmetic, and a layer
    applied to each of a formula's element tokens (the attention network) counts once per token,
    where counting weights would count it once."""
    model = onnx.load(str(model_dir / ONNX_FILE))
    products = [node for node in model.graph.node if node.op_type in ("Gemm", "MatMul")]
    weights = {tensor.name for tensor in model.graph.initializer}
    exposed = {output.name for output in model.graph.output}
    for name in dict.fromkeys(n for node in products for n in (node.input[0], node.output[0])):
        if name not in exposed and name not in weights:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    first = session.get_inputs()[0]
    values = session.run(None, {first.name: np.zeros((1, first.shape[1]), dtype=np.float32)})
    shapes = {output.name: value.shape for output, value in zip(session.get_outputs(), values, strict=True)}
    flops = 0
    for node in products:
        inner = shapes[node.input[0]][-1]  # our Gemms never transpose their first input
        flops += 2 * int(np.prod(shapes[node.output[0]])) * inner
    return flops / 1e6


def describe(models_dir: Path) -> dict[str, dict[str, float | str]]:
    """property -> name, MFLOP per formula, MB on disk (every file of the model's folder)."""
    out = {}
    for folder in model_dirs(models_dir):
        manifest = ModelManifest.load(folder)
        out[manifest.property] = {
            "name": manifest.name,
            "version": manifest.version,
            "mflop": mflop_per_formula(folder),
            "mb": sum(f.stat().st_size for f in folder.iterdir()) / 1e6,
        }
    return out


def new_and_previous(previous: str, workdir: Path) -> dict[str, tuple[Path, str]]:
    """{"new": models/, "previous": the other set} as (folder, label), their costs printed."""
    from app.settings import REPOSITORY_MODELS_DIR

    previous_dir, previous_label = materialise(previous, workdir)
    sets = {
        "new": (REPOSITORY_MODELS_DIR, "models/ (working tree)"),
        "previous": (previous_dir, previous_label),
    }
    print_costs(*(describe(folder) for folder, _ in sets.values()), *(label for _, label in sets.values()))
    return sets


def print_costs(new: dict, previous: dict, new_label: str, previous_label: str) -> None:
    print(f"model sets: new = {new_label}; previous = {previous_label}")
    print(f"{'property':<22} {'new MFLOP':>10} {'prev MFLOP':>11} {'new MB':>8} {'prev MB':>8}")
    for prop in sorted(set(new) | set(previous)):
        a, b = new.get(prop, {}), previous.get(prop, {})
        print(f"{prop:<22} {a.get('mflop', float('nan')):>10.1f} {b.get('mflop', float('nan')):>11.1f} "
              f"{a.get('mb', float('nan')):>8.1f} {b.get('mb', float('nan')):>8.1f}")  # fmt: skip
    total = [sum(s[p]["mflop"] for p in s) for s in (new, previous)]
    size = [sum(s[p]["mb"] for p in s) for s in (new, previous)]
    print(f"{'all':<22} {total[0]:>10.1f} {total[1]:>11.1f} {size[0]:>8.1f} {size[1]:>8.1f}   "
          f"(new/previous: MFLOP {total[0] / total[1]:.2f}, size {size[0] / size[1]:.2f})")  # fmt: skip
