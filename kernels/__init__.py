"""Warp kernels and ``wp.func``s of warpsim_rl (installed as ``warpsim_rl.kernels``).

Kernels are generated per scalar type (``wp.float32``/``wp.float64``) and spatial dimension
(2 or 3) by cached factories, so one source serves every combination:

* :mod:`.elements` — spring/cable/damping energy, gradient and Hessian.
* :mod:`.contact` — particle contact with planes and boxes: smoothed penalty, lagged smoothed
  Coulomb friction, their derivatives.
* :mod:`.linalg` — per-environment banded Cholesky (dense is the full-band case).
* :mod:`.bdf2` — the batched implicit BDF2 Newton step (and its start-up and potential).
* :mod:`.adjoint` — exact derivatives of the step (VJP, dense Jacobians).
* :mod:`.data` — the kernels' argument structs (``ModelData``, ``StateData``, ``NewtonScratch``).
"""
