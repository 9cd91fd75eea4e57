"""Learning-rate and alpha schedules as pure functions of the step (so resuming needs only the
step counter, no scheduler object)."""

from __future__ import annotations

import math


def lr_at(step: int, steps_per_epoch: int, total_steps: int, *, lr: float, warmup_steps: int,
          warmup_lr: float, schedule: str, lr_decay: float, min_lr: float) -> float:
    """Learning rate of optimisation step ``step`` (0-based).

    Linear warm-up from ``warmup_lr`` to ``lr`` over the first ``warmup_steps`` steps, then
    - ``step``: BLIP pre-training, ``max(min_lr, lr * lr_decay ** epoch)`` per epoch;
    - ``cosine``: from ``lr`` down to ``min_lr`` over the remaining steps (BLIP fine-tuning does
      the same per epoch; per step is smoother for short runs).
    """
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / warmup_steps
    if schedule == "step":
        return max(min_lr, lr * lr_decay ** (step // steps_per_epoch))
    span = max(1, total_steps - warmup_steps)
    progress = min(1.0, (step - warmup_steps) / span)
    return min_lr + (lr - min_lr) * 0.5 * (1 + math.cos(math.pi * progress))


def alpha_at(step: int, steps_per_epoch: int, alpha: float, ramp_epochs: float) -> float:
    """Distillation weight: ``alpha * min(1, step / (ramp_epochs * steps_per_epoch))`` (BLIP:
    ``0.4 * min(1, (epoch * N + i) / (2 * N))``, the first two epochs)."""
    if ramp_epochs <= 0:
        return alpha
    return alpha * min(1.0, step / (ramp_epochs * steps_per_epoch))
