from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from training.nets import (
    SEVENTEEN,
    ElemNet,
    Ensemble,
    IBRNet,
    IRNet,
    NetConfig,
    ResidualUnit,
    build_network,
    count_parameters,
)


@pytest.mark.parametrize("arch", ["ibrnet", "brnet"])
def test_ibrnet_has_the_published_parameter_count(arch):
    assert count_parameters(build_network(NetConfig(arch=arch, input_width=86))) == 4_548_385


def test_input_width_follows_the_featurizer():
    # only the two branches' first units read the input: 2 branches x 2 dense layers x 1024 per input
    assert count_parameters(build_network(NetConfig(input_width=145))) == 4_548_385 + 59 * 4 * 1024


def test_ibrnet_structure():
    net = IBRNet(NetConfig())
    assert len(net.branches) == 2
    for branch in net.branches:
        assert [u.dense.out_features for u in branch] == [1024, 1024]
        assert isinstance(branch[0].skip, nn.Linear) and isinstance(branch[1].skip, nn.Identity)
    widths = [u.dense.out_features for u in net.trunk]
    assert widths == [512] * 3 + [256] * 3 + [128] * 3 + [64] * 2 + [32]
    projections = [isinstance(u.skip, nn.Linear) for u in net.trunk]
    assert projections == [w != prev for w, prev in zip(widths, [1024, *widths[:-1]], strict=True)]
    assert net.head.out_features == 1
    slopes = {m.negative_slope for m in net.modules() if isinstance(m, nn.LeakyReLU)}
    assert slopes == {0.3}
    assert not any(isinstance(m, nn.BatchNorm1d | nn.Dropout) for m in net.modules())


def test_keras_initialisation():
    torch.manual_seed(0)
    for layer in (m for m in IBRNet(NetConfig()).modules() if isinstance(m, nn.Linear)):
        assert torch.count_nonzero(layer.bias) == 0
        bound = math.sqrt(6.0 / (layer.in_features + layer.out_features))  # glorot_uniform
        assert layer.weight.abs().max() <= bound
        if layer.weight.numel() > 1000:
            assert layer.weight.abs().max() > 0.95 * bound


def test_residual_unit_arithmetic():
    unit = ResidualUnit(4, 4, 0.3)
    x = torch.randn(3, 4)
    pre = unit.dense(x)
    assert torch.allclose(unit(x), x + torch.where(pre > 0, pre, 0.3 * pre))
    projected = ResidualUnit(4, 6, 0.3)
    pre = projected.dense(x)
    assert torch.allclose(projected(x), projected.skip(x) + torch.where(pre > 0, pre, 0.3 * pre))


def test_irnet_17_shape():
    net = IRNet(NetConfig(arch="irnet"))
    layers = list(net.body)
    assert [layer.dense.out_features for layer in layers] == list(SEVENTEEN)
    assert len(layers) + 1 == 17  # 16 hidden layers + Dense(1)
    widths = [86, *SEVENTEEN]
    assert [isinstance(layer.skip, nn.Linear) for layer in layers] == [
        widths[i] != widths[i + 1] for i in range(16)
    ]
    assert sum(isinstance(m, nn.BatchNorm1d) for m in net.modules()) == 16
    assert all(m.eps == 1e-3 and m.momentum == 0.01 for m in net.modules() if isinstance(m, nn.BatchNorm1d))


def test_elemnet_17_shape():
    net = ElemNet(NetConfig(arch="elemnet"))
    dense = [m for m in net.modules() if isinstance(m, nn.Linear)]
    assert [m.out_features for m in dense] == [*SEVENTEEN, 1]
    dropouts = [m.p for m in net.modules() if isinstance(m, nn.Dropout)]
    assert dropouts == pytest.approx([0.2, 0.1, 0.3, 0.2])  # keep 0.8, 0.9, 0.7, 0.8
    # dropout closes each group: it follows the group's last ReLU
    body = list(net.body)
    for i, module in enumerate(body):
        if isinstance(module, nn.Dropout):
            assert isinstance(body[i - 1], nn.ReLU)
            width = body[i - 2].out_features
            assert i + 1 == len(body) or body[i + 1].out_features != width
    assert not any(isinstance(m, nn.BatchNorm1d) for m in net.modules())


@pytest.mark.parametrize("arch", ["ibrnet", "brnet", "irnet", "elemnet"])
def test_every_network_maps_n_by_d_to_n_by_1(arch):
    net = build_network(NetConfig(arch=arch, input_width=12)).eval()
    assert net(torch.rand(7, 12)).shape == (7, 1)


def test_normalisation_is_baked_in():
    width = 5
    mean, std = [0.1, 0.2, 0.3, 0.4, 0.5], [1.0, 2.0, 0.5, 4.0, 1.0]
    torch.manual_seed(0)
    plain = build_network(NetConfig(input_width=width)).eval()
    torch.manual_seed(0)
    baked = build_network(
        NetConfig(input_width=width, input_mean=mean, input_std=std, target_shift=-1.5, target_scale=3.0)
    ).eval()
    x = torch.rand(4, width)
    expected = plain((x - torch.tensor(mean)) / torch.tensor(std)) * 3.0 - 1.5
    assert torch.allclose(baked(x), expected, atol=1e-5)
    with pytest.raises(ValueError, match="5 values"):
        build_network(NetConfig(input_width=width, input_mean=[0.0]))


def test_config_round_trips_through_json_types():
    config = NetConfig(arch="irnet", input_width=10, input_mean=[0.0] * 10, input_std=[1.0] * 10)
    values = config.to_dict()
    values["trunk_widths"] = list(values["trunk_widths"])  # as JSON gives them back
    assert NetConfig.from_dict(values) == config


def test_ensemble_gives_mean_and_std():
    members = [build_network(NetConfig(input_width=6)).eval() for _ in range(3)]
    x = torch.rand(5, 6)
    out = Ensemble(members)(x)
    stacked = torch.stack([m(x) for m in members])
    assert out.shape == (5, 2)
    assert torch.allclose(out[:, 0], stacked.mean(0).squeeze(1))
    assert torch.allclose(out[:, 1], stacked.std(0, unbiased=False).squeeze(1), atol=1e-6)


def test_ensemble_weights_the_mean_but_not_the_spread():
    members = [build_network(NetConfig(input_width=6)).eval() for _ in range(3)]
    ensemble = Ensemble(members)
    ensemble.member_weights.copy_(torch.tensor([0.7, 0.3, 0.0]).view(3, 1, 1))
    x = torch.rand(5, 6)
    out = ensemble(x)
    stacked = torch.stack([m(x) for m in members]).squeeze(2)  # [3, 5]
    assert torch.allclose(out[:, 0], 0.7 * stacked[0] + 0.3 * stacked[1], atol=1e-6)
    assert torch.allclose(out[:, 1], stacked.std(0, unbiased=False), atol=1e-6)  # all three members


def test_unknown_architecture():
    with pytest.raises(ValueError, match="unknown architecture"):
        build_network(NetConfig(arch="resnet"))
