"""An exponential moving average of a network's weights, validated and kept in place of the raw ones.

Why: on the volume data the raw network's validation MAE jumps by ~3% from one epoch to the next
at a fixed learning rate, so ReduceLROnPlateau sometimes fires on noise, the learning rate falls
while the training error is still high, and that seed ends far behind the others. The average
of the last few thousand steps is the weights that noise is scattered around: smoother to
validate, usually a little better, and with no cost at serving time (same shape, same graph).

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
