"""The spike clip: a gradient far above the recent norms is scaled down to the limit, ordinary ones
pass untouched, and the state survives a checkpoint."""

from __future__ import annotations

import json

import pytest
import torch

from app.cli import main
from training.spike_clip import WARMUP_STEPS, SpikeClip


def _parameter() -> torch.nn.Parameter:
    return torch.nn.Parameter(torch.zeros(4))


def _step(clip: SpikeClip, parameter: torch.nn.Parameter, norm: float) -> float:
    """Give the parameter a gradient of the given norm, clip, return the norm that is left."""
    parameter.grad = torch.full((4,), norm / 2.0)  # four entries of norm/2: Euclidean norm = norm
    clip.clip_([parameter])
    return float(torch.linalg.vector_norm(parameter.grad))


def test_a_spike_is_scaled_to_the_limit_and_ordinary_steps_pass():
    parameter, clip = _parameter(), SpikeClip(4.0, torch.device("cpu"))
    for step in range(WARMUP_STEPS):
        norm = 100.0 if step == 50 else 1.0
        assert _step(clip, parameter, norm) == pytest.approx(norm)
    assert clip.take_clipped_count() == 0  # nothing is clipped while the average warms up
    for _ in range(200):
        _step(clip, parameter, 1.0)
    assert _step(clip, parameter, 1.0) == pytest.approx(1.0)
    assert _step(clip, parameter, 3.9) == pytest.approx(3.9)  # under 4x the running norm: untouched
    left = _step(clip, parameter, 100.0)
    assert 3.9 < left < 4.5  # 4x the running norm (which the 3.9 step nudged above 1)
    assert clip.take_clipped_count() == 1 and clip.take_clipped_count() == 0
    assert _step(clip, parameter, 100.0) < 5.0  # the spike did not raise the limit by much


def test_the_state_resumes_exactly():
    parameter, first = _parameter(), SpikeClip(3.0, torch.device("cpu"))
    for norm in [1.0] * (WARMUP_STEPS + 20):
        _step(first, parameter, norm)
    second = SpikeClip(3.0, torch.device("cpu"))
    second.load_state_dict(first.state_dict())
    assert _step(first, parameter, 50.0) == _step(second, _parameter(), 50.0) == pytest.approx(3.0, rel=0.02)


def test_training_records_the_clip_and_refuses_a_factor_of_one(small_folder, tmp_path, capsys):
    arguments = ["train", "--data", str(small_folder), "--batch-size", "64", "--lr", "1e-3",
                 "--no-progress", "--threads", "1", "--epochs", "1"]  # fmt: skip
    assert main([*arguments, "--out", str(tmp_path / "run"), "--spike-clip", "4"]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["spike_clip"] == 4.0 and "--spike-clip 4.0" in config["command"]
    assert "steps clipped" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main([*arguments, "--out", str(tmp_path / "refused"), "--spike-clip", "1"])
    assert "--spike-clip" in capsys.readouterr().err and not (tmp_path / "refused").exists()
