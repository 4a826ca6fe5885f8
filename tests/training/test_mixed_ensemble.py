"""An ensemble of different architectures (iBRNets and an element-attention network) on real OQMD
rows: exported as one ONNX file, every member read back from it (``--init-from``), and usable as
a teacher whose student (an iBRNet, or an attention network) starts from a member of its kind."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from app.cli import main
from app.inference.manifest import ONNX_FILE, ModelManifest
from benchmarks.serve import served_network
from tests.training.run_helpers import train_run
from training import distill, onnx_model
from training.attention_net import AttentionStudentNet, ElementAttentionNet
from training.data import DataRequest, load_dataset
from training.nets import IBRNet, count_parameters
from training.run_dir import load_best_model
from training.warm_start import load_member


@pytest.fixture(scope="module")
def attention_run(ensemble_folder: Path) -> Path:
    """Without target scaling, so that its target shift differs from the iBRNets' (which share one)."""
    run = ensemble_folder.parent / "attention-member"
    args = ("--arch", "attention", "--epochs", "2", "--batch-size", "100", "--no-target-scaling")
    assert train_run(ensemble_folder, run, *args) == 0
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
    with pytest.raises(SystemExit, match=r"#0 is attention; this run is ibrnet"):
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
    # the attention member (0) weighs most, then the second iBRNet: the student starts from that one
    teacher = replace(teacher, weights=[0.5, 0.2, 0.3])
    assert teacher.heaviest() == 2
    _, student = distill.student_from_teacher(teacher, head_units=3)
    x = torch.from_numpy(dataset.splits["val"].x)
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(x)[:, 0], teacher.members[2](x)[:, 0], atol=1e-5, rtol=0)
    assert replace(teacher, weights=[0.5, 0.3, 0.2]).heaviest() == 1
    with pytest.raises(SystemExit, match="no ibrnet member"):
        replace(teacher, members=teacher.members[:1], weights=[1.0]).heaviest()


def test_a_student_may_start_as_a_member_chosen_by_number(mixed, ensemble_folder):
    """--start-member K: e.g. the best member on validation, where a weaker one weighs more."""
    folder, _ = mixed
    dataset = load_dataset(DataRequest(str(ensemble_folder)))
    teacher = replace(distill.load_teacher(folder, dataset), weights=[0.5, 0.2, 0.3])  # heaviest iBRNet: 2
    _, student = distill.student_from_teacher(teacher, head_units=3, start=1)
    x = torch.from_numpy(dataset.splits["val"].x)
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(x)[:, 0], teacher.members[1](x)[:, 0], atol=1e-5, rtol=0)
    for wrong in (0, 3, -1):  # 0 is the attention member
        with pytest.raises(
            SystemExit,
            match=rf"--start-member {wrong}: .* has no ibrnet member {wrong} \(its members: 0 attention",
        ):
            distill.student_from_teacher(teacher, head_units=3, start=wrong)


def test_a_student_is_not_an_ensemble_member(ensemble_members, ensemble_folder, tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["export", *map(str, ensemble_members[:2]), "--out", str(teacher)]) == 0
    student = tmp_path / "student"
    args = ["--teacher", str(teacher), "--epochs", "1", "--batch-size", "100", "--lr", "1e-4"]
    assert train_run(ensemble_folder, student, *args) == 0
    with pytest.raises(SystemExit, match=f"{student} is a student with heads"):
        main(["export", str(student), str(ensemble_members[0]), "--out", str(tmp_path / "refused")])


def test_a_member_sharing_a_tensor_with_another_reads_the_one_it_uses(mixed):
    # Equal tensors are stored once and the others point at that copy: a member whose copy was
    # dropped must read the one it points at, not a same-named tensor of some other member.
    # Here member 2's target shift is stored once with member 1's; member 0 (attention) has its own.
    folder, _ = mixed
    manifest = ModelManifest.load(folder)
    shifts = [record["target_shift"] for record in manifest.architecture.members or []]
    assert shifts[0] == 0.0 and shifts[1] == shifts[2] != 0.0
    for member in (1, 2):
        config, network = load_member(folder, member)
        assert float(network.norm.shift) == pytest.approx(config.target_shift)


def test_a_manifest_whose_member_records_do_not_match_its_members_is_refused(mixed):
    folder, _ = mixed
    record = json.loads((folder / "model.json").read_text())
    record["architecture"]["members"].pop()
    with pytest.raises(ValueError, match="lists 2 networks; output has 3 members"):
        ModelManifest.model_validate(record)


def test_an_attention_student_starts_as_the_attention_member(mixed, ensemble_folder):
    folder, _ = mixed
    dataset = load_dataset(DataRequest(str(ensemble_folder)))
    teacher = distill.load_teacher(folder, dataset)
    config, student = distill.student_from_teacher(teacher, head_units=2, arch="attention")
    assert isinstance(student, AttentionStudentNet) and config.heads == 3
    x = torch.from_numpy(dataset.splits["val"].x)
    member = teacher.members[0]
    with torch.no_grad():
        heads = student.eval().each_head(x)[:, :, 0]
        expected = member(x)[:, 0]
        # the shared part is the member's up to the heads, checked directly (its output alone could
        # be nearly constant after two epochs and hide a wrong copy)
        torch.testing.assert_close(student.shared(x), member.trunk[:-2](member.encode(x)), atol=1e-5, rtol=0)
    assert float(expected.std()) > 1e-3
    for head in heads:
        torch.testing.assert_close(head, expected, atol=1e-5, rtol=0)


def test_an_attention_student_trains_exports_with_sigma_and_reads_back(mixed, ensemble_folder, tmp_path):
    folder, _ = mixed
    run, model_dir = tmp_path / "attention-student", tmp_path / "attention-student-model"
    args = ("--arch", "attention", "--teacher", str(folder), "--head-units", "2", "--epochs", "2")
    assert train_run(ensemble_folder, run, *args, "--batch-size", "100", "--lr", "1e-4") == 0
    assert isinstance(load_best_model(run)[1], AttentionStudentNet)
    assert main(["export", str(run), "--out", str(model_dir), "--weights", "fp16"]) == 0
    manifest = ModelManifest.load(model_dir)
    assert manifest.output.kind == "ensemble" and manifest.output.members == 3
    assert manifest.output.interval is not None and "distilled from mixed" in manifest.description
    x = load_dataset(DataRequest(str(ensemble_folder)), splits=("test",)).splits["test"].x
    served = onnx_model.predict(onnx_model.session(model_dir / ONNX_FILE), x)
    assert served.shape == (len(x), 2) and np.all(served[:, 1] > 0)  # the heads parted: a sigma
    # the student is read back from its file whole (a student for --init-from or further training)
    _, network = load_member(model_dir, 0)
    with torch.no_grad():
        again = network.eval()(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(again, served, atol=2e-3 * float(np.abs(served).max()))


def test_heads_grow_on_one_attention_network(attention_run, ensemble_folder):
    run_config, network = load_best_model(attention_run)
    config = run_config.net
    grown_config, grown = distill.heads_on_network(network, config, heads=4, head_units=3, seed=0)
    assert isinstance(grown, AttentionStudentNet) and grown_config.heads == 4
    x = torch.from_numpy(load_dataset(DataRequest(str(ensemble_folder)), splits=("val",)).splits["val"].x)
    with torch.no_grad():
        torch.testing.assert_close(
            grown.eval().shared(x), network.trunk[:-3](network.encode(x)), atol=1e-5, rtol=0
        )
    with pytest.raises(SystemExit, match="already has heads"):
        distill.heads_on_network(grown, grown_config, heads=2, head_units=3)
    with pytest.raises(SystemExit, match="head_units must be between 1 and 11"):
        distill.heads_on_network(network, config, heads=2, head_units=12)


def test_a_student_cannot_teach(ensemble_members, ensemble_folder, tmp_path):
    teacher = tmp_path / "teacher"
    assert main(["export", *map(str, ensemble_members[:2]), "--out", str(teacher)]) == 0
    student, student_model = tmp_path / "student", tmp_path / "student-model"
    args = ["--teacher", str(teacher), "--epochs", "1", "--batch-size", "100", "--lr", "1e-4"]
    assert train_run(ensemble_folder, student, *args) == 0
    assert main(["export", str(student), "--out", str(student_model)]) == 0
    with pytest.raises(SystemExit, match="is a student with heads; distil from its teacher"):
        train_run(ensemble_folder, tmp_path / "again", "--teacher", str(student_model), "--epochs", "1")
    # the benchmarks' naive PyTorch baseline: one network with heads, not one network per head
    assert_the_baseline_is_the_served_network(student_model)


def test_the_naive_baseline_builds_each_members_own_network(mixed):
    assert_the_baseline_is_the_served_network(mixed[0])


def assert_the_baseline_is_the_served_network(model: Path) -> None:
    manifest = ModelManifest.load(model)
    network = served_network(manifest.architecture, manifest.output.kind, manifest.output.members)
    assert count_parameters(network) == manifest.architecture.parameters
