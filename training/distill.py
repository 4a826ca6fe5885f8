"""Distillation (``ibrnet train --teacher MODEL_DIR``): one network with the ensemble's accuracy.

The student (nets.StudentNet) is one iBRNet whose last residual units are repeated as heads, one
per teacher member. It starts as the teacher's heaviest member (every head a copy of that member's
tail) and learns, on the transfer set, to reproduce each member's output with its own head while
the heads' weighted mean also matches the true target:

    loss = mean over heads k of |head_k - member_k|  +  |sum_k w_k head_k - y|

so the heads keep the members' disagreement (the served sigma) and the mean keeps the ensemble's
accuracy. The teacher's outputs are computed once for the whole transfer set.

The transfer set is the property's own train split with every composition of its validation and
test splits removed (the CrabNet splits are by formula string, so Fe2O3 in train and Fe4O6 in test
would otherwise both be seen). A student that must also stay clear of another property's evaluation
compositions names them with ``--exclude-compositions DATASET:val+test`` (training/data.py drops
those rows before this module sees the split): a student never learns a composition it is scored on.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.inference.manifest import ModelManifest
from training.data import Dataset, Split, composition_key
from training.nets import IBRNet, NetConfig, StudentNet
from training.warm_start import load_member

EVALUATION_SPLITS = ("val", "test")


@dataclass
class Teacher:
    folder: Path
    manifest: ModelManifest
    members: list[torch.nn.Module]
    weights: list[float]  # each member's weight in the teacher's served mean

    @property
    def heaviest(self) -> int:
        return int(np.argmax(self.weights))


def load_teacher(folder: Path, dataset: Dataset) -> Teacher:
    """A shipped ensemble made from the very files of ``dataset`` (same split hashes) and its features;
    refused otherwise: a student is scored against its teacher on the same validation rows."""
    manifest = ModelManifest.load(folder)
    if manifest.output.kind != "ensemble" or manifest.output.members < 2:
        raise SystemExit(f"ibrnet train --teacher: {folder} is not an ensemble; nothing to distil")
    if manifest.features.spec != dataset.features:
        raise SystemExit(
            f"ibrnet train --teacher: {folder} reads {manifest.features.spec}, this run {dataset.features}"
        )
    hashes = dataset.info()["sha256"]
    if any(
        manifest.dataset.sha256.get(split) != hashes.get(split) for split in ("train", *EVALUATION_SPLITS)
    ):
        raise SystemExit(f"ibrnet train --teacher: {folder} was made from other data files than this run's")
    count = manifest.output.members
    members = [load_member(folder, k)[1].eval() for k in range(count)]
    weights = manifest.output.member_weights or [1.0 / count] * count
    return Teacher(folder, manifest, members, list(weights))


def forbidden_compositions(dataset: Dataset) -> frozenset[str]:
    """Every composition the property is evaluated on: its validation and test splits."""
    return frozenset(
        composition_key(formula) for split in EVALUATION_SPLITS for formula in dataset.splits[split].formulas
    )


def transfer_split(dataset: Dataset) -> Split:
    """The train split without any composition of the property's evaluation splits."""
    forbidden = forbidden_compositions(dataset)
    train = dataset.splits["train"]
    keep = np.array([composition_key(f) not in forbidden for f in train.formulas], dtype=bool)
    if not keep.all():
        print(f"transfer set: {int((~keep).sum())} train rows share a composition with an evaluation "
              "split and are left out", file=sys.stderr)  # fmt: skip
    return replace(
        train,
        x=train.x[keep],
        y=train.y[keep],
        formulas=[f for f, k in zip(train.formulas, keep, strict=True) if k],
        skipped={**train.skipped, "evaluation_composition": int((~keep).sum())},
    )


def student_from_teacher(teacher: Teacher, head_units: int) -> tuple[NetConfig, StudentNet]:
    """A student that starts as the teacher's heaviest member, every head a copy of its tail."""
    source = teacher.members[teacher.heaviest]
    if not isinstance(source, IBRNet):
        raise SystemExit("ibrnet train --teacher: only iBRNet ensembles can be distilled")
    base = NetConfig.from_dict(teacher.manifest.architecture.config)
    config = replace(base, heads=len(teacher.members), head_units=head_units)
    student = StudentNet(config)
    shared = len(config.trunk_widths) - head_units
    student.norm.load_state_dict(source.norm.state_dict())
    student.branches.load_state_dict(source.branches.state_dict())
    student.trunk.load_state_dict(source.trunk[:shared].state_dict())
    for head in student.heads:
        for unit, source_unit in zip(head[0], source.trunk[shared:], strict=True):
            unit.load_state_dict(source_unit.state_dict())
        head[1].load_state_dict(source.head.state_dict())
    student.member_weights.copy_(torch.tensor(teacher.weights, dtype=torch.float32).view(-1, 1, 1))
    return config, student


@torch.no_grad()
def teacher_outputs(teacher: Teacher, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Every member's prediction for every row, [n, k] (computed once per run)."""
    columns = []
    for member in teacher.members:
        member.to(x.device)
        columns.append(torch.cat([member(x[i : i + batch_size])[:, 0] for i in range(0, len(x), batch_size)]))
    return torch.stack(columns, dim=1)


class DistillationObjective:
    """The student's loss against the teacher's members (per head) and the true target (the mean)."""

    def __init__(self, targets: torch.Tensor) -> None:
        self.targets = targets  # [n, k]: the teacher's members on the transfer set

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.each_head(x)[:, :, 0].T  # [n, k]

    def loss(
        self, heads: torch.Tensor, y: torch.Tensor, index: torch.Tensor, model: torch.nn.Module
    ) -> torch.Tensor:
        heads = heads.float()
        mimic = F.l1_loss(heads, self.targets.index_select(0, index))
        mean = heads @ model.member_weights.view(-1)
        return mimic + F.l1_loss(mean, y)


class TargetObjective:
    """Plain training: the network's one output against the true target (MAE)."""

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x).squeeze(1)

    def loss(
        self, prediction: torch.Tensor, y: torch.Tensor, index: torch.Tensor, model: torch.nn.Module
    ) -> torch.Tensor:
        return F.l1_loss(prediction, y)
