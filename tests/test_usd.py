"""USD export: stage layout, time samples, metadata, compliance, layout of the env grid, bad inputs.

Most tests export synthetic positions (no simulation); two run the simulator with tiny sizes.
"""

import os
import sys
from pathlib import Path

import numpy as np
import pytest

pxr = pytest.importorskip("pxr")
from pxr import Usd, UsdGeom  # noqa: E402

from warpsim_rl import SceneBuilder, SceneError, load_scene  # noqa: E402
from warpsim_rl.usd import (check_compliance, default_env_spacing, env_offsets, export_rollout,  # noqa: E402
                            main, record_rollout, spring_tensions)


def wiggle(scene, frames, envs, amp=0.05, seed=0):
    """Synthetic rollout: initial positions plus a smooth per-env, per-particle motion."""
    rng = np.random.default_rng(seed)
    t = np.arange(frames)[:, None, None, None]
    phase = rng.uniform(0, 2 * np.pi, size=(1, envs, scene.num_particles, scene.dim))
    return scene.positions[None, None] + amp * np.sin(0.3 * t + phase)


def open_stage(path):
    stage = Usd.Stage.Open(str(path))
    assert stage is not None
    return stage


def env_prims(stage):
    return [p for p in stage.GetPrimAtPath("/World").GetChildren() if p.GetName().startswith("Env_")]


def listdir(d):
    return sorted(os.listdir(d))


@pytest.fixture(scope="module")
def rope():
    return load_scene("rope3d", num_particles=4)


@pytest.fixture(scope="module")
def mixed():
    """3D scene with a handle, a bilateral spring, a cable, a plane and a box."""
    b = SceneBuilder("mixed3d", dim=3, dt=0.01)
    h = b.add_handle([0.0, 1.0, 0.0], velocity_limit=[1.0, 1.0, 1.0], name="top")
    p = b.add_particle([0.0, 0.5, 0.0], mass=1.0, name="mid")
    q = b.add_particle([0.2, 0.2, 0.0], mass=0.5)
    b.add_spring(h, p, stiffness=1e3)
    b.add_spring(p, q, stiffness=2e3, kind="cable")
    b.add_plane([0.0, 1.0, 0.0], offset=-0.5)
    b.add_box([0.5, -0.25, 0.0], [0.3, 0.25, 0.2])
    return b.finalize()


# -- layout, types, samples, metadata -------------------------------------------------------

@pytest.mark.parametrize("suffix", [".usda", ".usdc", ".usd"])
def test_prim_types_samples_and_metadata(tmp_path, mixed, suffix):
    T, E = 7, 3
    x = wiggle(mixed, T + 1, E)
    out = export_rollout(mixed, x, tmp_path / f"roll{suffix}")
    assert out == tmp_path / f"roll{suffix}" and out.is_file()
    assert listdir(tmp_path) == [f"roll{suffix}"]  # no temporary file left
    stage = open_stage(out)

    assert UsdGeom.GetStageUpAxis(stage) == UsdGeom.Tokens.y
    assert UsdGeom.GetStageMetersPerUnit(stage) == 1.0
    assert stage.GetTimeCodesPerSecond() == pytest.approx(1.0 / mixed.dt)
    assert stage.GetFramesPerSecond() == pytest.approx(1.0 / mixed.dt)
    assert stage.GetStartTimeCode() == 0.0 and stage.GetEndTimeCode() == float(T)
    assert stage.GetDefaultPrim().GetPath() == "/World"
    assert stage.GetDefaultPrim().GetTypeName() == "Xform"
    assert stage.GetRootLayer().customLayerData["warpsim_rl"]["scene"] == "mixed3d"

    envs = env_prims(stage)
    assert [p.GetName() for p in envs] == ["Env_0000", "Env_0001", "Env_0002"]
    for env in envs:
        assert env.GetTypeName() == "Xform"
        kinds = {c.GetName(): c.GetTypeName() for c in env.GetChildren()}
        assert kinds == {"Particles": "Points", "Handles": "Points", "Springs": "BasisCurves",
                         "Cables": "BasisCurves", "Geometry": "Scope"}
        geo = {c.GetName(): c.GetTypeName() for c in env.GetChild("Geometry").GetChildren()}
        assert geo == {"Plane_0": "Mesh", "Box_0": "Cube"}
        for name in ("Particles", "Handles", "Springs", "Cables"):
            attr = env.GetChild(name).GetAttribute("points")
            assert attr.GetNumTimeSamples() == T + 1
            assert attr.GetTimeSamples() == [float(t) for t in range(T + 1)]
            assert env.GetChild(name).GetAttribute("extent").GetNumTimeSamples() == T + 1
        for name in ("Springs", "Cables"):
            curves = UsdGeom.BasisCurves(env.GetChild(name))
            assert curves.GetTypeAttr().Get() == UsdGeom.Tokens.linear
            assert list(curves.GetCurveVertexCountsAttr().Get()) == [2]
            assert curves.GetDisplayColorAttr().GetNumTimeSamples() == T + 1
            assert UsdGeom.PrimvarsAPI(curves).GetPrimvar("tension").GetInterpolation() == UsdGeom.Tokens.uniform
        # springs and cables and handles are told apart by colour
        c_s = UsdGeom.BasisCurves(env.GetChild("Springs")).GetDisplayColorAttr().Get(0)[0]
        c_c = UsdGeom.BasisCurves(env.GetChild("Cables")).GetDisplayColorAttr().Get(0)[0]
        c_p = UsdGeom.Points(env.GetChild("Particles")).GetDisplayColorAttr().Get()[0]
        c_h = UsdGeom.Points(env.GetChild("Handles")).GetDisplayColorAttr().Get()[0]
        assert len({tuple(round(v, 3) for v in c) for c in (c_s, c_c, c_p, c_h)}) == 4
        handles = UsdGeom.Points(env.GetChild("Handles"))
        assert list(handles.GetPrim().GetAttribute("warpsim:particleNames").Get()) == ["top"]
        w_h = handles.GetWidthsAttr().Get()
        w_p = UsdGeom.Points(env.GetChild("Particles")).GetWidthsAttr().Get()
        assert len(w_p) == 2 and len(w_h) == 1 and w_h[0] > w_p[0] > 0

    # values: frame t of env e, local coordinates; spring/cable vertices are the end particles
    for e, env in enumerate(envs):
        for t in (0, T // 2, T):
            pts = np.array(env.GetChild("Particles").GetAttribute("points").Get(t))
            np.testing.assert_allclose(pts, x[t, e, mixed.free_particles], rtol=1e-6, atol=1e-6)
            hp = np.array(env.GetChild("Handles").GetAttribute("points").Get(t))
            np.testing.assert_allclose(hp, x[t, e, mixed.handles], atol=1e-6)
            cp = np.array(env.GetChild("Cables").GetAttribute("points").Get(t))
            np.testing.assert_allclose(cp, x[t, e, mixed.springs[mixed.is_cable].ravel()], atol=1e-6)

    errors, warnings = check_compliance(out)
    assert errors == [], errors


def test_compliance_clean_for_shipped_scenes(tmp_path):
    for name in ("pendulum2d", "cable_payload2d", "double_pendulum3d", "rope3d"):
        sc = load_scene(name)
        for suffix in (".usda", ".usdc"):
            out = export_rollout(sc, wiggle(sc, 4, 2), tmp_path / f"{name}{suffix}")
            errors, _ = check_compliance(out)
            assert errors == [], (name, suffix, errors)


def test_compliance_checker_reports_errors(tmp_path):
    """The checker is live: a stage without the required metadata fails it."""
    bad = tmp_path / "bad.usda"
    stage = Usd.Stage.CreateNew(str(bad))
    UsdGeom.Points.Define(stage, "/P")
    stage.GetRootLayer().Save()
    errors, _ = check_compliance(bad)
    assert errors


def test_dim2_embedding(tmp_path):
    sc = load_scene("cable_payload2d")
    x = wiggle(sc, 5, 2)
    out = export_rollout(sc, x, tmp_path / "p2.usda")
    stage = open_stage(out)
    env = env_prims(stage)[1]
    for t in range(5):
        pts = np.array(env.GetChild("Particles").GetAttribute("points").Get(t))
        np.testing.assert_allclose(pts[:, :2], x[t, 1, sc.free_particles], atol=1e-6)
        assert np.all(pts[:, 2] == 0.0)
        hp = np.array(env.GetChild("Handles").GetAttribute("points").Get(t))
        assert hp.shape == (2, 3) and np.all(hp[:, 2] == 0.0)
    # cable_payload2d has only cables
    assert not env.GetChild("Springs").IsValid() and env.GetChild("Cables").GetTypeName() == "BasisCurves"


def test_grid_offsets(tmp_path, rope):
    E = 5
    x = wiggle(rope, 3, E)
    out = export_rollout(rope, x, tmp_path / "grid.usda", env_spacing=(2.0, 3.0))
    stage = open_stage(out)
    cache = UsdGeom.XformCache(Usd.TimeCode(2))
    expect = env_offsets(E, (2.0, 3.0))
    # 5 envs -> 3 columns along x, rows along z, y untouched
    np.testing.assert_allclose(expect, [[0, 0, 0], [2, 0, 0], [4, 0, 0], [0, 0, 3], [2, 0, 3]])
    for e, env in enumerate(env_prims(stage)):
        m = cache.GetLocalToWorldTransform(env.GetChild("Particles"))
        local = np.array(env.GetChild("Particles").GetAttribute("points").Get(2))
        world = np.array([m.Transform(pxr.Gf.Vec3d(*map(float, p))) for p in local])
        np.testing.assert_allclose(world, x[2, e, rope.free_particles] + expect[e], atol=1e-5)
    # default spacing: envs do not overlap horizontally
    s = default_env_spacing(rope, x)
    span = np.ptp(x[..., 0]), np.ptp(x[..., 2])
    assert s >= max(span) > 0


def test_tension_primvar_and_colour(tmp_path, mixed):
    x = wiggle(mixed, 4, 2, amp=0.1)
    # make the cable slack in env 0, frame 1 and stretched in frame 2
    L = mixed.rest_length[1]
    d = np.array([0.6, -0.8, 0.0])
    x[1, 0, 2] = x[1, 0, 1] + 0.5 * L * d
    x[2, 0, 2] = x[2, 0, 1] + 1.2 * L * d
    out = export_rollout(mixed, x, tmp_path / "ten.usda")
    ten = spring_tensions(mixed, x)
    assert ten[1, 0, 1] == 0.0 and ten[2, 0, 1] == pytest.approx(mixed.stiffness[1] * 0.2 * L)
    stage = open_stage(out)
    cables = stage.GetPrimAtPath("/World/Env_0000/Cables")
    pv = UsdGeom.PrimvarsAPI(cables).GetPrimvar("tension")
    assert pv.Get(1)[0] == 0.0
    assert pv.Get(2)[0] == pytest.approx(ten[2, 0, 1], rel=1e-5)
    col = UsdGeom.BasisCurves(cables).GetDisplayColorAttr()
    assert tuple(col.Get(1)[0]) != tuple(col.Get(2)[0])  # slack and taut look different
    springs = stage.GetPrimAtPath("/World/Env_0001/Springs")
    np.testing.assert_allclose(np.array(UsdGeom.PrimvarsAPI(springs).GetPrimvar("tension").Get(3)),
                               ten[3, 1, ~mixed.is_cable], rtol=1e-5)


def test_static_geometry(tmp_path, mixed):
    out = export_rollout(mixed, wiggle(mixed, 2, 1), tmp_path / "geo.usda")
    stage = open_stage(out)
    plane = UsdGeom.Mesh(stage.GetPrimAtPath("/World/Env_0000/Geometry/Plane_0"))
    pts = np.array(plane.GetPointsAttr().Get())
    assert pts.shape == (4, 3) and np.allclose(pts[:, 1], -0.5)
    s = default_env_spacing(mixed, wiggle(mixed, 2, 1))
    assert np.ptp(pts[:, 0]) == pytest.approx(s) and np.ptp(pts[:, 2]) == pytest.approx(s)
    # winding gives a face normal along the plane normal (+y), into the allowed half-space
    nrm = np.cross(pts[1] - pts[0], pts[2] - pts[1])
    assert nrm[1] > 0 and abs(nrm[0]) + abs(nrm[2]) < 1e-6
    box = stage.GetPrimAtPath("/World/Env_0000/Geometry/Box_0")
    cache = UsdGeom.BBoxCache(Usd.TimeCode.Default(), [UsdGeom.Tokens.default_])
    bb = cache.ComputeWorldBound(box).ComputeAlignedRange()
    np.testing.assert_allclose(np.array(bb.GetMin()), [0.2, -0.5, -0.2], atol=1e-6)
    np.testing.assert_allclose(np.array(bb.GetMax()), [0.8, 0.0, 0.2], atol=1e-6)


def test_planes_and_boxes_in_2d(tmp_path):
    b = SceneBuilder("table2d", dim=2, dt=0.02)
    h = b.add_handle([0.0, 1.0], velocity_limit=[1.0, 1.0])
    p = b.add_particle([0.0, 0.5], mass=1.0)
    b.add_spring(h, p, stiffness=1e3)
    b.add_plane([0.0, 1.0], offset=0.0)
    b.add_box([0.5, 0.1], [0.2, 0.1])
    sc = b.finalize()
    out = export_rollout(sc, wiggle(sc, 3, 2), tmp_path / "t2.usdc")
    stage = open_stage(out)
    plane = np.array(stage.GetPrimAtPath("/World/Env_0001/Geometry/Plane_0").GetAttribute("points").Get())
    assert np.allclose(plane[:, 1], 0.0) and np.ptp(plane[:, 2]) > 0  # a floor extended along z
    # one grid cell wide in x and z, so floors tile across the grid
    out = export_rollout(sc, wiggle(sc, 3, 2), tmp_path / "t3.usda", env_spacing=(2.0, 3.0))
    stage = open_stage(out)
    plane = np.array(stage.GetPrimAtPath("/World/Env_0000/Geometry/Plane_0").GetAttribute("points").Get())
    assert np.ptp(plane[:, 0]) == pytest.approx(2.0) and np.ptp(plane[:, 2]) == pytest.approx(3.0)
    assert stage.GetPrimAtPath("/World/Env_0001/Geometry/Box_0").GetTypeName() == "Cube"
    assert check_compliance(out)[0] == []


def test_cloth_mesh(tmp_path):
    """A 3x3 particle sheet (synthetic cloth) hung from one handle, exported with triangles."""
    b = SceneBuilder("sheet", dim=3, dt=0.01)
    idx = {}
    for i in range(3):
        for j in range(3):
            pos = [0.1 * i, 0.0, 0.1 * j]
            idx[i, j] = b.add_handle(pos, [1.0, 1.0, 1.0]) if (i, j) == (0, 0) else b.add_particle(pos, mass=0.01)
    for i in range(3):
        for j in range(3):
            if i < 2:
                b.add_spring(idx[i, j], idx[i + 1, j], stiffness=100.0)
            if j < 2:
                b.add_spring(idx[i, j], idx[i, j + 1], stiffness=100.0)
    sc = b.finalize()
    tris = []
    for i in range(2):
        for j in range(2):
            tris += [[idx[i, j], idx[i + 1, j], idx[i + 1, j + 1]], [idx[i, j], idx[i + 1, j + 1], idx[i, j + 1]]]
    tris = np.array(tris)
    x = wiggle(sc, 6, 2, amp=0.01)
    out = export_rollout(sc, x, tmp_path / "cloth.usda", faces=tris)
    stage = open_stage(out)
    mesh = UsdGeom.Mesh(stage.GetPrimAtPath("/World/Env_0001/Cloth"))
    assert mesh.GetPrim().GetTypeName() == "Mesh"
    assert list(mesh.GetFaceVertexCountsAttr().Get()) == [3] * 8
    assert mesh.GetSubdivisionSchemeAttr().Get() == UsdGeom.Tokens.none
    assert mesh.GetPointsAttr().GetNumTimeSamples() == 6
    # vertex k of the mesh is particle particleIndex[k]; the faces index them
    pidx = np.array(UsdGeom.PrimvarsAPI(mesh).GetPrimvar("particleIndex").Get())
    fvi = np.array(mesh.GetFaceVertexIndicesAttr().Get()).reshape(-1, 3)
    np.testing.assert_array_equal(pidx[fvi], tris)
    np.testing.assert_allclose(np.array(mesh.GetPointsAttr().Get(4)), x[4, 1, pidx], atol=1e-6)
    assert check_compliance(out)[0] == []
    with pytest.raises(ValueError, match="faces"):
        export_rollout(sc, x, tmp_path / "bad.usda", faces=[[0, 1, 99]])
    with pytest.raises(ValueError, match="faces"):
        export_rollout(sc, x, tmp_path / "bad.usda", faces=[[0, 1]])
    assert listdir(tmp_path) == ["cloth.usda"]


def test_overwrite_is_atomic(tmp_path, rope):
    out = tmp_path / "r.usda"
    export_rollout(rope, wiggle(rope, 3, 1), out)
    stage = open_stage(out)
    assert stage.GetEndTimeCode() == 2.0
    export_rollout(rope, wiggle(rope, 5, 2), out)
    assert listdir(tmp_path) == ["r.usda"]
    assert "int frames = 5" in out.read_text()
    assert stage.GetEndTimeCode() == 4.0 and len(env_prims(stage)) == 2  # open stages see the new file
    assert open_stage(out).GetEndTimeCode() == 4.0
    # a failed export keeps the previous file intact
    before = out.read_bytes()
    with pytest.raises(ValueError):
        export_rollout(rope, np.zeros((3, 1, 2, 3)), out)
    assert out.read_bytes() == before and listdir(tmp_path) == ["r.usda"]


def test_failure_while_writing_leaves_nothing(tmp_path, rope, monkeypatch):
    import warpsim_rl.usd as usd

    def boom(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(usd, "_build_layer", boom)
    with pytest.raises(RuntimeError, match="disk on fire"):
        export_rollout(rope, wiggle(rope, 3, 1), tmp_path / "x.usdc")
    assert listdir(tmp_path) == []


# -- bad input ------------------------------------------------------------------------------

def test_mismatched_shape(tmp_path, rope):
    n = rope.num_particles
    for bad in (np.zeros((4, 2, n + 1, 3)), np.zeros((4, 2, n, 2)), np.zeros((4, n, 3)), np.zeros((0, 2, n, 3))):
        with pytest.raises(ValueError, match=rf"expected \(frames, envs, {n}, 3\)"):
            export_rollout(rope, bad, tmp_path / "x.usda")
    x = wiggle(rope, 3, 2)
    x[1, 1, 0, 0] = np.nan
    with pytest.raises(ValueError, match="frame 1, env 1"):
        export_rollout(rope, x, tmp_path / "x.usda")
    with pytest.raises(ValueError, match="tensions"):
        export_rollout(rope, wiggle(rope, 3, 2), tmp_path / "x.usda", tensions=np.zeros((3, 2, 1)))
    with pytest.raises(ValueError, match="env_spacing"):
        export_rollout(rope, wiggle(rope, 3, 2), tmp_path / "x.usda", env_spacing=-1.0)
    with pytest.raises(ValueError, match="extension"):
        export_rollout(rope, wiggle(rope, 3, 2), tmp_path / "x.obj")
    assert listdir(tmp_path) == []


def test_unwritable_path(tmp_path, rope):
    x = wiggle(rope, 3, 1)
    if sys.platform.startswith("linux"):
        with pytest.raises(FileNotFoundError, match="does not exist"):
            export_rollout(rope, x, "/proc/forbidden/x.usda")
        with pytest.raises(OSError, match="not writable"):
            export_rollout(rope, x, "/proc/x.usda")  # /proc refuses new files, even to root
        assert not Path("/proc/x.usda").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        export_rollout(rope, x, tmp_path / "missing" / "x.usda")
    (tmp_path / "d.usda").mkdir()
    with pytest.raises(IsADirectoryError):
        export_rollout(rope, x, tmp_path / "d.usda")
    assert listdir(tmp_path) == ["d.usda"]


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write to read-only dirs")
def test_read_only_directory(tmp_path, rope):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(PermissionError, match="not writable"):
            export_rollout(rope, wiggle(rope, 3, 1), ro / "x.usda")
        assert listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_unknown_scene(tmp_path, capsys):
    with pytest.raises(SceneError, match="known scenes: .*rope3d"):
        export_rollout("no_such_scene", np.zeros((2, 1, 1, 3)), tmp_path / "x.usda")
    with pytest.raises(SceneError, match="known scenes"):
        record_rollout("no_such_scene", 1, 2)
    assert main(["--scene", "no_such_scene", "--steps", "2", "--out", str(tmp_path / "x.usda")]) == 2
    assert "unknown scene 'no_such_scene'; known scenes:" in capsys.readouterr().err
    assert main(["--scene", "rope3d", "--steps", "2", "--out", str(tmp_path / "missing" / "x.usda")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["--scene", "rope3d", "--param", "nope=3", "--out", str(tmp_path / "x.usda")]) == 2
    assert "unknown override" in capsys.readouterr().err
    assert listdir(tmp_path) == []


# -- simulation -----------------------------------------------------------------------------

def test_record_rollout(tmp_path, rope):
    ro = record_rollout(rope, envs=3, steps=6, seed=1, action_hold=2)
    n, dim = rope.num_particles, rope.dim
    assert ro.positions.shape == (7, 3, n, dim) and ro.actions.shape == (6, 3, 1, dim)
    assert ro.tensions.shape == (7, 3, rope.num_springs)
    np.testing.assert_allclose(ro.positions[0], np.broadcast_to(rope.positions, (3, n, dim)))
    assert np.all(np.abs(ro.actions) <= rope.velocity_limit + 1e-12)
    assert np.array_equal(ro.actions[0], ro.actions[1]) and not np.array_equal(ro.actions[1], ro.actions[2])
    # handles are kinematic: x' = x + dt a
    h = rope.handles[0]
    np.testing.assert_allclose(ro.positions[1:, :, h] - ro.positions[:-1, :, h], rope.dt * ro.actions[:, :, 0],
                               atol=1e-5)
    # given actions (broadcast over envs) and a policy callable give the same rollout
    acts = np.tile([[0.5, -0.2, 0.1]], (6, 1, 1))  # (T, h, dim)
    a = record_rollout(rope, envs=2, actions=acts)
    seen = []
    b = record_rollout(rope, envs=2, steps=6, actions=lambda t, x, v: seen.append(x.shape) or acts[t])
    assert a.positions.shape[0] == 7 and seen == [(2, n, dim)] * 6
    np.testing.assert_allclose(a.positions, b.positions)
    with pytest.raises(ValueError, match="does not match the expected"):
        record_rollout(rope, envs=2, steps=6, actions=np.zeros((5, 2, 1, 3)))
    with pytest.raises(ValueError, match="policy returned actions of shape"):
        record_rollout(rope, envs=2, steps=2, actions=lambda t, x, v: np.zeros((3, 1, 3)))
    out = export_rollout(rope, ro.positions, tmp_path / "sim.usdc", tensions=ro.tensions)
    stage = open_stage(out)
    assert stage.GetEndTimeCode() == 6.0 and len(env_prims(stage)) == 3


def test_cli(tmp_path, capsys):
    out, png = tmp_path / "cli.usda", tmp_path / "cli.png"
    rc = main(["--scene", "rope3d", "--envs", "2", "--steps", "4", "--param", "num_particles=3",
               "--out", str(out), "--png", str(png), "--check"])
    assert rc == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert "compliance: no errors" in text
    stage = open_stage(out)
    assert len(env_prims(stage)) == 2 and stage.GetEndTimeCode() == 4.0
    assert stage.GetPrimAtPath("/World/Env_0000/Particles").GetAttribute("points").GetNumTimeSamples() == 5
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert listdir(tmp_path) == ["cli.png", "cli.usda"]
    # a file that is not a training checkpoint: one error line, nothing written
    ckpt = tmp_path / "policy.pt"
    ckpt.write_bytes(b"")
    rc = main(["--scene", "pendulum2d", "--steps", "2", "--out", str(tmp_path / "p.usda"), "--policy", str(ckpt)])
    err = capsys.readouterr().err
    assert rc == 2 and "corrupted or not a checkpoint" in err and "issue" not in err
    assert not (tmp_path / "p.usda").exists()
    assert main(["--out", str(tmp_path / "p.usda"), "--policy", str(tmp_path / "none.pt")]) == 2
    assert "no such checkpoint file or run folder" in capsys.readouterr().err


def test_cli_exports_a_trained_policy(tmp_path, capsys):
    """``--policy`` exports the checkpoint's policy on its task's test bed for the task's horizon:
    the same rollouts as the run's eval.usdc. ``--scene`` may be left out; a different scene is
    refused naming both. (Before: exit 2, "needs warpsim_rl.policy, which arrives with ... issue".)"""
    from warpsim_rl.algos import RunConfig, algo_config
    from warpsim_rl.tasks import make_task
    from warpsim_rl.training import train

    run = tmp_path / "run"
    train(RunConfig(env="pendulum2d-stop", num_envs=4, horizon=8, epochs=1, eval_every=0, usd_envs=3, seed=2,
                    out=str(run)), algo_config("pods2", regression_steps=2), progress=False)
    out = tmp_path / "p.usda"
    rc = main(["--scene", "pendulum2d", "--policy", str(run / "checkpoint.pt"), "--envs", "3", "--out", str(out)])
    text = capsys.readouterr()
    assert rc == 0, text.err
    assert "policy of pendulum2d-stop (pods2, seed 2, epoch 1), test-bed initial states" in text.out
    stage, ref = open_stage(out), open_stage(run / "eval.usdc")
    assert stage.GetEndTimeCode() == 8.0 and len(env_prims(stage)) == 3  # the run's horizon
    pos0, _ = make_task("pendulum2d-stop").test_bed()
    sc = load_scene("pendulum2d")
    for e in range(3):
        path = f"/World/Env_{e:04d}/Particles"
        np.testing.assert_allclose(np.array(stage.GetPrimAtPath(path).GetAttribute("points").Get(0))[:, :2],
                                   pos0[e, sc.free_particles], atol=1e-6)  # test-bed initial states
        for t in range(9):
            np.testing.assert_allclose(np.array(stage.GetPrimAtPath(path).GetAttribute("points").Get(t)),
                                       np.array(ref.GetPrimAtPath(path).GetAttribute("points").Get(t)), atol=1e-5)
    meta = stage.GetRootLayer().customLayerData["warpsim_rl"]
    assert (meta["env"], meta["algo"], meta["seed"], meta["epoch"], meta["actions"]) == \
        ("pendulum2d-stop", "pods2", 2, 1, "policy")
    assert meta["seed"] == ref.GetRootLayer().customLayerData["warpsim_rl"]["seed"]
    # the run folder works too, and --scene is optional; --steps overrides the horizon
    assert main(["--policy", str(run), "--envs", "1", "--steps", "3", "--out", str(tmp_path / "q.usdc")]) == 0
    assert open_stage(tmp_path / "q.usdc").GetEndTimeCode() == 3.0
    capsys.readouterr()
    assert main(["--scene", "rope3d", "--policy", str(run), "--out", str(tmp_path / "r.usda")]) == 2
    err = capsys.readouterr().err
    assert "--scene 'rope3d'" in err and "'pendulum2d-stop'" in err and "'pendulum2d'" in err
    assert main(["--policy", str(run), "--seed", "1", "--out", str(tmp_path / "r.usda")]) == 2
    assert "--seed" in capsys.readouterr().err
    assert main(["--policy", str(run), "--envs", "1001", "--out", str(tmp_path / "r.usda")]) == 2
    assert "1000" in capsys.readouterr().err
    assert not (tmp_path / "r.usda").exists()


def test_render_preview(tmp_path):
    pytest.importorskip("matplotlib")
    from warpsim_rl.viz.preview import render_preview

    sc = load_scene("cable_payload2d")
    out = render_preview(sc, wiggle(sc, 10, 2), tmp_path / "prev.png", frames=4)
    assert out.read_bytes()[:4] == b"\x89PNG"
    with pytest.raises(ValueError, match="projection"):
        render_preview(sc, wiggle(sc, 10, 2), tmp_path / "p2.png", projection="xz")
    assert listdir(tmp_path) == ["prev.png"]
