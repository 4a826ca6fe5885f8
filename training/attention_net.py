"""An element-attention network (``--arch attention``): self-attention over a formula's elements.

Why it is here: on the Materials Project split the networks that let elements attend to each other
(Roost 0.0547, CrabNet 0.0593 eV/atom) beat fully connected ones trained from scratch by a wide
margin (iBRNet 0.088 after 31 CPU epochs; docs/stability.md), and issue 15's formation-energy
target (<= 0.052) sits below all of them. This is the smallest such network that reads the same
``ef+pa`` vector the service already computes, so nothing in serving changes: it takes the ``ef``
block (the leading element fractions), picks the ``attention_tokens`` largest, and lets them
attend to each other; the pooled result meets the standardised ``pa`` attributes in a residual MLP.

Everything is a fixed-shape tensor op (TopK, Gather, MatMul, Softmax), so it exports to ONNX like
the other networks and runs with padded tokens masked out. A formula with more elements than
``attention_tokens`` (10 by default; the packaged datasets have at most 9) is read by its largest
fractions only, ties at the cut going to the element earlier in the ef order, in PyTorch and in
ONNX Runtime alike.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from training.nets import (
    HeadedNet,
    NetConfig,
    Standardise,
    dense,
    float32_head,
    residual_units,
    shared_trunk_widths,
)

MASKED = -1e4  # added to a padded token's attention score: exp() of it is 0 in float16 and bfloat16 too


def tokenwise(layer: nn.Module, tokens: torch.Tensor) -> torch.Tensor:
    """``layer`` on every token, as one 2-D matrix product: exported as a Gemm that keeps the
    weight's PyTorch name (a 3-D Linear becomes a MatMul on a renamed, transposed copy), which is
    what ``--init-from`` reads back from the ONNX file (training/warm_start.py)."""
    n, k, width = tokens.shape
    flat = layer(tokens.reshape(n * k, width))
    return flat.reshape(n, k, flat.shape[-1])


class AttentionBlock(nn.Module):
    """Pre-norm transformer block: multi-head self-attention over the tokens, then a feed-forward."""

    def __init__(self, width: int, heads: int, slope: float) -> None:
        super().__init__()
        if width % heads:
            raise ValueError(f"attention_width {width} must be a multiple of attention_heads {heads}")
        self.heads = heads
        self.attention_norm = nn.LayerNorm(width)
        self.qkv = nn.Linear(width, 3 * width)
        self.out = nn.Linear(width, width)
        self.feed_norm = nn.LayerNorm(width)
        self.feed = nn.Sequential(
            nn.Linear(width, 2 * width), nn.LeakyReLU(slope), nn.Linear(2 * width, width)
        )

    def forward(self, tokens: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        n, k, width = tokens.shape  # padding: [n, 1, 1, k], MASKED where a token is padding
        q, key, v = tokenwise(self.qkv, self.attention_norm(tokens)).chunk(3, dim=-1)
        shape = (n, k, self.heads, width // self.heads)
        q, key, v = (t.reshape(shape).transpose(1, 2) for t in (q, key, v))  # [n, heads, k, d]
        scores = q @ key.transpose(-1, -2) / math.sqrt(width // self.heads) + padding
        attended = (scores.softmax(dim=-1) @ v).transpose(1, 2).reshape(n, k, width)
        tokens = tokens + tokenwise(self.out, attended)
        return tokens + tokenwise(self.feed, self.feed_norm(tokens))


class AttentionBody(nn.Module):
    """Element tokens (a learned embedding plus an encoding of the fraction) attend to each other;
    the fraction-weighted mean of the tokens and the ``pa`` attributes go through residual units
    (``trunk_widths``). The output layer, one or a head per teacher member, is the subclass's."""

    def __init__(self, config: NetConfig, trunk_widths: tuple[int, ...]) -> None:
        super().__init__()
        elements = config.element_columns
        if not 0 < elements <= config.input_width:
            raise ValueError("the attention network needs the ef element fractions first in its features")
        width, slope = config.attention_width, config.leaky_slope
        self.elements, self.tokens = elements, min(config.attention_tokens, elements)
        self.norm = Standardise(config)
        self.embedding = nn.Embedding(elements, width)
        # The fraction enters both linearly and as a logarithm: 0.01 and 0.02 differ as much as
        # 0.5 and 1 for a dopant's chemistry (CrabNet encodes both scales too).
        self.fraction = nn.Sequential(nn.Linear(2, width), nn.LeakyReLU(slope), nn.Linear(width, width))
        self.blocks = nn.ModuleList(
            AttentionBlock(width, config.attention_heads, slope) for _ in range(config.attention_layers)
        )
        self.pooled_norm = nn.LayerNorm(width)
        self.trunk = residual_units(trunk_widths, width + config.input_width - elements, slope)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """What the trunk reads: the pooled element tokens and the standardised attributes."""
        every = x[:, : self.elements]
        if torch.onnx.is_in_onnx_export():
            index = torch.topk(every, self.tokens, dim=1).indices  # ONNX TopK: ties to the lower index
        else:  # torch.topk breaks ties arbitrarily (differently on a GPU); a stable sort does as ONNX
            index = torch.argsort(every, dim=1, descending=True, stable=True)[:, : self.tokens]
        fractions = torch.gather(every, 1, index)  # [n, k]
        encoded = torch.stack([fractions, torch.log(fractions.clamp_min(1e-6))], dim=-1)
        tokens = self.embedding(index) + tokenwise(self.fraction, encoded)  # [n, k, width]
        padding = (fractions <= 0).to(tokens.dtype)[:, None, None, :] * MASKED
        for block in self.blocks:
            tokens = block(tokens, padding)
        pooled = (self.pooled_norm(tokens) * fractions.unsqueeze(-1)).sum(dim=1)  # padding weighs 0
        attributes = self.norm.inputs(x)[:, self.elements :]
        return torch.cat([pooled, attributes], dim=1)


class ElementAttentionNet(AttentionBody):
    """The attention network: one output."""

    def __init__(self, config: NetConfig) -> None:
        super().__init__(config, config.trunk_widths)
        self.head = dense(config.trunk_widths[-1], 1)
        # Zero: the network starts at the train mean instead of several standard deviations off it
        # (twelve residual units on a unit-variance input amplify it), which costs epochs to undo.
        nn.init.zeros_(self.head.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x: [n, d] raw features -> [n, 1]
        return self.norm.outputs(float32_head(self.head, self.trunk(self.encode(x))))


class AttentionStudentNet(HeadedNet, AttentionBody):
    """The attention network with heads (nets.HeadedNet): the tokens, attention blocks and first
    trunk units are shared; its parameters keep the single network's names, so a student starts
    from an attention member by name."""

    def __init__(self, config: NetConfig) -> None:
        shared = shared_trunk_widths(config)
        AttentionBody.__init__(self, config, shared)  # HeadedNet has no __init__ of its own
        self.grow_heads(config, shared[-1])

    def shared(self, x: torch.Tensor) -> torch.Tensor:
        return self.trunk(self.encode(x))
