"""``Model.data``, the ``ModelData`` struct the kernels take (``kernels/data.py``), stays in step
with the model: its fields reference the model's arrays and mirror its scalars, also after a
model attribute is assigned, and a recorded (replayed) step launch sees such a change."""

import numpy as np
import pytest
import warp as wp

import warpsim_rl as ws
from warpsim_rl.autodiff import Differentiator
from warpsim_rl.kernels.adjoint import adjoint_kernels
from warpsim_rl.kernels.bdf2 import bdf2_kernels
from warpsim_rl.kernels.data import kernel_structs


def _ptr(a):
    return None if a is None else a.ptr


def _assert_mirrors(model):
    fields = kernel_structs(model.dtype, model.dim).ModelData.vars
    assert "mass" not in fields and "stiffness" not in fields  # separate kernel arguments
    for name in fields:
        want, got = getattr(model, name), getattr(model.data, name)
        if isinstance(want, wp.array):
            assert got is want and _ptr(got) == _ptr(want), name
        elif isinstance(want, float):
            cast = np.float32 if model.dtype == wp.float32 else np.float64
            assert cast(got) == cast(want), name
        else:
            assert got == want, name


@pytest.mark.parametrize("scene,dtype", [("pendulum2d", "float32"), ("cloth_table", "float64")])
def test_data_mirrors_the_model(device, scene, dtype):
    model = ws.load_scene(scene).build(num_envs=2, device=device, dtype=dtype)
    _assert_mirrors(model)
    model.tol = 0.5
    model.max_iters = 7
    model.gravity = model.vec(*([0.0] * model.dim))
    model.friction = wp.zeros_like(model.friction)
    _assert_mirrors(model)
    assert model.data.max_iters == 7 and model.data.friction is model.friction
    with pytest.raises(Exception):
        model.band = "wide"  # a wrong type is refused before the model changes
    assert isinstance(model.band, int)


def test_structs_are_shared_per_dtype_and_dim():
    for dtype in (wp.float32, wp.float64):
        for dim in (2, 3):
            s = kernel_structs(dtype, dim)
            for contact in (True, False):
                for k in (bdf2_kernels(dtype, dim, contact), adjoint_kernels(dtype, dim, contact)):
                    assert (k.ModelData, k.StateData, k.NewtonScratch) == (s.ModelData, s.StateData, s.NewtonScratch)
    assert kernel_structs(wp.float32, 2).ModelData is not kernel_structs(wp.float64, 2).ModelData


def test_replayed_launch_sees_a_changed_setting(device):
    """The recorded bdf2_step launch holds ``model.data`` by reference: after ``model.tol`` is
    raised the replay certifies convergence without a Newton iteration."""
    model = ws.load_scene("pendulum2d").build(num_envs=4, device=device, dtype="float64", threads=1)
    sim = ws.Simulator(model)
    vel = np.broadcast_to(model.scene.velocities, (4,) + model.scene.velocities.shape).copy()
    vel[:, ~model.scene.is_handle] += 1.0
    s0, s1 = model.state(velocities=vel), model.state()
    ctrl = model.control()
    sim.step(s0, ctrl, s1)
    assert sim.iterations.numpy().min() >= 1
    launches = len(sim._launches)
    model.tol = 1.0e6
    sim.step(s0, ctrl, s1)
    assert len(sim._launches) == launches  # replayed, not recorded again
    assert np.all(sim.iterations.numpy() == 0)


def test_band_changed_after_the_simulator_raises(device):
    model = ws.load_scene("rope3d").build(num_envs=1, device=device)
    sim = ws.Simulator(model)
    s0, s1 = model.state(), model.state()
    model.band = model.num_dofs - 1
    with pytest.raises(ValueError, match="band"):
        sim.step(s0, model.control(), s1)
    ws.Simulator(model).step(s0, model.control(), s1)  # a new one is sized for it


@pytest.mark.parametrize("scene,band", [("rope3d", 5), ("pendulum2d", None), ("cloth_table", None)])
def test_simulator_and_differentiator_use_the_models_band(device, scene, band):
    """Both pick the factorisation compiled for their model's half-bandwidth where one exists
    (``linalg.fixed_band``: rope3d's B = 5), the generic one elsewhere (B = 1, B = 17), and a
    model whose band was changed before they were built gets that band's."""
    model = ws.load_scene(scene).build(num_envs=1, device=device)
    contact = model.num_geometries > 0
    sim = ws.Simulator(model)
    assert sim.kernels is bdf2_kernels(model.dtype, model.dim, contact, band)
    assert Differentiator(sim).kernels is adjoint_kernels(model.dtype, model.dim, contact, band)
    if band is not None:
        model.band = model.num_dofs - 1  # dense: beyond the fixed range for rope3d (N = 30)
        assert ws.Simulator(model).kernels is bdf2_kernels(model.dtype, model.dim, contact, None)
