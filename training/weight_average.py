"""An exponential moving average of a network's weights, validated and kept in place of the raw ones.

Why: at a fixed learning rate the raw network's validation MAE jumps by tens of percent from one
epoch to the next (volume, lr 5e-4, epochs 12-16: 0.65-1.26 for seed 0's raw weights), so the
best-epoch choice and ReduceLROnPlateau see mostly noise. The average of the last ~1000 steps is
the weights that noise is scattered around: smoother and better early (0.491-0.506 over the same
epochs for seed 5's average), which matters for short, time-limited runs, at no cost when serving
(same shape, same graph).
It does not prevent Adam's loss spikes; see docs/benchmarks.md (volume seeds 5 and 6).

Every floating-point parameter and buffer (BatchNorm's running statistics too) is averaged, so
the averaged copy is a complete network that validates, checkpoints and exports like the raw one.
"""

from __future__ import annotations

import copy

import torch

# The decay ramps up as (1 + step) / (10 + step) until it reaches the configured value, so the first
# steps' random weights do not linger in the average (the usual warm-up of an EMA).
WARMUP_OFFSET = 10


class WeightAverage:
    def __init__(self, model: torch.nn.Module, decay: float) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"the weight-average decay must lie in (0, 1), got {decay}")
        self.decay = decay
        self.steps = 0
        self.model = copy.deepcopy(model)
        self.model.requires_grad_(False)
        self._averaged = _float_tensors(self.model)
        self._live = _float_tensors(model)

    def update(self) -> None:
        """Fold the live network's current weights in (call after each optimizer step)."""
        self.steps += 1
        decay = min(self.decay, (1 + self.steps) / (WARMUP_OFFSET + self.steps))
        with torch.no_grad():
            torch._foreach_lerp_(self._averaged, self._live, 1.0 - decay)

    def state_dict(self) -> dict[str, object]:
        return {"decay": self.decay, "steps": self.steps, "model": self.model.state_dict()}

    def load_state_dict(self, state: dict[str, object]) -> None:
        self.steps = int(state["steps"])  # type: ignore[call-overload]
        self.model.load_state_dict(state["model"])  # type: ignore[arg-type]


def _float_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """Parameters and floating buffers in a fixed order (integer buffers such as BatchNorm's
    batch counter are not averaged)."""
    tensors = [p.data for p in model.parameters()]
    return tensors + [b for b in model.buffers() if b.is_floating_point()]
