"""The argument structs of the step and derivative kernels.

:func:`kernel_structs` makes them for one scalar type and spatial dimension (cached, so the BDF2
step, start-up, potential, VJP and Jacobian kernels of that (dtype, dim) -- with and without
contact -- all take the same types):

* ``ModelData``: everything static a step needs besides stiffness and mass.
  ``warpsim_rl.model.Model`` builds one instance, ``model.data``, whose fields reference its
  arrays and mirror its scalars. Stiffness and mass are *not* in it: they stay separate kernel
  arguments, since the torch bridge passes its own per-call tensors for them.
* ``StateData``: the four (E, n) arrays of a BDF2 state (``Model.state_data``).
* ``NewtonScratch``: the per-environment work arrays of one Newton solve
  (``Model.newton_scratch``; the simulator, the differentiator and the start-up own one each).

Grouping the arguments keeps same-typed neighbours (``x`` and ``x_prev``, ``H`` and ``g``) from
being swapped silently at a call site; struct fields are read by name.
"""

import functools
from types import SimpleNamespace

import warp as wp

from .elements import element_funcs


@functools.cache
def kernel_structs(dtype, dim: int) -> SimpleNamespace:
    """``ModelData``, ``StateData`` and ``NewtonScratch`` (``@wp.struct`` types) for scalar type
    ``dtype`` and dimension ``dim``."""
    vec = element_funcs(dtype, dim).vec

    @wp.struct
    class ModelData:
        """Everything static a step needs besides stiffness and mass. Shapes use ``E``
        environments, ``n`` particles, ``m`` springs, ``h`` handles, ``G`` geometries; ``vec`` is
        a ``dim``-vector of the scalar type, "scalar" the scalar type. Field names are those of
        the ``Model`` attributes they mirror.

        Topology:
            free_index: (n,) int32, DOF block of each particle (its DOFs are
                ``free_index * dim + 0 .. dim - 1``), -1 for handles.
            handle_particle: (h,) int32, particle index of each handle (action order).
            handle_index: (n,) int32, handle number of each particle, -1 for free particles.
            velocity_limit: (h,) vec, m/s, per-axis bound on the commanded handle velocity.

        Springs:
            spring_i, spring_j: (m,) int32, end particles.
            rest_length: (E, m) scalar, m, per environment.
            damping: (m,) scalar, N·s/m, stretch-rate damping coefficient (0 = undamped).
            is_cable: (m,) int32, 1 = tension only.

        Geometry (planes, then boxes; ``contact.py``):
            geo_kind: (G,) int32, 0 = plane, 1 = box.
            geo_a: (G,) vec, plane unit normal (dimensionless) / box centre (m).
            geo_b: (G,) vec, m, box half extents (0 for planes).
            geo_r: (G,) scalar, m, plane offset / box edge radius.

        Contact:
            contact_stiffness: (E, G) scalar, N/m, penalty stiffness per environment and geometry.
            friction: (E, G) scalar, Coulomb coefficient per environment and geometry
                (dimensionless).
            contact_width: scalar, m, smoothing width of the penalty.
            contact_eps_v: scalar, m/s, friction smoothing velocity.

        Dynamics:
            gravity: vec, m/s².
            dt: scalar, s, the time step ``h``.

        Newton solver:
            num_dofs: int, ``N`` = free particles × dim (unknowns per environment).
            band: int, ``B``, half-bandwidth of the Newton matrix (``N - 1`` is dense).
            max_iters: int, Newton iteration limit.
            tol: scalar, m/s, convergence tolerance on ``max|dx| / dt``.
            line_search_max: int, backtracking halvings per Newton iteration.
            lte_fraction: scalar (dimensionless), error-controlled stop: a step also converges
                when its Newton correction is at most this fraction of the BDF2 truncation-error
                estimate of the step (``kernels/bdf2.py``); 0 disables it (``tol`` alone).
        """

        free_index: wp.array(dtype=int)
        handle_particle: wp.array(dtype=int)
        handle_index: wp.array(dtype=int)
        velocity_limit: wp.array(dtype=vec)
        spring_i: wp.array(dtype=int)
        spring_j: wp.array(dtype=int)
        rest_length: wp.array2d(dtype=dtype)
        damping: wp.array(dtype=dtype)
        is_cable: wp.array(dtype=int)
        geo_kind: wp.array(dtype=int)
        geo_a: wp.array(dtype=vec)
        geo_b: wp.array(dtype=vec)
        geo_r: wp.array(dtype=dtype)
        contact_stiffness: wp.array2d(dtype=dtype)
        friction: wp.array2d(dtype=dtype)
        contact_width: dtype
        contact_eps_v: dtype
        gravity: vec
        dt: dtype
        num_dofs: int
        band: int
        max_iters: int
        tol: dtype
        line_search_max: int
        lte_fraction: dtype

    @wp.struct
    class StateData:
        """A BDF2 state (``warpsim_rl.model.State``), or the adjoints of one: each field (E, n)
        vec. A kernel that reads only some fields documents it; the others may be null arrays.

        Fields:
            x: positions at t_k, m.
            v: velocities at t_k, m/s (handles: the last commanded velocity).
            x_prev: positions at t_{k-1}, m (BDF2 history).
            v_prev: velocities at t_{k-1}, m/s.
        """

        x: wp.array2d(dtype=vec)
        v: wp.array2d(dtype=vec)
        x_prev: wp.array2d(dtype=vec)
        v_prev: wp.array2d(dtype=vec)

    @wp.struct
    class NewtonScratch:
        """Per-environment work arrays of one Newton solve (contents undefined between launches).
        On the CPU each environment's rows are contiguous (``warpsim_rl.model.scratch_array``).

        Fields:
            H: (N (B + 1), E) scalar, the banded Newton matrix (lower band, row-major) and its
                Cholesky factor.
            g: (N, E) scalar, gradient of the incremental potential.
            dx: (N, E) scalar, Newton step (the VJP: its adjoint solve ``lambda``).
            base: (N, E) scalar, the iterate the line search starts from.
            y_t: (N, E) scalar, m, inertial target ``y`` of the step, as an offset from the
                start-of-step position ``x``.
            x_hat: (N, E) scalar, m, ``x_hat = 4/3 x - 1/3 x_prev`` of the step, as an offset
                from ``x`` (``(x - x_prev) / 3``).
            u: (N, E) scalar, m, the increment ``x' - x`` of the current Newton iterate.
        """

        H: wp.array2d(dtype=dtype)
        g: wp.array2d(dtype=dtype)
        dx: wp.array2d(dtype=dtype)
        base: wp.array2d(dtype=dtype)
        y_t: wp.array2d(dtype=dtype)
        x_hat: wp.array2d(dtype=dtype)
        u: wp.array2d(dtype=dtype)

    return SimpleNamespace(ModelData=ModelData, StateData=StateData, NewtonScratch=NewtonScratch)
