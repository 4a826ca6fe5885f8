"""``ibrnet train``: MAE loss, Adam, ReduceLROnPlateau + EarlyStopping with best-weight restore.

Optionally (``--weight-average-decay``) an exponential moving average of the weights is what is
validated, kept and exported (weight_average.py).
Reads top to bottom: config -> data -> model -> optimizer -> schedules -> loop -> outputs.
All training data stays resident on the device and batches are index_select-ed from it, so an
epoch costs the matrix work plus a few Python calls per batch (no DataLoader, no workers).
Every epoch ends with a checkpoint (model, optimizer, schedulers, early stopping, RNG states),
so a run killed or stopped by ``--time-limit-min`` continues exactly with ``--resume``.
"""

from __future__ import annotations

import argparse
import csv
import random
import shlex
import signal
import sys
import time
from dataclasses import asdict, dataclass, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from app.chemistry.elements import EF_ELEMENT_SET, EF_ELEMENTS
from app.chemistry.featurizers import get_featurizer, leading_element_fractions
from training import distill, plots
from training.data import DataRequest, Dataset, describe, load_dataset
from training.metrics import regression_metrics
from training.nets import STUDENT_ARCHITECTURES, HeadedNet, NetConfig, build_network, count_parameters
from training.run_config import FeatureInfo, RunConfig, RunOutcome, TrainConfig, resolve
from training.run_dir import (
    BEST_FILE,
    CHECKPOINT_FILE,
    CONFIG_FILE,
    LEARNING_CURVE_FILE,
    LOG_FILE,
    PARITY_FILE,
    hardware_description,
    save_torch,
    write_json,
)
from training.weight_average import WeightAverage


@dataclass
class RunResult:
    run_dir: Path
    epochs_completed: int
    best_epoch: int | None
    best_val_mae: float | None
    stop_reason: str
    wall_time_s: float
    parameters: int


class EarlyStopping:
    """Keras semantics: stop after ``patience`` epochs without a strictly lower validation loss."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best = float("inf")
        self.best_epoch: int | None = None
        self.wait = 0

    def step(self, value: float, epoch: int) -> bool:
        """Record an epoch's validation loss; True when it is the best so far."""
        if value < self.best:
            self.best, self.best_epoch, self.wait = value, epoch, 0
            return True
        self.wait += 1
        return False

    @property
    def should_stop(self) -> bool:
        return self.wait >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "patience": self.patience,
            "best": self.best,
            "best_epoch": self.best_epoch,
            "wait": self.wait,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.best_epoch, self.wait = state["best"], state["best_epoch"], state["wait"]


class StopSignal:
    """SIGTERM/SIGINT end the current epoch early; the last checkpoint and best weights stay valid."""

    def __init__(self) -> None:
        self.received = False

    def __enter__(self) -> StopSignal:
        self._previous = {s: signal.signal(s, self._handle) for s in (signal.SIGTERM, signal.SIGINT)}
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.received:  # a second Ctrl-C means now
            raise KeyboardInterrupt
        self.received = True
        print("\nstopping after this batch (send again to abort)", file=sys.stderr)


def element_order(elements: frozenset[str]) -> list[str]:
    """The featurizer's element set, in the EF order (the column order of ``ef``)."""
    return [e for e in EF_ELEMENTS if e in elements] + sorted(set(elements) - set(EF_ELEMENTS))


def command_line(args: argparse.Namespace, command: str) -> str:
    """The command as a user would retype it, rebuilt from the parsed arguments."""
    words = ["ibrnet", command]
    for key, value in vars(args).items():
        if key in ("command",) or value is None or value is False:
            continue
        if key in ("run_dir", "model_dir"):  # positionals
            words[2:2] = [str(v) for v in value] if isinstance(value, list) else [str(value)]
        elif value is True:
            words.append(f"--{key.replace('_', '-')}")
        elif isinstance(value, list):
            words += [f"--{key.replace('_', '-')}", *map(str, value)]
        else:
            words += [f"--{key.replace('_', '-')}", str(value)]
    return shlex.join(words)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("ibrnet train: --device cuda, but torch sees no CUDA device")
    return device


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def normalisation(dataset: Dataset, labels: tuple[str, ...], target_scaling: bool) -> dict[str, Any]:
    """Train-split statistics. Elemental fractions pass unchanged (they are already in [0, 1])."""
    x = dataset.splits["train"].x.astype(np.float64)
    y = dataset.splits["train"].y.astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    std[std < 1e-12] = 1.0  # constant columns: shift only
    fraction_columns = np.array([label in EF_ELEMENT_SET for label in labels])
    mean[fraction_columns], std[fraction_columns] = 0.0, 1.0
    shift, scale = (float(y.mean()), float(y.std()) or 1.0) if target_scaling else (0.0, 1.0)
    return {
        "input_mean": mean.tolist(),
        "input_std": std.tolist(),
        "target_shift": shift,
        "target_scale": scale,
        "target_floor": 0.0 if len(y) and y.min() >= 0 else None,  # a non-negative property
    }


@torch.no_grad()
def predict(model: torch.nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    model.eval()
    # column 0: the prediction (a point model's only column, an ensemble's or student's mean)
    return torch.cat([model(x[i : i + batch_size])[:, 0] for i in range(0, len(x), batch_size)])


def rng_state(shuffle: torch.Generator) -> dict[str, Any]:
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "shuffle": shuffle.get_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any], shuffle: torch.Generator) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    shuffle.set_state(state["shuffle"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def write_log(path: Path, history: list[dict[str, float]]) -> None:
    """Rewritten whole from the checkpoint's history, so it always agrees with the checkpoint."""
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["epoch", "train_mae", "val_mae", "lr", "seconds"])
        writer.writeheader()
        writer.writerows(history)


def _check_resumable(saved: RunConfig, config: TrainConfig, request: DataRequest) -> None:
    fixed = {"arch": config.arch, "seed": config.seed}
    mismatched = [k for k, v in fixed.items() if getattr(saved.train, k) != v]
    mismatched += [f"data.{k}" for k, v in asdict(request).items() if asdict(saved.data)[k] != v]
    if mismatched:
        raise SystemExit(f"ibrnet train --resume: the run was made with different {', '.join(mismatched)}")


def train(
    config: TrainConfig,
    request: DataRequest,
    run_dir: Path,
    *,
    resume: bool = False,
    command: str = "",
    progress: bool = True,
) -> RunResult:
    run_dir.mkdir(parents=True, exist_ok=True)
    checkpoint_path = run_dir / CHECKPOINT_FILE
    if resume and not checkpoint_path.exists():
        raise SystemExit(f"ibrnet train --resume: {checkpoint_path} does not exist")
    if not resume and checkpoint_path.exists():
        raise SystemExit(f"ibrnet train: {run_dir} already holds a run; use --resume or another --out")
    if (config.teacher or config.heads > 1) and config.arch not in STUDENT_ARCHITECTURES:
        raise SystemExit(
            "ibrnet train: --teacher and --heads make a network with heads "
            f"({', '.join(STUDENT_ARCHITECTURES)}); --arch {config.arch} has none"
        )
    if config.arch == "attention" and not leading_element_fractions(request.features):
        raise SystemExit(
            f"ibrnet train --arch attention: its tokens are the ef element fractions, so --features "
            f"must start with ef (ef, ef+pa), not {request.features}"
        )
    if config.transfer_extra and not config.teacher:
        raise SystemExit(
            "ibrnet train: --transfer-extra needs --teacher (the teacher labels those compositions)"
        )
    if config.start_member is not None and (not config.teacher or config.init_from):
        raise SystemExit("ibrnet train: --start-member picks a --teacher's member for a new student")
    if config.heads > 1 and (not config.init_from or config.teacher):
        raise SystemExit(
            "ibrnet train: --heads grows heads on an --init-from network (a --teacher sets its own)"
        )
    if config.threads:
        torch.set_num_threads(config.threads)
    device = resolve_device(config.device)
    seed_everything(config.seed)

    # --- data: features computed by the serving featurizer, resident on the device ---
    featurizer = get_featurizer(request.features)
    dataset = load_dataset(request)
    print(describe(dataset), file=sys.stderr)
    teacher = distill.load_teacher(Path(config.teacher), dataset) if config.teacher else None
    if teacher is not None:
        dataset.splits["train"] = distill.transfer_split(
            dataset, featurizer, config.transfer_extra, config.seed
        )
    train_split, val_split = dataset.splits["train"], dataset.splits["val"]
    if len(train_split.y) == 0 or len(val_split.y) == 0:
        raise SystemExit("ibrnet train: no usable rows in the train or validation split")
    x_train = torch.from_numpy(train_split.x).to(device)  # [n, d]
    y_train = torch.from_numpy(train_split.y).to(device)  # [n]
    x_val = torch.from_numpy(val_split.x).to(device)
    y_val = val_split.y.astype(np.float64)

    # --- model ---
    if resume:
        saved = RunConfig.load(run_dir)
        _check_resumable(saved, config, request)
        net_config = saved.net  # same normalisation as before
        model = build_network(net_config).to(device)
    elif teacher is not None:
        if config.init_from:  # a student trained further (e.g. with another loss): it must fit the teacher
            net_config, model = warm_start(config, featurizer.name)
            if net_config.heads != len(teacher.members):
                raise SystemExit(
                    "ibrnet train --init-from: a student with a head per teacher member is needed"
                )
        else:
            net_config, model = distill.student_from_teacher(
                teacher, config.head_units, config.arch, config.start_member
            )
        model = model.to(device)
    elif config.init_from:
        net_config, model = warm_start(config, featurizer.name)
        if config.heads > 1:
            net_config, model = distill.heads_on_network(
                model, net_config, config.heads, config.head_units, config.seed
            )
        model = model.to(device)
    else:
        stats = normalisation(dataset, featurizer.labels, config.target_scaling)
        net_config = NetConfig(
            arch=config.arch,
            input_width=featurizer.width,
            element_columns=leading_element_fractions(featurizer.name),
            **stats,
        )
        model = build_network(net_config).to(device)
    parameters = count_parameters(model)
    if teacher is not None:
        targets = distill.teacher_outputs(teacher, x_train)
        objective: Any = distill.DistillationObjective(targets, config.spread_weight)
    elif isinstance(model, HeadedNet):
        objective = distill.IndependentHeadsObjective(len(y_train), net_config.heads, config.seed, device)
    else:
        objective = distill.TargetObjective()
    run_config = RunConfig(
        train=config,
        net=net_config,
        data=request,
        features=FeatureInfo(
            spec=featurizer.name,
            version=featurizer.version,
            width=featurizer.width,
            elements=element_order(featurizer.elements),
        ),
        dataset={
            **dataset.info(),
            "property": dataset.property,
            "unit": dataset.unit,
            "description": dataset.description,
            "citations": dataset.citations,
        },
        parameters=parameters,
        command=command,
        hardware=hardware_description(device),
        created=datetime.now(UTC).isoformat(timespec="seconds"),
    )
    if resume:
        run_config.created = saved.created or run_config.created
        run_config.resumed = [*saved.resumed, command]
        run_config.command = saved.command or command
    write_json(run_dir / CONFIG_FILE, run_config.to_dict())

    # --- optimizer and schedules ---
    try:  # the fused Adam kernel (one pass over all parameters) saves ~2/3 of the step on CPU
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, fused=True)
    except (RuntimeError, ValueError):  # older torch: no fused kernel for this device
        optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer,
        mode="min",
        factor=config.rlrop_factor,
        patience=config.patience_rlrop,
        threshold=1e-4,
        threshold_mode="abs",
        min_lr=config.min_lr,  # Keras: min_delta 1e-4, absolute
    )
    stopper = EarlyStopping(config.patience_es)
    shuffle = torch.Generator(device=device)
    shuffle.manual_seed(config.seed)
    history: list[dict[str, float]] = []
    start_epoch, elapsed_before = 1, 0.0
    best_state: dict[str, torch.Tensor] | None = None
    if resume:
        # RNG states must stay CPU tensors; load_state_dict moves the rest to the model's device
        state = torch.load(checkpoint_path, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        plateau.load_state_dict(state["plateau"])
        plateau.patience = config.patience_rlrop  # patience may be changed when resuming; the rest is state
        stopper.load_state_dict(state["early_stopping"])
        restore_rng(state["rng"], shuffle)
        history, elapsed_before = state["history"], state["elapsed_s"]
        start_epoch = state["epoch"] + 1
        if state["stop_reason"] == "early_stopping":
            print(
                f"{run_dir}: early stopping already ended this run at epoch {state['epoch']}", file=sys.stderr
            )
            start_epoch = config.epochs + 1
        if (run_dir / BEST_FILE).exists():
            best_state = torch.load(run_dir / BEST_FILE, map_location=device, weights_only=True)["model"]
    # made after a resume's weights are loaded: a run that adds averaging on resume starts it there
    average = WeightAverage(model, config.weight_average_decay) if config.weight_average_decay else None
    if average is not None and resume and state.get("weight_average"):
        average.load_state_dict(state["weight_average"])
    validated = average.model if average is not None else model  # the weights validated and kept

    # --- loop ---
    n = len(y_train)
    batches = (n + config.batch_size - 1) // config.batch_size
    started = time.monotonic()
    deadline = started + config.time_limit_min * 60 if config.time_limit_min else float("inf")
    print(
        f"{config.arch}: {parameters:,} parameters, {n:,} training rows, {batches:,} batches/epoch, {device}",
        file=sys.stderr,
    )
    stop_reason = state["stop_reason"] if resume else "max_epochs"
    last_epoch_s = 0.0
    with StopSignal() as stop:
        for epoch in range(start_epoch, config.epochs + 1):
            if time.monotonic() + last_epoch_s > deadline:
                stop_reason = "time_limit"
                break
            epoch_start = time.monotonic()
            model.train()
            order = torch.randperm(n, generator=shuffle, device=device)
            total = torch.zeros((), dtype=torch.float64, device=device)
            bar = tqdm(
                total=batches,
                desc=f"epoch {epoch}",
                unit="batch",
                leave=False,
                disable=not progress,
                mininterval=1.0,
            )
            interrupted = False
            seen = 0
            for start in range(0, n, config.batch_size):
                index = order[start : start + config.batch_size]
                if len(index) < 2:  # BatchNorm cannot train on one row; a random row sits out this epoch
                    continue
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=config.precision == "bf16"):
                    prediction = objective.forward(model, x_train.index_select(0, index))
                loss = objective.loss(prediction, y_train.index_select(0, index), index, model)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if average is not None:
                    average.update()
                total += loss.detach() * len(index)  # stays on the device: no sync per batch
                seen += len(index)
                bar.update()
                if stop.received or time.monotonic() > deadline:
                    interrupted = True
                    break
            bar.close()
            if interrupted:  # the half-trained epoch is discarded; the checkpoint holds the last whole one
                stop_reason = "signal" if stop.received else "time_limit"
                break
            train_mae = float(total) / seen
            val_pred = predict(validated, x_val, config.eval_batch_size).cpu().numpy()
            val_mae = regression_metrics(y_val, val_pred)["mae"]
            lr = optimizer.param_groups[0]["lr"]
            if stopper.step(val_mae, epoch):
                best_state = {k: v.detach().clone() for k, v in validated.state_dict().items()}
                save_torch(run_dir / BEST_FILE, {"model": best_state, "epoch": epoch, "val_mae": val_mae})
            if config.uses_rlrop:
                plateau.step(val_mae)
            last_epoch_s = time.monotonic() - epoch_start
            history.append(
                {
                    "epoch": epoch,
                    "train_mae": train_mae,
                    "val_mae": val_mae,
                    "lr": lr,
                    "seconds": round(last_epoch_s, 3),
                }
            )
            stop_reason = "early_stopping" if stopper.should_stop else "max_epochs"
            save_torch(
                checkpoint_path,
                {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "plateau": plateau.state_dict(),
                    "early_stopping": stopper.state_dict(),
                    "weight_average": average.state_dict() if average is not None else None,
                    "rng": rng_state(shuffle),
                    "history": history,
                    "stop_reason": stop_reason,
                    "elapsed_s": elapsed_before + time.monotonic() - started,
                    "config": run_config.to_dict(),
                },
            )
            write_log(run_dir / LOG_FILE, history)
            best_note = " *" if stopper.best_epoch == epoch else ""
            print(
                f"epoch {epoch}: train MAE {train_mae:.5f}  val MAE {val_mae:.5f}  lr {lr:.1e}  "
                f"{last_epoch_s:.1f} s{best_note}",
                file=sys.stderr,
            )
            if stopper.should_stop:
                break

    # --- outputs: best weights restored, pictures, summary ---
    wall = elapsed_before + time.monotonic() - started
    if best_state is not None:
        model.load_state_dict(best_state)
        val_pred = predict(model, x_val, config.eval_batch_size).cpu().numpy()
        plots.parity(
            y_val,
            val_pred,
            f"{config.arch}, validation (best epoch {stopper.best_epoch})",
            dataset.unit,
            run_dir / PARITY_FILE,
        )
    if history:
        plots.learning_curve(history, stopper.best_epoch, dataset.unit, run_dir / LEARNING_CURVE_FILE)
    completed = history[-1]["epoch"] if history else 0
    run_config.result = RunOutcome(
        epochs_completed=completed,
        best_epoch=stopper.best_epoch,
        best_val_mae=stopper.best if stopper.best_epoch is not None else None,
        stop_reason=stop_reason,
        wall_time_s=round(wall, 1),
        seconds_per_epoch=round(float(np.mean([h["seconds"] for h in history])), 2) if history else None,
    )
    write_json(run_dir / CONFIG_FILE, run_config.to_dict())
    best = f"best epoch {stopper.best_epoch}, val MAE {stopper.best:.5f} {dataset.unit}"
    print(f"{run_dir}: {stop_reason} after epoch {completed}; {best if history else 'no epoch finished'}",
          file=sys.stderr)  # fmt: skip
    return RunResult(
        run_dir,
        completed,
        stopper.best_epoch,
        run_config.result.best_val_mae,
        stop_reason,
        wall,
        parameters,
    )


def warm_start(config: TrainConfig, features: str) -> tuple[NetConfig, torch.nn.Module]:
    """The --init-from network (an ensemble's member K); it must read the same features and be this
    run's architecture."""
    from app.inference.manifest import ModelManifest
    from training.warm_start import load_member, parse_source

    folder, member = parse_source(config.init_from or "")
    source = ModelManifest.load(folder)
    if source.features.spec != features:
        raise SystemExit(
            f"ibrnet train --init-from: {folder} reads {source.features.spec}; this run {features}"
        )
    net, network = load_member(folder, member)
    if net.arch != config.arch:
        raise SystemExit(
            f"ibrnet train --init-from: {folder}#{member} is {net.arch}; this run is {config.arch}"
        )
    return net, network


def config_from_args(
    args: argparse.Namespace, saved: RunConfig | None = None
) -> tuple[TrainConfig, DataRequest]:
    """The train parser's arguments (compare shares them; there ``arch`` is a list, set per run).
    Options not given are None: their values come from TrainConfig and DataRequest (new runs) or
    from the run's config.json (``saved``, a resume), never from defaults written here."""
    names = {f.name for f in fields(TrainConfig)} | {f.name for f in fields(DataRequest)}
    given = {name: getattr(args, name) for name in names if hasattr(args, name)}
    if isinstance(given.get("arch"), list):
        given.pop("arch")
    given["target_scaling"] = False if getattr(args, "no_target_scaling", False) else None
    excluded = getattr(args, "exclude_compositions", None)
    given["exclude"] = tuple(excluded) if excluded else None
    added = getattr(args, "add_train", None)
    given["add_train"] = tuple(added) if added else None
    keep_all_rows = given.get("outlier_iqr") == 0  # "--outlier-iqr 0 keeps all"
    if keep_all_rows:
        given["outlier_iqr"] = None
    config, request = resolve(given, saved)
    if keep_all_rows:
        request = replace(request, outlier_iqr=None)
    return config, request


def run(args: argparse.Namespace) -> int:
    saved = (
        RunConfig.load(Path(args.out)) if args.resume and (Path(args.out) / CONFIG_FILE).exists() else None
    )
    if saved is None and not args.data:
        raise SystemExit("ibrnet train: --data is required (a --resume takes it from the run's config.json)")
    config, request = config_from_args(args, saved)
    result = train(
        config,
        request,
        Path(args.out),
        resume=args.resume,
        command=command_line(args, "train"),
        progress=not args.no_progress,
    )
    return 0 if result.best_epoch is not None else 1
