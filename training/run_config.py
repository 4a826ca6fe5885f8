"""A training run's ``config.json``, typed: the one set of defaults and the one reader.

``TrainConfig`` (how to train), ``NetConfig`` (training/nets.py: the network and its baked-in
scaling) and ``DataRequest`` (training/data.py: which rows and features) hold every default; the
command line leaves an option it was not given as None and takes the default from here
(``resolve``), so a default lives in one place. ``RunConfig`` is what a run directory records:
those three plus what the run found (features, dataset summary, parameters, hardware) and what it
achieved (``RunOutcome``). Export, compare, select-members and resume read it back typed
(``RunConfig.load``); a resume rebuilds the same run from it, taking from the command line only
what may change between sessions (RESUMABLE_CHANGES).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from training.data import DataRequest
from training.nets import NetConfig

CONFIG_FILE = "config.json"


@dataclass
class TrainConfig:
    arch: str = "ibrnet"
    epochs: int = 3000
    batch_size: int = 32  # the paper's; on CPU larger batches with a larger lr are much faster
    lr: float = 1e-4
    patience_es: int = 50  # the reference run's EarlyStopping patience
    patience_rlrop: int = 45  # the reference run's ReduceLROnPlateau patience
    rlrop_factor: float = 0.1
    min_lr: float = 1e-8
    seed: int = 0
    device: str = "auto"
    threads: int | None = None
    precision: str = "fp32"  # "bf16": autocast the matrix work (AMX/tensor cores); validation stays fp32
    time_limit_min: float | None = None
    eval_batch_size: int = 8192
    target_scaling: bool = True  # bake train mean/std of the target into the output layer
    weight_average_decay: float | None = None  # validate and keep an EMA of the weights (weight_average.py)
    init_from: str | None = None  # MODEL_DIR[#MEMBER]: start from a shipped model (warm_start.py)
    teacher: str | None = None  # MODEL_DIR of an ensemble: distil it into one student (distill.py)
    head_units: int = 3  # distillation: the trunk's last units, repeated once per teacher member
    start_member: int | None = None  # distillation: the member the student starts as (None: heaviest)
    transfer_extra: float = 0.0  # distillation: neighbouring compositions, times the train split
    spread_weight: float = 1.0  # distillation: weight of |spread(heads) - spread(members)| in the loss
    heads: int = 1  # with init_from and no teacher: grow this many heads, each trained on the target

    @property
    def uses_rlrop(self) -> bool:
        return self.arch != "brnet"  # BRNet: EarlyStopping only

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Fields newer than the run get their defaults; unknown keys (older releases) are ignored."""
        return cls(**{k: v for k, v in values.items() if k in cls.__dataclass_fields__})


# What a resumed run may take from its new command line; everything else comes from config.json.
RESUMABLE_CHANGES = frozenset(
    {"epochs", "patience_es", "patience_rlrop", "device", "threads", "time_limit_min", "eval_batch_size"}
)


@dataclass
class FeatureInfo:
    spec: str
    version: str
    width: int
    elements: list[str]


@dataclass
class RunOutcome:
    epochs_completed: int
    best_epoch: int | None
    best_val_mae: float | None
    stop_reason: str  # early_stopping | time_limit | signal (stopped by hand) | max_epochs
    wall_time_s: float
    seconds_per_epoch: float | None = None


@dataclass
class RunConfig:
    train: TrainConfig
    net: NetConfig
    data: DataRequest
    features: FeatureInfo
    # the data as loaded: Dataset.info() plus property, unit, description and citations
    dataset: dict[str, Any]
    parameters: int
    command: str
    hardware: str
    created: str
    resumed: list[str] = field(default_factory=list)  # the commands that continued it
    result: RunOutcome | None = None

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["net"] = self.net.to_dict()
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> RunConfig:
        result = values.get("result")
        return cls(
            train=TrainConfig.from_dict(values["train"]),
            net=NetConfig.from_dict(values["net"]),
            data=DataRequest.from_dict(values["data"]),
            features=FeatureInfo(**values["features"]),
            dataset=values["dataset"],
            parameters=int(values["parameters"]),
            command=values.get("command", ""),
            hardware=values.get("hardware", ""),
            created=values.get("created", ""),
            resumed=list(values.get("resumed", [])),
            result=RunOutcome(**{k: v for k, v in result.items() if k in RunOutcome.__dataclass_fields__})
            if result
            else None,
        )

    @classmethod
    def load(cls, run_dir: Path) -> RunConfig:
        path = run_dir / CONFIG_FILE
        if not path.exists():
            raise FileNotFoundError(f"{run_dir} is not a training run (no {CONFIG_FILE})")
        return cls.from_dict(json.loads(path.read_text()))

    @property
    def unit(self) -> str:
        return str(self.dataset["unit"])


def resolve(given: dict[str, Any], saved: RunConfig | None = None) -> tuple[TrainConfig, DataRequest]:
    """The run's TrainConfig and DataRequest from the options a command line was GIVEN (None: not
    given): a new run fills the rest from the dataclasses' defaults; a resumed run from its
    config.json, and refuses a given option that would make it another run."""
    train_fields = {f.name for f in fields(TrainConfig)}
    data_fields = {f.name for f in fields(DataRequest)}
    chosen = {k: v for k, v in given.items() if v is not None}
    if saved is None:
        return (
            TrainConfig(**{k: v for k, v in chosen.items() if k in train_fields}),
            DataRequest(**{k: v for k, v in chosen.items() if k in data_fields}),
        )
    train = asdict(saved.train)
    # The machine's, not the run's: a run started on a GPU may go on on a CPU (given again to keep).
    train.update(device=TrainConfig.device, threads=TrainConfig.threads)
    data = asdict(saved.data)
    conflicts = []
    for key, value in chosen.items():
        if key in train_fields and key in RESUMABLE_CHANGES:
            train[key] = value
        elif key in train_fields and train[key] != value:
            conflicts.append(key)
        elif key in data_fields and data[key] != (tuple(value) if isinstance(value, list) else value):
            conflicts.append(f"data.{key}")
    if conflicts:
        raise SystemExit(
            f"ibrnet train --resume: the run was made with different {', '.join(conflicts)} "
            f"(a resume may change only {', '.join(sorted(RESUMABLE_CHANGES))})"
        )
    return TrainConfig(**train), DataRequest.from_dict(data)
