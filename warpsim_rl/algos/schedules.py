"""Learning-rate schedules: ``lr = schedule(base_lr, progress)`` at ``progress`` in [0, 1] through
the run (``epoch / epochs`` for the 0-based epoch, or the fraction of a time budget spent).
:data:`LR_SCHEDULES` maps the ``--lr-schedule`` names to them."""

from __future__ import annotations

__all__ = ["LR_SCHEDULES", "constant", "linear"]


def constant(base_lr: float, progress: float) -> float:
    """``base_lr`` throughout."""
    return base_lr


def linear(base_lr: float, progress: float) -> float:
    """``base_lr (1 - progress)``: decays towards 0 over the run (CleanRL's ``anneal_lr``)."""
    return base_lr * (1.0 - min(max(progress, 0.0), 1.0))


LR_SCHEDULES = {"constant": constant, "linear": linear}
