"""Learning-rate schedule of the diffusion stage: LDM's "LambdaLinear" warm-up as a ``LambdaLR`` factor.

LDM / Zero-1-to-3 train with ``LambdaLinearScheduler(warm_up_steps=[100], f_start=[1e-6], f_max=[1.0],
f_min=[1.0], cycle_lengths=[1e13])``: the factor rises linearly from ``f_start`` to ``f_max`` over the warm-up
steps, then moves linearly towards ``f_min`` over the (practically infinite) cycle, i.e. stays at ``f_max``.
The paper: "a lambda linear scheduler incorporating a warm-up period every 100 steps".

``decay_start`` adds the warmup-stable-decay shape: the factor holds ``f_max`` until that step and only then
moves to ``f_min`` over ``cycle_length`` steps. ``PlaceLrDecay`` puts that decay on the run's last
``diffusion_lr_decay_steps`` optimiser steps, counted from the trainer's own length when it starts (a resumed
run keeps its checkpoint's epoch length). ``ScheduleProgress`` checkpoints where a run stands in the schedule and
not the schedule itself, so a resumed run follows the config's schedule (a longer run, a decay added later, a
lower learning rate).
"""

from __future__ import annotations

import logging
import math
from typing import Any

from ignite.engine import Engine, Events
from torch.optim.lr_scheduler import LambdaLR

__all__ = ["LambdaLinear", "PlaceLrDecay", "ScheduleProgress"]

logger = logging.getLogger(__name__)


def _apply_rates(scheduler: LambdaLR) -> None:
    """Set the optimiser's learning rates to the schedule's at the step the scheduler stands at."""
    rates = [base * factor(scheduler.last_epoch)
             for base, factor in zip(scheduler.base_lrs, scheduler.lr_lambdas, strict=True)]
    for group, rate in zip(scheduler.optimizer.param_groups, rates, strict=True):
        group["lr"] = rate
    scheduler._last_lr = rates


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
        cycle_length: optimiser steps from ``decay_start`` to ``f_min``.
        accumulation_steps: iterations per optimiser step.
        decay_start: optimiser step where the move to ``f_min`` begins (``None``: at the end of the warm-up,
            LDM's shape); the factor holds ``f_max`` until then.
    """

    def __init__(
        self,
        warm_up_steps: int = 100,
        f_start: float = 1e-6,
        f_max: float = 1.0,
        f_min: float = 1.0,
        cycle_length: float = 1e13,
        accumulation_steps: int = 1,
        decay_start: int | None = None,
    ) -> None:
        self.warm_up_steps = max(0, int(warm_up_steps))
        self.f_start, self.f_max, self.f_min = float(f_start), float(f_max), float(f_min)
        self.cycle_length = float(cycle_length)
        self.accumulation_steps = max(1, int(accumulation_steps))
        self.decay_start = self.warm_up_steps if decay_start is None else max(self.warm_up_steps, int(decay_start))

    def __call__(self, step: int) -> float:
        step = step // self.accumulation_steps
        if step < self.warm_up_steps:
            return self.f_start + (self.f_max - self.f_start) * step / self.warm_up_steps
        progress = min(1.0, max(0.0, (step - self.decay_start) / self.cycle_length))
        return self.f_max + (self.f_min - self.f_max) * progress


class ScheduleProgress:
    """A ``LambdaLR`` as the checkpoint sees it: saved whole, restored only as far as the run's position.

    ``LambdaLR.load_state_dict`` would also restore its base learning rates and every attribute of its factor
    object, so a resumed run would keep the schedule it started with even after the config changed it (a
    longer run whose decay must move, a decay added to a run that has plateaued). Here the config owns the
    schedule and the checkpoint only says how many steps were taken; the optimiser's learning rate is set
    from the config's schedule at that step at once.

    Args:
        scheduler: the stage's ``LambdaLR``.
    """

    def __init__(self, scheduler: LambdaLR) -> None:
        self.scheduler = scheduler

    def state_dict(self) -> dict[str, Any]:
        """The scheduler's full state (older code reads it as a plain ``LambdaLR`` state)."""
        return self.scheduler.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Take the step count from ``state``; learning rates follow the config's schedule from there."""
        scheduler = self.scheduler
        scheduler.last_epoch = int(state["last_epoch"])
        scheduler._step_count = int(state.get("_step_count", scheduler.last_epoch + 1))
        _apply_rates(scheduler)


class PlaceLrDecay:
    """At ``STARTED`` (after a resume), move every ``LambdaLinear`` factor's decay onto the run's last
    ``decay_steps`` optimiser steps, down to 0, and set the learning rate for the step the run stands at.

    The run's length is the trainer's: ``ceil(epoch_length x max_epochs / accumulation_steps)`` optimiser steps
    as the engine has them when it starts (a resumed run keeps its checkpoint's epoch length, so the decay
    cannot fall short of or past the run's end; the ceiling keeps the last step's rate above 0). A decay longer
    than the run after its warm-up is shortened to fit (logged). ``decay_steps`` 0 changes nothing: constant
    after the warm-up, the LDM schedule. Attach after the resume handler.

    Args:
        lr_scheduler: the stage's ``LambdaLR`` over ``LambdaLinear`` factors.
        decay_steps: optimiser steps of the final linear decay (``diffusion_lr_decay_steps``).
        accumulation_steps: iterations per optimiser step.
    """

    def __init__(self, lr_scheduler: LambdaLR, decay_steps: int = 0, accumulation_steps: int = 1) -> None:
        self.scheduler = lr_scheduler
        self.decay_steps = max(0, int(decay_steps))
        self.accumulation_steps = max(1, int(accumulation_steps))

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.STARTED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.decay_steps:
            return
        total = math.ceil(engine.state.epoch_length * engine.state.max_epochs / self.accumulation_steps)
        for factor in self.scheduler.lr_lambdas:
            start = max(factor.warm_up_steps, total - self.decay_steps)
            if total - start < self.decay_steps:
                logger.warning("learning-rate decay of %d optimiser steps shortened to %d: the run has %d steps, "
                               "%d of them warm-up", self.decay_steps, total - start, total, factor.warm_up_steps)
            factor.decay_start, factor.cycle_length, factor.f_min = start, float(max(1, total - start)), 0.0
        _apply_rates(self.scheduler)
        logger.info("learning rate: constant to optimiser step %d, then linearly to 0 at step %d (now at %d)",
                    self.scheduler.lr_lambdas[0].decay_start, total, self.scheduler.last_epoch)
