"""Distillation (``ibrnet train --teacher MODEL_DIR``): one network with the ensemble's accuracy.

The student (nets.HeadedNet) is one network, an iBRNet or with ``--arch attention`` an attention
network, whose last residual units are repeated as heads, one per teacher member. It starts as the
teacher's heaviest member of its architecture (every head a copy of that member's tail; a mixed
teacher's other members only supply targets) and learns, on the transfer set, to reproduce each
member's output with its own head while the heads' weighted mean also matches the true target:

    loss = mean over heads k of |head_k - member_k|  +  |spread(heads) - spread(members)|
           +  |sum_k w_k head_k - y|

so the heads keep the members' disagreement (the served sigma: without the spread term the heads
agreed far more than the members and ranked errors worse, Spearman 0.41 against the teacher's 0.54
for formation enthalpy) and the mean keeps the ensemble's accuracy. The teacher's outputs are
computed once for the whole transfer set.

The transfer set is the property's own train split with every composition of its validation and
test splits removed (the CrabNet splits are by formula string, so Fe2O3 in train and Fe4O6 in test
would otherwise both be seen). A student that must also stay clear of another property's evaluation
compositions names them with ``--exclude-compositions DATASET:val+test`` (training/data.py drops
those rows before this module sees the split): a student never learns a composition it is scored on.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from app.chemistry.featurizers import Featurizer
from app.chemistry.formula import FormulaError, ParsedFormula, parse_formula
from app.inference.manifest import ModelManifest
from training.attention_net import ElementAttentionNet
from training.data import Dataset, Split, composition_key
from training.nets import STUDENT_ARCHITECTURES, HeadedNet, IBRNet, NetConfig, build_network
from training.warm_start import load_member

EVALUATION_SPLITS = ("val", "test")


@dataclass
class Teacher:
    folder: Path
    manifest: ModelManifest
    members: list[torch.nn.Module]
    weights: list[float]  # each member's weight in the teacher's served mean

    def heaviest(self, arch: str = "ibrnet") -> int:
        """The member of the student's architecture with the largest weight: the student starts as
        it (a mixed teacher's other members only supply targets)."""
        same = [k for k, member in enumerate(self.members) if _arch_of(member) == _arch_of_name(arch)]
        if not same:
            present = sorted({_arch_of(member) for member in self.members})
            raise SystemExit(
                f"ibrnet train --teacher: {self.folder} has no {arch} member to start a student from "
                f"(its members: {', '.join(present)}; choose one with --arch)"
            )
        return max(same, key=lambda k: self.weights[k])


def _arch_of(network: torch.nn.Module) -> str:
    """The family a network's weights can start a student of (BRNet is an iBRNet)."""
    if isinstance(network, HeadedNet):
        return ""  # already a student: its tail is heads, not one network's
    if isinstance(network, ElementAttentionNet):
        return "attention"
    return "ibrnet" if isinstance(network, IBRNet) else ""


def _arch_of_name(arch: str) -> str:
    return "ibrnet" if arch == "brnet" else arch


def load_teacher(folder: Path, dataset: Dataset) -> Teacher:
    """A shipped ensemble made from the very files of ``dataset`` (same split hashes) and its features;
    refused otherwise: a student is scored against its teacher on the same validation rows."""
    manifest = ModelManifest.load(folder)
    if manifest.output.kind != "ensemble" or manifest.output.members < 2:
        raise SystemExit(f"ibrnet train --teacher: {folder} is not an ensemble; nothing to distil")
    if manifest.architecture.config.get("heads", 1) > 1:
        raise SystemExit(f"ibrnet train --teacher: {folder} is a student with heads; distil from its teacher")
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


def transfer_split(
    dataset: Dataset, featurizer: Featurizer | None = None, extra: float = 0.0, seed: int = 0
) -> Split:
    """The train split without any composition of the property's evaluation splits; with ``extra``,
    plus ``extra`` times as many neighbouring compositions the teacher labels (target NaN: they
    have no true value), none of them in any split."""
    forbidden = forbidden_compositions(dataset)
    train = dataset.splits["train"]
    parsed = [_parse(formula) for formula in train.formulas]
    keep = np.array([p is not None and p.canonical_key not in forbidden for p in parsed], dtype=bool)
    if not keep.all():
        print(f"transfer set: {int((~keep).sum())} train rows share a composition with an evaluation "
              "split and are left out", file=sys.stderr)  # fmt: skip
    x, y = train.x[keep], train.y[keep]
    formulas = [f for f, k in zip(train.formulas, keep, strict=True) if k]
    added = 0
    if extra > 0 and featurizer is not None:
        known = forbidden | {p.canonical_key for p in parsed if p is not None}
        sources = [p for p, k in zip(parsed, keep, strict=True) if k and p is not None]
        neighbours = neighbour_compositions(sources, int(extra * len(sources)), known, seed)
        x = np.concatenate([x, featurizer.transform(neighbours)])
        y = np.concatenate([y, np.full(len(neighbours), np.nan, dtype=y.dtype)])
        formulas += [p.text for p in neighbours]
        added = len(neighbours)
        print(f"transfer set: {added} neighbouring compositions added, labelled by the teacher only",
              file=sys.stderr)  # fmt: skip
    skipped = {**train.skipped, "evaluation_composition": int((~keep).sum())}
    return replace(train, x=x, y=y, formulas=formulas, skipped=skipped, rows_considered=len(y) - added)


def neighbour_compositions(
    sources: Sequence[ParsedFormula], count: int, known: AbstractSet[str], seed: int
) -> list[ParsedFormula]:
    """Hypothetical compositions one atom away from real ones (Fe2O3 -> Fe3O3, Fe2O4, Fe1O3, ...):
    the neighbourhood a screen asks about, where the student should agree with its teacher.
    Never a composition in ``known`` (every split's), never one twice."""
    rng = np.random.default_rng(seed)
    seen, out = set(known), []
    for _ in range(count * 4):  # most draws are new; duplicates and dead ends are skipped
        if len(out) >= count or not sources:
            break
        source = sources[int(rng.integers(len(sources)))]
        amounts = np.array(source.amounts, dtype=np.float64)
        if np.any(np.abs(amounts - np.round(amounts)) > 1e-6) or amounts.max() > 30:
            continue  # fractional or very large formulas: no clear "one atom away"
        which = int(rng.integers(len(amounts)))
        amounts[which] += 1 if rng.random() < 0.5 else -1
        if amounts[which] < 1:
            continue
        parsed = _parse("".join(f"{e}{int(a)}" for e, a in zip(source.elements, amounts, strict=True)))
        if parsed is None or parsed.canonical_key in seen:
            continue
        seen.add(parsed.canonical_key)
        out.append(parsed)
    return out


def _parse(formula: str) -> ParsedFormula | None:
    try:
        return parse_formula(formula, max_length=10_000)
    except FormulaError:
        return None


def student_from_teacher(
    teacher: Teacher, head_units: int, arch: str = "ibrnet", start: int | None = None
) -> tuple[NetConfig, HeadedNet]:
    """A student that starts as the teacher's member ``start`` (default: its heaviest of ``arch``),
    every head a copy of its tail."""
    if start is None:
        start = teacher.heaviest(arch)
    elif not 0 <= start < len(teacher.members) or _arch_of(teacher.members[start]) != _arch_of_name(arch):
        kinds = ", ".join(f"{k} {_arch_of(member)}" for k, member in enumerate(teacher.members))
        raise SystemExit(
            f"ibrnet train --start-member {start}: {teacher.folder} has no {arch} member {start} "
            f"(its members: {kinds})"
        )
    base = NetConfig.from_dict(teacher.manifest.architecture.member_config(start))
    config, student = _student_on(teacher.members[start], base, len(teacher.members), head_units)
    for head in student.heads:
        head.load_state_dict(_tail(teacher.members[start], config))
    student.member_weights.copy_(torch.tensor(teacher.weights, dtype=torch.float32).view(-1, 1, 1))
    return config, student


def heads_on_network(
    source: torch.nn.Module, config: NetConfig, heads: int, head_units: int, seed: int = 0
) -> tuple[NetConfig, HeadedNet]:
    """Without a teacher (a property served by one network): the source's branches and trunk, and
    ``heads`` copies of its tail, each nudged by 1% noise and trained on its own bootstrap weighting
    of the rows (IndependentHeadsObjective), so that they part where the data says little: their
    disagreement is the uncertainty; equal weights in the mean. (Freshly initialised tails were
    tried first: band gap validation MAE 0.0498 after 8 epochs against the network's 0.0442.)"""
    config, student = _student_on(source, config, heads, head_units)
    generator = torch.Generator().manual_seed(seed)
    tail = _tail(source, config)
    with torch.no_grad():
        for head in student.heads:
            head.load_state_dict(tail)
            for parameter in head.parameters():
                scale = 0.01 * float(parameter.std()) if parameter.numel() > 1 else 0.0
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)
    return config, student


def _student_on(
    source: torch.nn.Module, base: NetConfig, heads: int, head_units: int
) -> tuple[NetConfig, HeadedNet]:
    """A network with heads holding every weight of ``source`` before its tail (same names)."""
    if isinstance(source, HeadedNet):
        raise SystemExit("ibrnet train: this network already has heads; grow them on a single network")
    if not _arch_of(source):
        raise SystemExit(f"ibrnet train: heads are grown on {', '.join(STUDENT_ARCHITECTURES)} networks only")
    config = replace(base, heads=heads, head_units=head_units)
    try:
        student = build_network(config)
    except ValueError as error:  # e.g. --head-units as many as the trunk has units
        raise SystemExit(f"ibrnet train: {error}") from None
    assert isinstance(student, HeadedNet)
    shared = len(config.trunk_widths) - head_units
    tail = (*(f"trunk.{unit}." for unit in range(shared, len(config.trunk_widths))), "head.")
    state = {name: value for name, value in source.state_dict().items() if not name.startswith(tail)}
    missing, unexpected = student.load_state_dict(state, strict=False)
    own = ("heads.", "member_weights", "sigma_scale")  # what the source has no counterpart for
    if unexpected or any(not name.startswith(own) for name in missing):
        raise RuntimeError(f"a student does not fit its source: {unexpected[:3]} {missing[:3]}")
    return config, student


def _tail(source: torch.nn.Module, config: NetConfig) -> dict[str, torch.Tensor]:
    """The source's last ``head_units`` units and output layer, named as one student head."""
    shared = len(config.trunk_widths) - config.head_units
    state = {}
    for position, unit in enumerate(source.trunk[shared:]):
        state.update({f"0.{position}.{name}": value for name, value in unit.state_dict().items()})
    state.update({f"1.{name}": value for name, value in source.head.state_dict().items()})
    return state


@torch.no_grad()
def teacher_outputs(teacher: Teacher, x: torch.Tensor, batch_size: int = 8192) -> torch.Tensor:
    """Every member's prediction for every row, [n, k] (computed once per run)."""
    columns = []
    for member in teacher.members:
        member.to(x.device)
        columns.append(torch.cat([member(x[i : i + batch_size])[:, 0] for i in range(0, len(x), batch_size)]))
    return torch.stack(columns, dim=1)


class _HeadsObjective:
    """An objective on a student's heads: its forward gives one column per head, [n, k]."""

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model.each_head(x)[:, :, 0].T


class DistillationObjective(_HeadsObjective):
    """The student's loss against the teacher's members (per head), their spread (the served sigma,
    before its scale) and the true target (the mean)."""

    def __init__(self, targets: torch.Tensor, spread_weight: float = 1.0) -> None:
        self.targets = targets  # [n, k]: the teacher's members on the transfer set
        self.spread = _spread(targets)  # [n]
        self.spread_weight = spread_weight

    def loss(
        self, heads: torch.Tensor, y: torch.Tensor, index: torch.Tensor, model: torch.nn.Module
    ) -> torch.Tensor:
        heads = heads.float()
        mimic = F.l1_loss(heads, self.targets.index_select(0, index))
        if self.spread_weight:
            mimic = mimic + self.spread_weight * F.l1_loss(_spread(heads), self.spread.index_select(0, index))
        mean = heads @ model.member_weights.view(-1)
        labelled = torch.isfinite(y)  # neighbouring compositions have no true value
        if bool(labelled.all()):
            return mimic + F.l1_loss(mean, y)
        if not bool(labelled.any()):
            return mimic
        return mimic + F.l1_loss(mean[labelled], y[labelled])


def _spread(columns: torch.Tensor) -> torch.Tensor:
    """Rows' (population) standard deviation over the columns, as nets.member_spread serves it; the
    epsilon keeps the gradient finite while the heads are still identical copies."""
    return ((columns - columns.mean(dim=1, keepdim=True)).pow(2).mean(dim=1) + 1e-12).sqrt()


class IndependentHeadsObjective(_HeadsObjective):
    """Heads grown without a teacher: each head against the true target under its own bootstrap
    weighting of the rows (Poisson(1) counts, fixed per row and head for the whole run)."""

    def __init__(self, rows: int, heads: int, seed: int, device: torch.device) -> None:
        generator = torch.Generator().manual_seed(seed)
        self.weights = torch.poisson(torch.ones(rows, heads), generator=generator).to(device)  # [n, k]

    def loss(
        self, heads: torch.Tensor, y: torch.Tensor, index: torch.Tensor, model: torch.nn.Module
    ) -> torch.Tensor:
        weights = self.weights.index_select(0, index)
        errors = (heads.float() - y.unsqueeze(1)).abs()
        return (weights * errors).sum() / weights.sum().clamp_min(1.0)


class TargetObjective:
    """Plain training: the network's one output against the true target (MAE)."""

    def forward(self, model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
        return model(x).squeeze(1)

    def loss(
        self, prediction: torch.Tensor, y: torch.Tensor, index: torch.Tensor, model: torch.nn.Module
    ) -> torch.Tensor:
        return F.l1_loss(prediction, y)
