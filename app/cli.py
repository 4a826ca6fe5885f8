"""The ``ibrnet`` command. Argument contracts live here; each command's work lives beside its code.

Handlers are imported lazily so that ``ibrnet predict`` never imports torch and ``ibrnet train``
never imports FastAPI. A handler is ``run(args: argparse.Namespace) -> int`` (the exit status).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

# command -> "module:function"
HANDLERS: dict[str, str] = {
    "serve": "app.commands.serve:run",
    "predict": "app.commands.predict:run",
    "screen": "app.screening.cli:run",
    "train": "training.train:run",
    "export": "training.export:run",
    "evaluate": "training.evaluate:run",
    "evaluate-stability": "training.stability:run",
    "compare": "training.compare:run",
    "select-members": "training.select_members:run",
    "calibrate-interval": "training.intervals:run",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="ibrnet", description="Materials property prediction from chemical formulas."
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    serve = commands.add_parser("serve", help="start the HTTP service")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8000)
    serve.add_argument("--models", help="model directory (default: IBRNET_MODELS_DIR)")
    serve.add_argument("--database-url", help="SQLAlchemy URL (default: IBRNET_DATABASE_URL)")
    serve.add_argument("--workers", type=int, default=1, help="uvicorn worker processes")

    predict = commands.add_parser("predict", help="predict formulas locally, no server needed")
    predict.add_argument("formulas", nargs="+", metavar="FORMULA")
    predict.add_argument("--models", help="model directory (default: IBRNET_MODELS_DIR)")
    predict.add_argument("--properties", nargs="*", help="only these properties")
    predict.add_argument("--json", action="store_true", help="print JSON instead of a table")

    screen = commands.add_parser("screen", help="screen many compositions, locally or on Dask")
    screen.add_argument("--input", help="CSV or Parquet file with a formula column")
    screen.add_argument("--formula-column", default="formula")
    screen.add_argument("--chemsys", help='chemical system to enumerate, e.g. "Li-Fe-P-O"')
    screen.add_argument("--max-atoms", type=int, default=6, help="atoms per reduced formula")
    screen.add_argument("--no-subsystems", action="store_true", help="only compositions with every element")
    screen.add_argument("--properties", nargs="*")
    screen.add_argument("--sort-by")
    order = screen.add_mutually_exclusive_group()
    order.add_argument(
        "--ascending", dest="ascending", action="store_true", default=None, help="lowest first"
    )
    order.add_argument(
        "--descending",
        dest="ascending",
        action="store_false",
        help="highest first (default for p_stable; lowest first for the others)",
    )
    screen.add_argument("--top-k", type=int)
    screen.add_argument("--out", required=True, help="results file (.csv or .parquet)")
    screen.add_argument("--models", help="model directory (default: IBRNET_MODELS_DIR)")
    screen.add_argument("--dask", help="local:N for a local cluster, or a scheduler address tcp://host:8786")
    screen.add_argument("--partition-size", type=int, default=50_000)
    screen.add_argument(
        "--filter", action="append", metavar="PROP:MIN:MAX[:MAXUNC]", help='e.g. "formation_enthalpy::0"'
    )
    screen.add_argument("--max-uncertainty", type=float, help="drop rows less certain than this")
    screen.add_argument(
        "--in-domain-only",
        action="store_true",
        help="drop rows outside any model's training domain (the in_domain column)",
    )
    screen.add_argument(
        "--hull",
        metavar="JSON",
        help="after a --chemsys screen with e_above_hull: write the predicted hull (known compounds "
        "plus the compositions predicted below the known hull) to this file",
    )
    screen.add_argument("--threads", type=int, help="ORT threads per model session (per Dask worker)")
    screen.add_argument("--no-progress", action="store_true", help="no progress bar")

    train = commands.add_parser("train", help="train a network (needs the train extra)")
    # Defaults live in training/run_config.py (TrainConfig) and training/data.py (DataRequest): an
    # option not given is None here, and a --resume takes it from the run's config.json instead.
    train.add_argument("--data", help="packaged dataset name or a CSV file (required unless --resume)")
    train.add_argument(
        "--arch", choices=["ibrnet", "brnet", "irnet", "elemnet", "attention"], help="default ibrnet"
    )
    train.add_argument("--features", choices=["ef", "pa", "ef+pa"], help="default ef")
    train.add_argument("--out", required=True, help="run directory")
    train.add_argument("--epochs", type=int, help="default 3000")
    train.add_argument("--batch-size", type=int, help="default 32 (the papers')")
    train.add_argument("--lr", type=float, help="default 1e-4")
    train.add_argument("--device", help="auto (default), cpu, cuda or cuda:N")
    train.add_argument("--seed", type=int, help="default 0")
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from the run's checkpoint: the run's options come from its config.json (only "
        "--epochs, patience, device, threads and time limit may change)",
    )
    train.add_argument("--limit", type=int, help="use at most this many rows of each split (seeded subset)")
    _add_training_options(train)
    train.add_argument("--no-target-scaling", action="store_true", help="no train mean/std on the output")
    train.add_argument(
        "--init-from",
        metavar="MODEL_DIR[#MEMBER]",
        help="start from a shipped model's weights (an ensemble's MEMBER, default 0) and fine-tune: "
        "transfer between databases, e.g. OQMD formation enthalpy -> Materials Project",
    )
    train.add_argument(
        "--teacher",
        metavar="MODEL_DIR",
        help="distil this shipped ensemble into one network with a head per member (training/distill.py), "
        "of --arch (ibrnet, or attention), starting from the teacher's heaviest member of it; the "
        "transfer set is the train split minus every validation and test composition",
    )
    train.add_argument(
        "--start-member",
        type=int,
        metavar="K",
        help="with --teacher: the student starts as the teacher's member K (0-based, of --arch) instead "
        "of its heaviest; e.g. the best member on validation when a weaker one carries more weight",
    )
    train.add_argument(
        "--head-units",
        type=int,
        help="with --teacher or --heads: trunk units repeated in each head (default 3)",
    )
    train.add_argument(
        "--transfer-extra",
        type=float,
        metavar="TIMES",
        help="with --teacher: add TIMES x the train split of compositions one atom away from train ones, "
        "labelled by the teacher only (never a composition of any split)",
    )
    train.add_argument(
        "--spread-weight",
        type=float,
        help="with --teacher: weight of |spread(heads) - spread(members)| in the loss (default 1; 0: none)",
    )
    train.add_argument(
        "--heads",
        type=int,
        help="with --init-from and no teacher: grow this many heads on the source's trunk, each trained "
        "on the target; their spread is the uncertainty",
    )
    train.add_argument("--no-progress", action="store_true", help="no progress bar")

    export = commands.add_parser("export", help="export a trained run to ONNX + manifest")
    export.add_argument("run_dir", metavar="RUN_DIR", nargs="+", help="one run, or several for an ensemble")
    export.add_argument("--out", required=True, help="model directory to write")
    export.add_argument("--name", help="model name (default: the output folder's name)")
    export.add_argument("--quantize", choices=["int8"], help="also write a quantized variant")
    export.add_argument(
        "--member-weights", choices=["equal", "fitted"],
        help="ensembles: how members count in the served mean (fitted: the non-negative weights summing "
        "to 1 with the lowest validation MAE; default equal); the uncertainty always uses every member",
    )  # fmt: skip
    export.add_argument(
        "--weights", choices=["fp32", "fp16"], help="storage of model.onnx's weights (fp16: half the bytes)"
    )

    select = commands.add_parser(
        "select-members", help="score every subset of trained runs as an ensemble, on validation only"
    )
    select.add_argument("run_dir", metavar="RUN_DIR", nargs="+", help="two or more runs of one dataset")
    select.add_argument("--min-size", type=int, default=2, help="smallest subset to score (default 2)")
    select.add_argument("--top", type=int, default=15, help="rows of the table (default 15)")
    select.add_argument("--json", action="store_true", help="every subset as JSON")

    stability = commands.add_parser(
        "evaluate-stability",
        help="score a formation_energy_mp model on stability (CritExam test split, two protocols)",
    )
    stability.add_argument("model_dir", metavar="MODEL_DIR")
    stability.add_argument("--protocol", choices=["service", "bartel", "both"], default="both")
    stability.add_argument(
        "--exclude",
        metavar="DATASET",
        action="append",
        default=[],
        help="also score the test compounds absent from this packaged dataset (every split), e.g. "
        "oqmd-formation-enthalpy for a model that started from the OQMD network",
    )
    stability.add_argument("--json", action="store_true")

    interval = commands.add_parser(
        "calibrate-interval",
        help="fit a shipped model's 90%% prediction interval on validation (split-conformal) into model.json",
    )
    interval.add_argument("model_dir", metavar="MODEL_DIR", nargs="+")
    interval.add_argument("--data", help="the model's dataset (default: the packaged one model.json names)")

    evaluate = commands.add_parser("evaluate", help="score a model directory on a dataset split")
    evaluate.add_argument("model_dir", metavar="MODEL_DIR")
    evaluate.add_argument("--data", required=True, help="packaged dataset name or a CSV file")
    evaluate.add_argument("--split", default="test", choices=["train", "val", "test"])
    evaluate.add_argument("--json", action="store_true")
    evaluate.add_argument("--limit", type=int, help="at most this many rows (the subset train --limit used)")
    evaluate.add_argument("--variant", choices=["fp32", "int8"], default="fp32", help="which ONNX file")
    _add_data_options(evaluate)

    compare = commands.add_parser("compare", help="train several architectures, print a table")
    compare.add_argument("--data", required=True)
    compare.add_argument("--arch", nargs="+", default=["ibrnet", "brnet", "irnet", "elemnet", "rf"])
    compare.add_argument("--features", choices=["ef", "pa", "ef+pa"], help="default ef")
    compare.add_argument("--out", required=True, help="folder for the runs and the table")
    compare.add_argument("--epochs", type=int, help="default 3000")
    compare.add_argument("--batch-size", type=int, help="default 32")
    compare.add_argument("--lr", type=float, help="default 1e-4")
    compare.add_argument("--device", help="default auto")
    compare.add_argument("--seed", type=int, help="default 0")
    compare.add_argument("--limit", type=int)
    _add_training_options(compare)
    compare.add_argument("--rf-trees", type=int, default=100, help="trees of the random-forest baseline")
    compare.add_argument("--rf-features", default="pa", choices=["ef", "pa", "ef+pa"])
    return parser


def _open_fraction(text: str) -> float:
    """An argparse type: a number strictly between 0 and 1 (a decay), refused by name otherwise."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a number greater than 0 and less than 1, got {text!r}")
    return value


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--formula-column", help="CSV column with the formulas (default: formula)")
    parser.add_argument("--target-column", help="CSV column with the target (default: target)")


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--patience-es", type=int, help="EarlyStopping patience (epochs; default 50)")
    parser.add_argument("--patience-rlrop", type=int, help="ReduceLROnPlateau patience (epochs; default 45)")
    parser.add_argument("--time-limit-min", type=float, help="stop cleanly after this many minutes")
    parser.add_argument("--threads", type=int, help="CPU threads for torch (default: all)")
    parser.add_argument(
        "--weight-average-decay",
        type=_open_fraction,
        help="validate, keep and export an exponential moving average of the weights with this "
        "per-step decay (e.g. 0.999) instead of the raw weights; off by default (the papers' recipe)",
    )
    parser.add_argument(
        "--precision",
        choices=["fp32", "bf16"],
        help="fp32 (default) or bf16: mixed-precision training (2-3x faster on CPUs with AMX and on GPUs); "
        "validation, best-epoch choice and the exported model stay float32",
    )
    parser.add_argument(
        "--outlier-iqr",
        type=float,
        help="drop TRAIN rows with a target outside [Q1-k*IQR, Q3+k*IQR] (default 10); 0 keeps all",
    )
    parser.add_argument("--property", help="property key for a CSV dataset (default: the target column)")
    parser.add_argument("--unit", help="unit of a CSV dataset's target")
    parser.add_argument(
        "--exclude-compositions",
        metavar="DATASET[:SPLIT+SPLIT]",
        action="append",
        help="drop train and val rows whose composition is in this dataset's splits (all, or those "
        "named), e.g. critexam-ef:test: a transfer source that never saw the target's test compounds",
    )
    parser.add_argument(
        "--add-train",
        metavar="DATASET",
        action="append",
        help="add this dataset's rows (every split) of the same property to the TRAIN split, except "
        "any composition in a split of --data or named by --exclude-compositions, e.g. "
        "matbench-mp-e-form beside critexam-ef",
    )
    parser.add_argument(
        "--add-train-duplicates",
        choices=["lowest", "mean"],
        help="several added rows of one composition (polymorphs) become one: the lowest target "
        "(default: the ground state) or their mean",
    )
    _add_data_options(parser)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    module_name, function_name = HANDLERS[args.command].split(":")
    try:
        handler = getattr(importlib.import_module(module_name), function_name)
    except ModuleNotFoundError as error:
        if error.name == "torch":
            print(
                "ibrnet: this command needs the training tools: pip install 'ibrnet-service[train]'",
                file=sys.stderr,
            )
            return 2
        raise
    from pydantic import ValidationError

    from app.settings import Settings, settings_problems

    try:
        return int(handler(args) or 0)
    except ValidationError as error:
        if error.title != Settings.__name__:
            raise
        for line in settings_problems(error):  # a bad IBRNET_ variable: say which, not a traceback
            print(f"ibrnet {args.command}: {line}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
