"""Learning-rate schedules: ``lr = schedule(base_lr, epoch, epochs)`` for the 0-based ``epoch`` of
a run of ``epochs`` epochs. :data:`LR_SCHEDULES` maps the ``--lr-schedule`` names to them."""

from __future__ import annotations

__all__ = ["LR_SCHEDULES", "constant", "linear"]


def constant(base_lr: float, epoch: int, epochs: int) -> float:
    """``base_lr`` at every epoch."""
    return base_lr


def linear(base_lr: float, epoch: int, epochs: int) -> float:
    """``base_lr (1 - epoch / epochs)``: decays towards 0 over the run (CleanRL's ``anneal_lr``)."""
    return base_lr * (1.0 - epoch / epochs)


LR_SCHEDULES = {"constant": constant, "linear": linear}
