"""An ensemble of different architectures (iBRNets and an element-attention network) on real OQMD
rows: exported as one ONNX file, every member read back from it (``--init-from``), and usable as
a teacher whose student starts from an iBRNet member."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from app.inference.manifest import ONNX_FILE, ModelManifest
from tests.training.run_helpers import train_run
from training import distill, onnx_model
from training.attention_net import ElementAttentionNet
from training.data import DataRequest, load_dataset
from training.nets import IBRNet
from training.run_dir import load_best_model
from training.warm_start import load_member


@pytest.fixture(scope="module")
def attention_run(ensemble_folder: Path) -> Path:
    run = ensemble_folder.parent / "attention-member"
    assert train_run(ensemble_folder, run, "--arch", "attention", "--epochs", "2", "--batch-size", "100") == 0
    return run


@pytest.fixture(scope="module")
def mixed(
    attention_run: Path, ensemble_members: list[Path], ensemble_folder: Path
) -> tuple[Path, list[Path]]:
    """Attention first, so that the heaviest member by position is not an iBRNet."""
    runs = [attention_run, *ensemble_members[:2]]
    folder = ensemble_folder.parent / "mixed"
    assert main(["export", *map(str, runs), "--out", str(folder)]) == 0
    return folder, runs


def test_a_mixed_ensemble_is_one_file_serving_the_members_mean_and_spread(mixed, ensemble_folder):
    folder, runs = mixed
    manifest = ModelManifest.load(folder)
    assert manifest.architecture.name == "attention+ibrnet"
    assert [m["arch"] for m in manifest.architecture.members or []] == ["attention", "ibrnet", "ibrnet"]
    assert manifest.output.members == 3 and manifest.description.startswith("attention+ibrnet")
    assert any("CrabNet" in c for c in manifest.citations) and any("iBRNet" in c for c in manifest.citations)
    x = load_dataset(DataRequest(str(ensemble_folder)), splits=("test",)).splits["test"].x
    served = onnx_model.predict(onnx_model.session(folder / ONNX_FILE), x)
    with torch.no_grad():
        each = np.stack([load_best_model(run)[1].eval()(torch.from_numpy(x)).numpy()[:, 0] for run in runs])
    np.testing.assert_allclose(served[:, 0], each.mean(axis=0), atol=1e-4)
    np.testing.assert_allclose(served[:, 1], manifest.output.sigma_scale * each.std(axis=0), atol=1e-4)


def test_every_member_is_read_back_from_the_file_with_its_own_architecture(mixed, ensemble_folder):
    folder, runs = mixed
    x = torch.from_numpy(load_dataset(DataRequest(str(ensemble_folder)), splits=("val",)).splits["val"].x)
    for member, (run, kind) in enumerate(zip(runs, (ElementAttentionNet, IBRNet, IBRNet), strict=True)):
        config, network = load_member(folder, member)
        assert isinstance(network, kind) and config.arch == ("attention" if member == 0 else "ibrnet")
        with torch.no_grad():
            torch.testing.assert_close(
                network.eval()(x), load_best_model(run)[1].eval()(x), atol=1e-4, rtol=0
            )


def test_init_from_a_member_must_match_its_architecture(mixed, ensemble_folder, tmp_path):
    folder, _ = mixed
    with pytest.raises(SystemExit, match=r"#0 is attention on ef; this run is ibrnet"):
        train_run(ensemble_folder, tmp_path / "wrong", "--init-from", f"{folder}#0", "--epochs", "1")
    run = tmp_path / "fine-tuned"
    assert (
        train_run(ensemble_folder, run, "--arch", "attention", "--init-from", f"{folder}#0", "--epochs", "1")
        == 0
    )


def test_a_mixed_teachers_student_starts_from_its_heaviest_ibrnet(mixed, ensemble_folder):
    folder, _ = mixed
    dataset = load_dataset(DataRequest(str(ensemble_folder)))
    teacher = distill.load_teacher(folder, dataset)
    assert teacher.weights == pytest.approx([1 / 3] * 3)  # equal: the first iBRNet, not member 0
    assert teacher.heaviest == 1
    _, student = distill.student_from_teacher(teacher, head_units=3)
    x = torch.from_numpy(dataset.splits["val"].x)
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(x)[:, 0], teacher.members[1](x)[:, 0], atol=1e-5, rtol=0)


def test_a_student_is_not_an_ensemble_member(ensemble_members, ensemble_folder, tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["export", *map(str, ensemble_members[:2]), "--out", str(teacher)]) == 0
    student = tmp_path / "student"
    args = ["--teacher", str(teacher), "--epochs", "1", "--batch-size", "100", "--lr", "1e-4"]
    assert train_run(ensemble_folder, student, *args) == 0
    with pytest.raises(SystemExit, match="already an ensemble"):
        main(["export", str(student), str(ensemble_members[0]), "--out", str(tmp_path / "refused")])
