"""Train several runs at once on one GPU in a time-boxed slice, and bring the results back small.

Two halves (docs/benchmarks.md has the exact commands):

``python3 scripts/gpu_train.py slice --minutes 8 --out-dir "$OUT" RUN...`` (on the GPU machine)
    starts one ``python3 -m app.cli train ... --device cuda --time-limit-min M`` per RUN in
    parallel (a 4.5M-parameter MLP at batch 1024 leaves an H100 mostly idle, so N processes give
    close to N times the throughput), resuming any run whose checkpoint is already there. When
    all have stopped, each run's best weights are packed as float16 with its config.json and
    log.csv into ``OUT/<name>.pt`` (9 MB for an iBRNet): the device tool returns at most 8 files
    of 16 MB, so neither best.pt (18 MB) nor checkpoint.pt (54 MB with Adam's moments) fits.
    The training data stays resident on the GPU (training/train.py index_selects its batches).
    Before the runs start, each (dataset, features) is featurized once into the cache; after
    they stop, every run's best-epoch network is scored on validation and test
    (``OUT/summary.json``) and configs, logs and pictures go into ``OUT/runs.tar.gz``, so runs
    whose weights are not brought back (``--bring-back PREFIX``) still give their figures.
    OUT holds nothing else (each run's console log is in the archive), because the device tool
    returns at most 8 files: up to 6 packed runs per slice.

``python3 scripts/gpu_train.py unpack FILES_AT --runs runs/gpu`` (here)
    rebuilds ``runs/gpu/<name>/{config.json,log.csv,best.pt}`` so that ``ibrnet export`` works
    as for a local run. The weights went through float16 once; export's parity check then holds
    against these weights, and ``--weights fp16`` costs nothing more.

RUN is ``NAME=ARCH,DATA,FEATURES,SEED`` e.g. ``fe-ibrnet-s0=ibrnet,oqmd-formation-enthalpy,ef,0``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tarfile
import time
from dataclasses import asdict
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
MAX_PACKED_RUNS = 6  # the device tool returns at most 8 files; summary.json and runs.tar.gz are two
sys.path.insert(0, str(ROOT))  # prepare() and score() use the project's own data and training code


def _train_command(name: str, spec: str, args: argparse.Namespace) -> list[str]:
    arch, data, features, seed = spec.split(",")
    out = Path(args.runs) / name
    command = [sys.executable, "-m", "app.cli", "train", "--data", data, "--arch", arch,
               "--features", features, "--seed", seed, "--out", str(out), "--device", args.device,
               "--batch-size", str(args.batch_size), "--lr", str(args.lr), "--epochs", str(args.epochs),
               "--patience-es", str(args.patience_es), "--patience-rlrop", str(args.patience_rlrop),
               "--time-limit-min", str(args.minutes), "--threads", "1", "--no-progress"]  # fmt: skip
    if args.limit:
        command += ["--limit", str(args.limit)]
    if args.weight_average_decay:
        command += ["--weight-average-decay", str(args.weight_average_decay)]
    if (out / "checkpoint.pt").exists():
        command.append("--resume")
    return command


def pack(run_dir: Path, target: Path) -> None:
    best = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
    half = {
        k: v.half() if v.is_floating_point() and v.numel() >= 1024 else v for k, v in best["model"].items()
    }
    torch.save(
        {
            "model": half,
            "epoch": best["epoch"],
            "val_mae": best["val_mae"],
            "config": (run_dir / "config.json").read_text(),
            "log": (run_dir / "log.csv").read_text(),
        },
        target,
    )


def unpack(source: Path, runs: Path) -> Path:
    packed = torch.load(source, map_location="cpu", weights_only=True)
    run_dir = runs / source.stem
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.json").write_text(packed["config"])
    (run_dir / "log.csv").write_text(packed["log"])
    model = {k: v.float() if v.dtype == torch.float16 else v for k, v in packed["model"].items()}
    torch.save({"model": model, "epoch": packed["epoch"], "val_mae": packed["val_mae"]}, run_dir / "best.pt")
    return run_dir


def prepare(runs: list[str], limit: int | None) -> None:
    """Featurize each (dataset, features) once, before the runs start, so that parallel runs
    read the cache instead of all parsing the same 240k formulas at the same moment."""
    from training.data import DataRequest, load_dataset

    for data, features in sorted({tuple(spec.split(",")[1:3]) for _, spec in map(_split_run, runs)}):
        started = time.monotonic()
        load_dataset(DataRequest(data=data, features=features, limit=limit))
        print(f"features {data} {features}: {time.monotonic() - started:.0f} s", flush=True)


def _split_run(run: str) -> tuple[str, str]:
    name, spec = run.split("=", 1)
    return name, spec


def _brought_back(name: str, prefixes: list[str] | None) -> bool:
    return any(name.startswith(prefix) for prefix in prefixes or [""])


def score(run_dir: Path) -> dict[str, object]:
    """The run's best-epoch weights scored once on validation and test (as ``ibrnet compare`` does)."""
    from training.compare import best_epoch_mae

    config, mae = best_epoch_mae(run_dir, "cuda" if torch.cuda.is_available() else "cpu")
    return {"run": run_dir.name, "arch": config.train.arch, "features": config.data.features,
            "parameters": config.parameters, **(asdict(config.result) if config.result else {}),
            "val_mae": mae["val"], "test_mae": mae["test"]}  # fmt: skip


def slice_(args: argparse.Namespace) -> int:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    if args.tf32:  # cuBLAS TF32 for float32 matmuls: ~3-8x on H100 tensor cores, 10-bit mantissa products
        env["TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"] = "1"
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    runs = Path(args.runs)
    runs.mkdir(parents=True, exist_ok=True)
    kept = [name for name, _ in map(_split_run, args.run) if _brought_back(name, args.bring_back)]
    if len(kept) > MAX_PACKED_RUNS:
        raise SystemExit(f"{len(kept)} runs to bring back; the device tool returns {MAX_PACKED_RUNS} "
                         "besides summary.json and runs.tar.gz (use --bring-back)")  # fmt: skip
    started = time.monotonic()
    prepare(args.run, args.limit)
    jobs = {}
    for run in args.run:
        name, spec = _split_run(run)
        handle = (runs / f"{name}.console.log").open("w")
        jobs[name] = (subprocess.Popen(_train_command(name, spec, args), cwd=ROOT, env=env, stdout=handle,
                                       stderr=subprocess.STDOUT), handle)  # fmt: skip
    codes = {name: process.wait() for name, (process, _) in jobs.items()}
    rows = []
    for name, (_, handle) in jobs.items():
        handle.close()
        run_dir = Path(args.runs) / name
        if not (run_dir / "best.pt").exists():
            print(f"{name}: exit {codes[name]}, no epoch finished")
            continue
        if name in kept:
            pack(run_dir, out / f"{name}.pt")
        rows.append(score(run_dir))
        print(json.dumps(rows[-1]), flush=True)
    (out / "summary.json").write_text(json.dumps(rows, indent=2) + "\n")
    with tarfile.open(out / "runs.tar.gz", "w:gz") as archive:  # configs, logs, pictures: small
        for name in jobs:
            for path in sorted((Path(args.runs) / name).glob("*")):
                if path.suffix in {".json", ".csv", ".png"}:
                    archive.add(path, arcname=f"{name}/{path.name}")
            archive.add(runs / f"{name}.console.log", arcname=f"{name}/train.log")
    print(f"slice took {time.monotonic() - started:.0f} s for {len(jobs)} runs")
    return max(codes.values(), default=0)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("slice")
    run.add_argument("run", nargs="+", help="NAME=ARCH,DATA,FEATURES,SEED")
    run.add_argument("--minutes", type=float, default=8.0)
    run.add_argument("--out-dir", required=True, help="where the packed results go ($OUT)")
    run.add_argument("--runs", default="runs/gpu")
    run.add_argument("--batch-size", type=int, default=1024)
    run.add_argument("--lr", type=float, default=6e-4, help="1e-4 * sqrt(batch / 32): the paper's lr, scaled")
    run.add_argument("--epochs", type=int, default=3000)
    run.add_argument("--patience-es", type=int, default=50)
    run.add_argument("--patience-rlrop", type=int, default=15)
    run.add_argument("--tf32", action="store_true")
    run.add_argument("--weight-average-decay", type=float, help="see ibrnet train --weight-average-decay")
    run.add_argument("--limit", type=int, help="rows per split (a quick rehearsal)")
    run.add_argument("--device", default="cuda", help="cpu: rehearse the slice on a machine without a GPU")
    # the device tool returns at most 8 files (64 MiB in all); every run is scored on test anyway
    run.add_argument(
        "--bring-back",
        action="append",
        metavar="PREFIX",
        help="pack the weights of only runs named with this prefix (repeatable; default all)",
    )
    back = commands.add_parser("unpack")
    back.add_argument("files_at", help="the folder the device tool returned the .pt files in")
    back.add_argument("--runs", default="runs/gpu")
    args = parser.parse_args()
    if args.command == "slice":
        return slice_(args)
    for source in sorted(Path(args.files_at).glob("*.pt")):
        print(unpack(source, Path(args.runs)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
