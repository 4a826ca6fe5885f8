"""scripts/gpu_train.py rehearsed on the CPU: the GPU path must work the first time it is lent.

A slice of two real runs: both are scored on validation and test on the machine that trained them,
only the one asked for comes back as packed weights, the archive holds every run's config and log,
and the packed weights unpack into a run directory that ``ibrnet export`` and ``evaluate`` accept.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from app.cli import main

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "gpu_train.py"


def test_a_slice_scores_every_run_and_brings_back_the_chosen_ones(tmp_path, small_folder, capsys):
    base, out, runs = tmp_path, tmp_path / "out", tmp_path / "runs"
    command = [sys.executable, str(SCRIPT), "slice", "--device", "cpu", "--minutes", "2", "--epochs", "2",
               "--batch-size", "100", "--out-dir", str(out), "--runs", str(runs), "--bring-back", "keep",
               f"keep=ibrnet,{small_folder},ef,0", f"drop=elemnet,{small_folder},ef,1"]  # fmt: skip
    subprocess.run(command, check=True, cwd=base, capture_output=True, timeout=600)

    summary = {row["run"]: row for row in json.loads((out / "summary.json").read_text())}
    assert sorted(summary) == ["drop", "keep"]
    for row in summary.values():
        assert row["epochs_completed"] == 2 and row["stop_reason"] == "max_epochs"
        assert 0 < row["val_mae"] < 10 and 0 < row["test_mae"] < 10
    assert sorted(path.name for path in out.iterdir()) == ["keep.pt", "runs.tar.gz", "summary.json"]
    with tarfile.open(out / "runs.tar.gz") as archive:
        names = set(archive.getnames())
    assert {"keep/config.json", "keep/log.csv", "drop/config.json", "drop/train.log"} <= names

    # here: unpack, export, evaluate; the packed float16 weights score what the slice reported
    subprocess.run([sys.executable, str(SCRIPT), "unpack", str(out), "--runs", str(base / "back")],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    model_dir = base / "model"
    assert main(["export", str(base / "back" / "keep"), "--out", str(model_dir)]) == 0
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--data", str(small_folder), "--json"]) == 0
    test_mae = json.loads(capsys.readouterr().out.splitlines()[-1])["mae"]
    assert test_mae == pytest.approx(summary["keep"]["test_mae"], rel=0.01)


def test_a_slice_refuses_to_pack_more_than_the_device_tool_returns(tmp_path, small_folder):
    runs = [f"r{i}=ibrnet,{small_folder},ef,{i}" for i in range(7)]
    command = [sys.executable, str(SCRIPT), "slice", "--device", "cpu", "--out-dir", str(tmp_path), *runs]
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "7 runs to bring back" in result.stderr
    assert not list(tmp_path.glob("*.pt"))
