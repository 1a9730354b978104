"""Learning-rate schedule of the diffusion stage: LDM's "LambdaLinear" warm-up as a ``LambdaLR`` factor.

LDM / Zero-1-to-3 train with ``LambdaLinearScheduler(warm_up_steps=[100], f_start=[1e-6], f_max=[1.0],
f_min=[1.0], cycle_lengths=[1e13])``: the factor rises linearly from ``f_start`` to ``f_max`` over the warm-up
steps, then moves linearly towards ``f_min`` over the (practically infinite) cycle, i.e. stays at ``f_max``.
The paper: "a lambda linear scheduler incorporating a warm-up period every 100 steps".
"""

from __future__ import annotations

__all__ = ["LambdaLinear"]


class LambdaLinear:
    """``factor(step)`` for ``torch.optim.lr_scheduler.LambdaLR`` (a class, so the scheduler's state_dict saves it).

    ``step`` counts ``LambdaLR.step()`` calls (once per iteration with ``LrScheduleHandler(epoch_level=False)``);
    with gradient accumulation one optimiser step spans ``accumulation_steps`` iterations, so the warm-up is
    measured in optimiser steps.

    Args:
        warm_up_steps: optimiser steps of the linear warm-up (100).
        f_start: factor at step 0 (1e-6).
        f_max: factor at the end of the warm-up (1.0).
        f_min: factor at the end of the cycle (1.0: constant after the warm-up).
        cycle_length: optimiser steps from the end of the warm-up to ``f_min``.
        accumulation_steps: iterations per optimiser step.
    """

    def __init__(
        self,
        warm_up_steps: int = 100,
        f_start: float = 1e-6,
        f_max: float = 1.0,
        f_min: float = 1.0,
        cycle_length: float = 1e13,
        accumulation_steps: int = 1,
    ) -> None:
        self.warm_up_steps = max(0, int(warm_up_steps))
        self.f_start, self.f_max, self.f_min = float(f_start), float(f_max), float(f_min)
        self.cycle_length = float(cycle_length)
        self.accumulation_steps = max(1, int(accumulation_steps))

    def __call__(self, step: int) -> float:
        step = step // self.accumulation_steps
        if step < self.warm_up_steps:
            return self.f_start + (self.f_max - self.f_start) * step / self.warm_up_steps
        progress = min(1.0, (step - self.warm_up_steps) / self.cycle_length)
        return self.f_max + (self.f_min - self.f_max) * progress
