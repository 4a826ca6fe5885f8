"""Record a shipped model's training domain in its model.json (models exported before export did).

    python scripts/record_training_domain.py models/oqmd-bandgap [MODEL_DIR ...]

Reads the model's own dataset (its manifest's name and features) and writes ``domain``; the ONNX
file, and so the model version, is untouched. A model trained with --add-train or --exclude is
refused: its train rows depend on those, so re-export it (training/export.py records the domain).
"""

from __future__ import annotations

import sys
from pathlib import Path

from app.inference.manifest import ModelManifest
from training.data import DataRequest
from training.domain import domain_of_request


def record(model_dir: Path) -> None:
    manifest = ModelManifest.load(model_dir)
    extra = manifest.dataset.model_extra or {}
    if extra.get("add_train") or extra.get("exclude"):
        raise SystemExit(f"{model_dir}: trained with --add-train or --exclude; re-export it instead")
    manifest.domain = domain_of_request(
        DataRequest(data=manifest.dataset.name, features=manifest.features.spec)
    )
    manifest.save(model_dir)
    lo, hi = manifest.domain.element_counts
    rare = sorted(e for e, n in manifest.domain.elements.items() if n < manifest.domain.min_compounds)
    print(f"{model_dir}: {lo}-{hi} elements, smallest share {manifest.domain.min_fraction:.4g}, "
          f"{len(manifest.domain.elements)} elements seen, "
          f"below {manifest.domain.min_compounds} compounds: {', '.join(rare) or 'none'}")  # fmt: skip


if __name__ == "__main__":
    for folder in sys.argv[1:]:
        record(Path(folder))
