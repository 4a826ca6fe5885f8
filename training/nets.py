"""The networks: iBRNet (= BRNet) and the 17-layer baselines IRNet and ElemNet, in PyTorch.

Specification: shared/reference/networks.md (the authors' Keras code). Keras defaults are kept
where they matter: LeakyReLU slope 0.3, Glorot-uniform weights with zero bias, and BatchNorm
momentum 0.99 / epsilon 1e-3 (PyTorch's ``momentum`` is 1 - Keras' momentum).

Every network carries its own input standardisation and target scaling as buffers, so the
exported ONNX model takes the featurizer's raw output and returns the property in its unit.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

ARCHITECTURES: tuple[str, ...] = ("ibrnet", "brnet", "irnet", "elemnet", "attention")
# the ones split into heads (a distilled student, or heads grown on one network): HeadedNet
STUDENT_ARCHITECTURES: tuple[str, ...] = ("ibrnet", "brnet", "attention")

# Trunk widths of iBRNet after its two 1024-wide branches; the baselines' 17-layer schedule.
IBRNET_TRUNK: tuple[int, ...] = (512,) * 3 + (256,) * 3 + (128,) * 3 + (64,) * 2 + (32,)
SEVENTEEN: tuple[int, ...] = (1024,) * 4 + IBRNET_TRUNK
# ElemNet drops out at the end of its 1024, 512, 256 and 128 groups (keep prob 0.8, 0.9, 0.7, 0.8).
ELEMNET_DROPOUT: dict[int, float] = {1024: 0.2, 512: 0.1, 256: 0.3, 128: 0.2}


@dataclass
class NetConfig:
    arch: str = "ibrnet"  # ibrnet | brnet | irnet | elemnet | attention
    input_width: int = 86
    branches: int = 2  # iBRNet: parallel branches reading the input
    branch_widths: tuple[int, ...] = (1024, 1024)
    trunk_widths: tuple[int, ...] = IBRNET_TRUNK
    leaky_slope: float = 0.3  # Keras' LeakyReLU default (PyTorch's is 0.01)
    # Standardisation baked into the model; identity unless training sets them from the data.
    input_mean: list[float] = field(default_factory=list)
    input_std: list[float] = field(default_factory=list)
    target_shift: float = 0.0
    target_scale: float = 1.0
    # Predictions below it are raised to it (eval/export only: training keeps the gradient of a
    # too-low prediction). Training sets 0 when every training target is >= 0 (band gaps).
    target_floor: float | None = None
    # A distilled student (training/distill.py): the trunk's last ``head_units`` residual units and
    # the output layer are repeated ``heads`` times, one head per teacher member; 1: one plain network.
    heads: int = 1
    head_units: int = 3
    # The attention network (training/attention_net.py): how many leading input columns are element
    # fractions (the ef block; training sets it), and the size of its element tokens' transformer.
    element_columns: int = 0
    attention_width: int = 128
    attention_layers: int = 3
    attention_heads: int = 4
    attention_tokens: int = 10

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> NetConfig:
        known = {k: v for k, v in values.items() if k in cls.__dataclass_fields__}
        for key in ("branch_widths", "trunk_widths"):
            if key in known:
                known[key] = tuple(known[key])
        return cls(**known)


class Standardise(nn.Module):
    """(x - mean) / std with stored statistics, and the inverse for the target."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        width = config.input_width
        mean = torch.tensor(config.input_mean or [0.0] * width, dtype=torch.float32)
        std = torch.tensor(config.input_std or [1.0] * width, dtype=torch.float32)
        if mean.shape != (width,) or std.shape != (width,):
            raise ValueError(f"normalisation statistics must have {width} values")
        self.register_buffer("mean", mean)
        self.register_buffer("inv_std", 1.0 / std)
        self.register_buffer("shift", torch.tensor(float(config.target_shift)))
        self.register_buffer("scale", torch.tensor(float(config.target_scale)))
        self.floor = config.target_floor

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) * self.inv_std

    def outputs(self, y: torch.Tensor) -> torch.Tensor:
        y = y * self.scale + self.shift
        if self.floor is not None and not self.training:
            y = y.clamp_min(self.floor)
        return y


def float32_head(head: nn.Linear, h: torch.Tensor) -> torch.Tensor:
    """The output layer always in float32: under bf16 autocast a bfloat16 prediction would be rounded
    to about 1/128 of the target's spread, as coarse as the errors the training is trying to remove."""
    with torch.autocast(h.device.type, enabled=False):
        return head(h if h.dtype == torch.float32 else h.float())  # no Cast node in exported graphs


def dense(n_in: int, n_out: int) -> nn.Linear:
    layer = nn.Linear(n_in, n_out)
    nn.init.xavier_uniform_(layer.weight)  # Keras' glorot_uniform
    nn.init.zeros_(layer.bias)
    return layer


class ResidualUnit(nn.Module):
    """``x + act(Dense(x))``; where the width changes, the skip is its own linear projection."""

    def __init__(self, n_in: int, n_out: int, slope: float) -> None:
        super().__init__()
        self.dense = dense(n_in, n_out)
        self.act = nn.LeakyReLU(slope)
        self.skip = dense(n_in, n_out) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + self.act(self.dense(x))


def residual_units(widths: tuple[int, ...], n_in: int, slope: float) -> nn.Sequential:
    layers = []
    for width in widths:
        layers.append(ResidualUnit(n_in, width, slope))
        n_in = width
    return nn.Sequential(*layers)


def merged_branches(branches: nn.ModuleList, x: torch.Tensor, norm: Standardise) -> torch.Tensor:
    """iBRNet's branches reading the standardised input, their outputs added ([n, d] -> [n, 1024])."""
    x = norm.inputs(x)
    merged = branches[0](x)
    for branch in branches[1:]:
        merged = merged + branch(x)
    return merged


class IBRNet(nn.Module):
    """Branches of residual units read the input, their outputs add, a residual trunk follows."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.norm = Standardise(config)
        slope = config.leaky_slope
        self.branches = nn.ModuleList(
            residual_units(config.branch_widths, config.input_width, slope) for _ in range(config.branches)
        )
        self.trunk = residual_units(config.trunk_widths, config.branch_widths[-1], slope)
        self.head = dense(config.trunk_widths[-1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [n, d] -> [n, 1]
        return self.norm.outputs(
            float32_head(self.head, self.trunk(merged_branches(self.branches, x, self.norm)))
        )


class HeadedNet(nn.Module):
    """A network whose tail is split into heads: everything up to the trunk's last ``head_units``
    residual units is shared (``shared``), each head is those units plus an output layer. Trained
    to match one teacher member each (or each on its own bootstrap of the rows), the heads keep the
    members' disagreement at the cost of one network.

    ``forward`` serves what an Ensemble serves, y [n, 2] = the heads' weighted mean and their spread
    times ``sigma_scale``; ``each_head`` gives the heads' outputs [k, n, 1] for training."""

    norm: Standardise  # no __init__ here: a subclass builds its shared part, then grow_heads()

    def grow_heads(self, config: NetConfig, n_in: int) -> None:
        tail, slope = config.trunk_widths[-config.head_units :], config.leaky_slope
        self.heads = nn.ModuleList(
            nn.Sequential(residual_units(tail, n_in, slope), dense(tail[-1], 1)) for _ in range(config.heads)
        )
        self.register_buffer("member_weights", torch.full((config.heads, 1, 1), 1.0 / config.heads))
        self.register_buffer("sigma_scale", torch.tensor(1.0))

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def each_head(self, x: torch.Tensor) -> torch.Tensor:  # x: [n, d] -> [k, n, 1], in the target's unit
        shared = self.shared(x)
        outputs = [self.norm.outputs(float32_head(head[1], head[0](shared))) for head in self.heads]
        return torch.stack(outputs, dim=0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return combine(self.each_head(x), self.member_weights, self.sigma_scale)


def shared_trunk_widths(config: NetConfig) -> tuple[int, ...]:
    """The trunk units before the heads; refused unless at least one is left on each side."""
    if not 0 < config.head_units < len(config.trunk_widths):
        raise ValueError(f"head_units must be between 1 and {len(config.trunk_widths) - 1}")
    return config.trunk_widths[: -config.head_units]


class StudentNet(HeadedNet):
    """iBRNet with heads: the branches and the first trunk units are shared."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        shared = shared_trunk_widths(config)
        self.norm = Standardise(config)
        slope = config.leaky_slope
        self.branches = nn.ModuleList(
            residual_units(config.branch_widths, config.input_width, slope) for _ in range(config.branches)
        )
        self.trunk = residual_units(shared, config.branch_widths[-1], slope)
        self.grow_heads(config, shared[-1])

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(merged_branches(self.branches, x, self.norm))


class IRNetLayer(nn.Module):
    """Dense -> BatchNorm -> ReLU with its own skip (a projection where the width changes)."""

    def __init__(self, n_in: int, n_out: int) -> None:
        super().__init__()
        self.dense = dense(n_in, n_out)
        self.bn = nn.BatchNorm1d(n_out, eps=1e-3, momentum=0.01)  # Keras: epsilon 1e-3, momentum 0.99
        self.skip = dense(n_in, n_out) if n_in != n_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.skip(x) + torch.relu(self.bn(self.dense(x)))


class IRNet(nn.Module):
    """IRNet-17 (Jha et al.): 16 Dense-BN-ReLU layers, each with a skip connection, then Dense(1)."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.norm = Standardise(config)
        layers, n_in = [], config.input_width
        for width in SEVENTEEN:
            layers.append(IRNetLayer(n_in, width))
            n_in = width
        self.body = nn.Sequential(*layers)
        self.head = dense(n_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm.outputs(float32_head(self.head, self.body(self.norm.inputs(x))))


class ElemNet(nn.Module):
    """ElemNet-17 (Jha et al. 2018): 16 Dense-ReLU layers with dropout after four groups, Dense(1)."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__()
        self.norm = Standardise(config)
        layers: list[nn.Module] = []
        n_in = config.input_width
        for i, width in enumerate(SEVENTEEN):
            layers += [dense(n_in, width), nn.ReLU()]
            last_of_group = i + 1 == len(SEVENTEEN) or SEVENTEEN[i + 1] != width
            if last_of_group and width in ELEMNET_DROPOUT:
                layers.append(nn.Dropout(ELEMNET_DROPOUT[width]))
            n_in = width
        self.body = nn.Sequential(*layers)
        self.head = dense(n_in, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm.outputs(float32_head(self.head, self.body(self.norm.inputs(x))))


class Ensemble(nn.Module):
    """Members combined: y [n, 2] = the mean weighted by ``member_weights`` (equal unless export
    fits them on validation; training/member_weights.py) and the members' (population, unweighted)
    standard deviation times ``sigma_scale`` (fitted on validation; training/calibration.py)."""

    def __init__(self, members: list[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)
        self.register_buffer("member_weights", torch.full((len(members), 1, 1), 1.0 / len(members)))
        self.register_buffer("sigma_scale", torch.tensor(1.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.combine(torch.stack([member(x) for member in self.members], dim=0))

    def combine(self, stacked: torch.Tensor) -> torch.Tensor:
        """The members' outputs [k, n, 1] as the served [n, 2]."""
        return combine(stacked, self.member_weights, self.sigma_scale)


def combine(stacked: torch.Tensor, weights: torch.Tensor, sigma_scale: torch.Tensor) -> torch.Tensor:
    """Members' (or heads') outputs [k, n, 1] as the served [n, 2]: weighted mean, scaled spread."""
    mean = (stacked * weights).sum(dim=0)
    return torch.cat([mean, member_spread(stacked) * sigma_scale], dim=1)


def member_spread(stacked: torch.Tensor) -> torch.Tensor:
    """The members' (population, unweighted) standard deviation over dim 0: the served sigma before
    its scale, whatever the members' weights in the mean."""
    return (stacked - stacked.mean(dim=0)).pow(2).mean(dim=0).sqrt()


def build_network(config: NetConfig) -> nn.Module:
    if config.heads > 1:
        if config.arch not in STUDENT_ARCHITECTURES:
            raise ValueError(f"only {', '.join(STUDENT_ARCHITECTURES)} networks have heads")
        if config.arch == "attention":
            from training.attention_net import AttentionStudentNet

            return AttentionStudentNet(config)
        return StudentNet(config)
    if config.arch in ("ibrnet", "brnet"):  # one network; BRNet differs only in its training
        return IBRNet(config)
    if config.arch == "irnet":
        return IRNet(config)
    if config.arch == "elemnet":
        return ElemNet(config)
    if config.arch == "attention":
        from training.attention_net import ElementAttentionNet  # it builds on this module's parts

        return ElementAttentionNet(config)
    raise ValueError(f"unknown architecture {config.arch!r}; choose one of {ARCHITECTURES}")


def count_parameters(module: nn.Module) -> int:
    """Trainable parameters (buffers such as normalisation statistics are not counted)."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)
