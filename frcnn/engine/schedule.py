"""The learning-rate schedule as a small pure function: linear warm-up, then cosine or steps."""

from __future__ import annotations

import math

from frcnn.config import TrainConfig


def lr_at(step: int, total_steps: int, cfg: TrainConfig) -> float:
    """Learning rate at `step` (0-based): linear warm-up from lr/1000, then cosine or steps."""
    if step < cfg.warmup_steps:
        alpha = step / cfg.warmup_steps
        return cfg.lr * (0.001 * (1 - alpha) + alpha)
    if cfg.schedule == "cosine":
        span = max(total_steps - cfg.warmup_steps, 1)
        progress = min((step - cfg.warmup_steps) / span, 1.0)
        return cfg.lr * 0.5 * (1 + math.cos(math.pi * progress))
    drops = sum(step >= int(m * total_steps) for m in cfg.step_milestones)
    return cfg.lr * cfg.step_gamma ** drops
