"""The element-attention network (``--arch attention``) on real formulas: padding is inert, element
order does not matter, and it trains, exports (float16 weights) and evaluates through the real CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from app.chemistry.featurizers import get_featurizer, leading_element_fractions
from app.chemistry.formula import parse_formula
from app.cli import main
from app.inference.manifest import ModelManifest
from benchmarks.model_sets import mflop_per_formula
from tests.training.run_helpers import train_run
from training import onnx_model
from training.attention_net import MASKED, AttentionBlock, ElementAttentionNet
from training.nets import NetConfig, build_network
from training.warm_start import load_member

FORMULAS = ("LiFePO4", "Fe2O3", "Cu", "Ba2YCu3O7", "Li7La3Zr2O12", "NaCl", "Mn0.5Co0.25Ni0.25O")
# More elements than the default 10 tokens, with ties at the cut: which ones are read must not
# depend on whether PyTorch or ONNX Runtime picks them.
CROWDED = ("HLiBeBCNOFNaMgAlSi", "BaSrCaMgZnCuNiCoFeMnO", "Ba2F1H1Mn1Na1O26Re2Si8Ti2Y1Zr1")


def features(formulas: tuple[str, ...] = FORMULAS) -> torch.Tensor:
    featurizer = get_featurizer("ef+pa")
    return torch.from_numpy(featurizer.transform([parse_formula(f) for f in formulas]))


def small_net(tokens: int) -> ElementAttentionNet:
    torch.manual_seed(0)
    config = NetConfig(
        arch="attention",
        input_width=get_featurizer("ef+pa").width,
        element_columns=leading_element_fractions("ef+pa"),
        attention_width=32,
        attention_layers=2,
        attention_heads=4,
        attention_tokens=tokens,
        trunk_widths=(64, 32),
    )
    net = build_network(config)
    assert isinstance(net, ElementAttentionNet)
    torch.nn.init.normal_(net.head.weight)  # built at zero (it starts at the mean); trained it is not
    return net.eval()


def test_the_ef_block_is_found_where_the_features_start_with_it():
    assert leading_element_fractions("ef+pa") == leading_element_fractions("ef") == 86
    assert leading_element_fractions("pa") == 0
    with pytest.raises(ValueError, match="ef element fractions first"):
        build_network(NetConfig(arch="attention", input_width=145, element_columns=0))


def test_padding_tokens_change_nothing():
    # the same weights reading 6 or 20 tokens: the extra ones are padding and must be masked out
    # (this fails if the mask is dropped: a padding token's embedding would leak into the answer)
    few, many = small_net(6), small_net(20)
    many.load_state_dict(few.state_dict())
    x = features()
    with torch.no_grad():
        assert torch.allclose(few(x), many(x), atol=1e-5)


def test_attention_does_not_depend_on_the_order_of_the_tokens():
    torch.manual_seed(1)
    block = AttentionBlock(width=16, heads=4, slope=0.3).eval()
    tokens = torch.randn(5, 7, 16)
    padding = torch.zeros(5, 1, 1, 7)
    padding[:, ..., 5:] = MASKED  # the last two are padding
    order = torch.tensor([3, 0, 6, 1, 5, 2, 4])
    with torch.no_grad():
        shuffled = block(tokens[:, order], padding[..., order])
        assert torch.allclose(shuffled, block(tokens, padding)[:, order], atol=1e-5)
        assert not torch.allclose(shuffled, block(tokens, padding), atol=1e-3)


def test_the_attention_network_is_refused_where_it_cannot_work(small_folder: Path, tmp_path: Path):
    with pytest.raises(SystemExit, match="must start with ef"):
        train_run(small_folder, tmp_path / "pa", "--arch", "attention", "--features", "pa", "--epochs", "1")
    with pytest.raises(SystemExit, match="--arch irnet has none"):
        train_run(small_folder, tmp_path / "heads", "--arch", "irnet", "--heads", "2", "--epochs", "1")


def test_train_export_and_evaluate_an_attention_network(small_folder: Path, tmp_path: Path, capsys):
    run = tmp_path / "run"
    assert train_run(small_folder, run, "--arch", "attention", "--features", "ef+pa", "--epochs", "3") == 0
    model_dir = tmp_path / "model"
    # export checks ONNX against PyTorch on real inputs before it writes anything
    assert main(["export", str(run), "--out", str(model_dir), "--weights", "fp16"]) == 0
    manifest = ModelManifest.load(model_dir)
    assert manifest.architecture.name == "attention"
    assert manifest.architecture.config["element_columns"] == 86
    assert any("CrabNet" in citation for citation in manifest.citations)
    capsys.readouterr()
    assert main(["evaluate", str(model_dir), "--data", str(small_folder), "--split", "test", "--json"]) == 0
    scored = json.loads(capsys.readouterr().out)
    assert scored["mae"] == pytest.approx(manifest.metrics["test"].mae, rel=1e-6)
    x = features(FORMULAS + CROWDED)
    predicted = onnx_model.predict(onnx_model.session(model_dir / "model.onnx"), x.numpy())
    assert predicted.shape == (len(x), 1) and np.isfinite(predicted).all()
    # --init-from reads every weight back by name from the ONNX file (a 3-D Linear would be
    # exported under a new name and refused here) and starts as the exported function
    _, reloaded = load_member(model_dir, 0)
    with torch.no_grad():
        again = reloaded.eval()(x).numpy()
    np.testing.assert_allclose(again, predicted, atol=2e-4 * float(np.abs(predicted).max()))
    # the benchmarks' arithmetic count: every layer applied to a token counts once per token
    assert mflop_per_formula(model_dir) == pytest.approx(expected_mflop(manifest.architecture.config))


def expected_mflop(config: dict) -> float:
    """Multiply-adds of one formula through the default attention network, counted by hand."""
    k, w, layers = config["attention_tokens"], config["attention_width"], config["attention_layers"]
    tokens = k * (2 * w + w * w)  # the fraction's encoding
    block = k * 3 * w * w + 2 * k * k * w + k * w * w + k * 4 * w * w  # qkv, scores, mix, out, feed
    n_in, trunk = w + config["input_width"] - config["element_columns"], 0
    for width in config["trunk_widths"]:
        trunk += n_in * width * (2 if n_in != width else 1)  # a projected skip where the width changes
        n_in = width
    return 2 * (tokens + layers * block + trunk + n_in) / 1e6
