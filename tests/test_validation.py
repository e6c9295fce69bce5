"""Bad input raises before any kernel runs, with a message naming the field and the value."""

import re

import numpy as np
import pytest
import warp as wp

from warpsim_rl import ActionError, SceneBuilder, SceneError, Simulator, load_scene, scene_names
from warpsim_rl.scene import scene_from_dict

GOOD_TOML = """
[scene]
name = "tiny"
dim = 2
dt = 0.01

[[particles]]
name = "h"
handle = true
position = [0.0, 0.0]
velocity_limit = [1.0, 1.0]

[[particles]]
name = "bob"
position = [0.0, -1.0]
mass = 1.0

[[springs]]
particles = ["h", "bob"]
stiffness = 1000.0
"""


def write(tmp_path, text, name="scene.toml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def builder(dim=2):
    b = SceneBuilder("t", dim=dim, dt=0.01)
    b.add_handle([0.0] * dim, velocity_limit=[1.0] * dim, name="h")
    return b


# ------------------------------------------------------------------------------------------
# scenes
# ------------------------------------------------------------------------------------------

def test_good_toml_loads(tmp_path):
    sc = load_scene(write(tmp_path, GOOD_TOML))
    assert sc.name == "tiny" and sc.num_particles == 2


def test_unknown_scene_lists_known():
    with pytest.raises(SceneError, match=r"unknown scene 'pendulum9d'; known scenes: \[.*'pendulum2d'.*\]") as e:
        load_scene("pendulum9d")
    for name in scene_names():
        assert repr(name) in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(SceneError, match=r"scene file '.*nothere\.toml' does not exist"):
        load_scene(tmp_path / "nothere.toml")


def test_malformed_toml(tmp_path):
    p = write(tmp_path, GOOD_TOML.replace("dt = 0.01", "dt = = 0.01"), "broken.toml")
    with pytest.raises(SceneError, match=r"broken\.toml: malformed TOML: .*line 5"):
        load_scene(p)


@pytest.mark.parametrize("mass", [0.0, -2.5])
def test_nonpositive_mass(tmp_path, mass):
    with pytest.raises(SceneError, match=rf"particles\[1\]\.mass = {re.escape(repr(mass))}: must be > 0 for a free particle"):
        builder().add_particle([0.0, -1.0], mass=mass)
    p = write(tmp_path, GOOD_TOML.replace("mass = 1.0", f"mass = {mass}"))
    with pytest.raises(SceneError, match=rf"scene\.toml: particles\[1\]\.mass = {re.escape(repr(mass))}: must be > 0"):
        load_scene(p)


def test_missing_mass(tmp_path):
    p = write(tmp_path, GOOD_TOML.replace("mass = 1.0", ""))
    with pytest.raises(SceneError, match=r"particles\[1\]\.mass: missing"):
        load_scene(p)


def test_spring_to_itself(tmp_path):
    b = builder()
    b.add_particle([0.0, -1.0], mass=1.0, name="bob")
    with pytest.raises(SceneError, match=r"springs\[0\]\.particles = \['bob', 1\]: a spring cannot join particle 1 to itself"):
        b.add_spring("bob", 1, stiffness=1e3)
    p = write(tmp_path, GOOD_TOML.replace('particles = ["h", "bob"]', 'particles = ["bob", "bob"]'))
    with pytest.raises(SceneError, match=r"springs\[0\]\.particles = \['bob', 'bob'\]: a spring cannot join particle 1 to itself"):
        load_scene(p)


def test_coincident_particles_zero_rest_length(tmp_path):
    b = builder()
    b.add_particle([0.0, 0.0], mass=1.0)  # on top of the handle
    with pytest.raises(SceneError, match=r"springs\[0\]\.rest_length: particles 0 and 1 coincide"):
        b.add_spring(0, 1, stiffness=1e3)
    with pytest.raises(SceneError, match=r"springs\[0\]\.rest_length = 0 with coincident particles 0 and 1"):
        b.add_spring(0, 1, stiffness=1e3, rest_length=0.0)
    b.add_spring(0, 1, stiffness=1e3, rest_length=0.5)  # fine: the spring pushes them apart
    p = write(tmp_path, GOOD_TOML.replace("position = [0.0, -1.0]", "position = [0.0, 0.0]"))
    with pytest.raises(SceneError, match=r"scene\.toml: springs\[0\]\.rest_length: particles 0 and 1 coincide"):
        load_scene(p)


def test_particle_index_out_of_range(tmp_path):
    b = builder()
    b.add_particle([0.0, -1.0], mass=1.0)
    with pytest.raises(SceneError, match=r"springs\[0\]\.particles\[1\] = 5: particle index out of range \[0, 2\)"):
        b.add_spring(0, 5, stiffness=1e3)
    with pytest.raises(SceneError, match=r"springs\[0\]\.particles\[0\] = -1: particle index out of range"):
        b.add_spring(-1, 1, stiffness=1e3)
    with pytest.raises(SceneError, match=r"springs\[0\]\.particles\[1\] = 'bobby': no particle with that name \(known: \['h'\]\)"):
        b.add_spring("h", "bobby", stiffness=1e3)
    p = write(tmp_path, GOOD_TOML.replace('particles = ["h", "bob"]', "particles = [0, 7]"))
    with pytest.raises(SceneError, match=r"springs\[0\]\.particles\[1\] = 7: particle index out of range"):
        load_scene(p)


@pytest.mark.parametrize("dt,why", [(0.0, "must be > 0"), (-0.01, "must be > 0"), (float("nan"), "must be finite")])
def test_nonpositive_dt(dt, why):
    with pytest.raises(SceneError, match=rf"scene\.dt = {re.escape(repr(dt))}: {why}"):
        SceneBuilder("t", dim=2, dt=dt)


def test_nonpositive_dt_toml(tmp_path):
    with pytest.raises(SceneError, match=r"scene\.toml: scene\.dt = 0\.0: must be > 0"):
        load_scene(write(tmp_path, GOOD_TOML.replace("dt = 0.01", "dt = 0.0")))
    with pytest.raises(SceneError, match=r"scene\.dt = '0\.01': expected a number"):
        load_scene(write(tmp_path, GOOD_TOML.replace("dt = 0.01", 'dt = "0.01"')))


@pytest.mark.parametrize("old,new,match", [
    ("dt = 0.01", "dt = 0.01\ngravty = [0.0, 1.0]", r"scene: unknown key\(s\) \['gravty'\] \(allowed: \[.*'gravity'"),
    ("mass = 1.0", "mass = 1.0\nmasss = 2.0", r"particles\[1\]: unknown key\(s\) \['masss'\]"),
    ("stiffness = 1000.0", "stiffness = 1000.0\nstifness = 1.0", r"springs\[0\]: unknown key\(s\) \['stifness'\]"),
    ("[scene]", "[solvr]\nmax_iters = 3\n\n[scene]", r"<top level>: unknown key\(s\) \['solvr'\]"),
    ("[scene]", "[solver]\nmax_iter = 3\n\n[scene]", r"solver: unknown key\(s\) \['max_iter'\]"),
])
def test_unknown_keys(tmp_path, old, new, match):
    with pytest.raises(SceneError, match=match):
        load_scene(write(tmp_path, GOOD_TOML.replace(old, new, 1)))


def test_unknown_parameter_override():
    with pytest.raises(SceneError, match=r"unknown override\(s\) \['num_particle'\] \(known: \[.*'num_particles'"):
        load_scene("rope3d", num_particle=3)
    with pytest.raises(SceneError, match=r"chains\.rope\.segments = 0: must be an integer >= 1"):
        load_scene("rope3d", num_particles=0)
    with pytest.raises(SceneError, match=r"chains\.rope\.segments = 2\.5: must be an integer >= 1"):
        load_scene("rope3d", num_particles=2.5)


def test_handle_flag_must_be_boolean(tmp_path):
    text = GOOD_TOML.replace("handle = true", 'handle = "false"')
    with pytest.raises(SceneError, match=r"particles\[0\]\.handle = 'false': expected true or false"):
        load_scene(write(tmp_path, text))


@pytest.mark.parametrize("call,match", [
    (lambda b: b.add_particle([0.0, 1.0, 2.0], 1.0), r"particles\[1\]\.position = \[0\.0, 1\.0, 2\.0\]: expected 2 numbers"),
    (lambda b: b.add_particle([0.0, np.inf], 1.0), r"particles\[1\]\.position = \[0\.0, inf\]: must be finite"),
    (lambda b: b.add_particle([0.0, 1.0], 1.0, velocity=[np.nan, 0.0]), r"particles\[1\]\.velocity = \[nan, 0\.0\]: must be finite"),
    (lambda b: b.add_particle([0.0, 1.0], "heavy"), r"particles\[1\]\.mass = 'heavy': expected a number"),
    (lambda b: b.add_handle([1.0, 0.0], [-1.0, 1.0]), r"particles\[1\]\.velocity_limit = \[-1\.0, 1\.0\]: must be >= 0"),
    (lambda b: b.add_particle([0.0, 1.0], 1.0, name="h"), r"particles\[1\]\.name = 'h': duplicate name"),
    (lambda b: SceneBuilder("t", dim=4, dt=0.01), r"scene\.dim = 4: must be 2 or 3"),
    (lambda b: SceneBuilder("t", dim=2, dt=0.01, gravity=[0.0, -9.81, 0.0]), r"scene\.gravity = \[0\.0, -9\.81, 0\.0\]: expected 2"),
    (lambda b: b.set_solver(max_iters=0), r"solver\.max_iters = 0: must be an integer >= 1"),
    (lambda b: b.set_solver(max_iters=True), r"solver\.max_iters = True: must be an integer >= 1"),
    (lambda b: b.set_solver(tol=-1e-3), r"solver\.tol = -0\.001: must be > 0"),
    (lambda b: b.set_solver(line_search_max=-1), r"solver\.line_search_max = -1: must be an integer >= 0"),
    (lambda b: b.add_plane([0.0, 0.0]), r"planes\[0\]\.normal = \[.*\]: must be non-zero"),
    (lambda b: b.add_box([0.0, 0.0], [1.0, 0.0]), r"boxes\[0\]\.half_extents = \[1\.0, 0\.0\]: must be > 0"),
    (lambda b: b.add_chain("h", [0.0, -1.0], segments=0, mass=1.0, stiffness=1.0), r"chains\.chain\.segments = 0"),
])
def test_builder_fields(call, match):
    with pytest.raises(SceneError, match=match):
        call(builder())


@pytest.mark.parametrize("kw,match", [
    (dict(stiffness=-1.0), r"springs\[0\]\.stiffness = -1\.0: must be > 0"),
    (dict(stiffness=0.0), r"springs\[0\]\.stiffness = 0\.0: must be > 0"),
    (dict(stiffness=1e3, damping=-0.5), r"springs\[0\]\.damping = -0\.5: must be >= 0"),
    (dict(stiffness=1e3, kind="rope"), r"springs\[0\]\.kind = 'rope': must be one of \['bilateral', 'cable'\]"),
    (dict(stiffness=1e3, rest_length=-1.0), r"springs\[0\]\.rest_length = -1\.0: must be >= 0"),
    (dict(stiffness=float("nan")), r"springs\[0\]\.stiffness = nan: must be finite"),
])
def test_spring_fields(kw, match):
    b = builder()
    b.add_particle([0.0, -1.0], mass=1.0)
    with pytest.raises(SceneError, match=match):
        b.add_spring(0, 1, **kw)


def test_spring_between_handles_and_empty_scenes():
    b = builder()
    b.add_handle([1.0, 0.0], [1.0, 1.0])
    with pytest.raises(SceneError, match=r"springs\[0\]\.particles = \[0, 1\]: both ends are handles"):
        b.add_spring(0, 1, stiffness=1e3)
    with pytest.raises(SceneError, match=r"t: scene has no free particle"):
        b.finalize()
    with pytest.raises(SceneError, match=r"t: scene has no particles"):
        SceneBuilder("t", dim=2, dt=0.01).finalize()


# ------------------------------------------------------------------------------------------
# models, parameters and states
# ------------------------------------------------------------------------------------------

def test_model_arguments():
    sc = load_scene("pendulum2d")
    with pytest.raises(SceneError, match=r"num_envs = 0: must be an integer >= 1"):
        sc.build(num_envs=0)
    with pytest.raises(SceneError, match=r"num_envs = 2\.0: must be an integer >= 1"):
        sc.build(num_envs=2.0)
    with pytest.raises(ValueError, match=r"dtype = 'float16': must be one of \['float32', 'float64'\]"):
        sc.build(dtype="float16")
    with pytest.raises(ValueError, match=r"device = 'cuda:7': not available; available devices: \[.*'cpu'"):
        sc.build(device="cuda:7")


def test_scene_values_must_fit_the_model_dtype():
    b = builder()
    b.add_particle([0.0, -1.0], mass=1.0)
    b.add_spring(0, 1, stiffness=1e39)  # fine in float64, inf in float32
    sc = b.finalize()
    sc.build(dtype="float64")
    with pytest.raises(SceneError, match=r"scene\.stiffness\[0\] = 1e\+39: overflows float32"):
        sc.build(dtype="float32")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_per_env_parameters(dtype):
    sc = load_scene("pendulum2d")
    model = sc.build(num_envs=2, device="cpu", dtype=dtype)
    before = (model.stiffness.numpy().copy(), model.mass.numpy().copy())
    cases = [
        (lambda: model.set_stiffness([[1e3], [-3.0]]), r"stiffness\[1, 0\] = -3\.0: must be > 0"),
        (lambda: model.set_stiffness([[1e3], [np.nan]]), r"stiffness\[1, 0\] = nan: must be finite"),
        (lambda: model.set_stiffness([1.0, 2.0, 3.0]), r"stiffness: shape \(3,\) does not broadcast to \(2, 1\)"),
        (lambda: model.set_stiffness("stiff"), r"stiffness = 'stiff': expected numbers"),
        (lambda: model.set_masses([[0.0, 1.0], [0.0, 0.0]]), r"mass\[1, 1\] = 0\.0: must be > 0 for a free particle"),
        (lambda: model.set_masses([[0.0, 1.0], [0.0, np.inf]]), r"mass\[1, 1\] = inf: must be finite"),
        (lambda: model.set_masses([1.0, 2.0, 3.0]), r"mass: shape \(3,\) does not broadcast to \(2, 2\)"),
    ]
    if dtype == "float32":
        cases += [
            (lambda: model.set_stiffness([[1e3], [1e40]]), r"stiffness\[1, 0\] = 1e\+40: overflows float32"),
            (lambda: model.set_masses([[0.0, 1.0], [0.0, 1e-50]]), r"mass\[1, 1\] = 1e-50: underflows to 0 in float32"),
        ]
    for call, match in cases:
        with pytest.raises(SceneError, match=match):
            call()
    # nothing was written
    np.testing.assert_array_equal(model.stiffness.numpy(), before[0])
    np.testing.assert_array_equal(model.mass.numpy(), before[1])


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_state_values(dtype):
    sc = load_scene("pendulum2d")
    model = sc.build(num_envs=2, device="cpu", dtype=dtype)
    with pytest.raises(SceneError, match=r"positions: shape \(3, 2, 2\) does not broadcast to \(2, 2, 2\)"):
        model.state(positions=np.zeros((3, 2, 2)))
    vel = np.zeros((2, 2, 2))
    vel[1, 1, 0] = np.nan
    with pytest.raises(SceneError, match=r"velocities\[1, 1, 0\] = nan: must be finite"):
        model.state(velocities=vel)
    st = model.state()
    with pytest.raises(SceneError, match=r"env_mask: shape \(3,\) != \(2,\)"):
        st.reset(env_mask=[True, False, True])
    if dtype == "float32":
        with pytest.raises(SceneError, match=r"positions\[0, 1, 1\] = -1e\+40: overflows float32"):
            model.state(positions=[[0.0, 0.0], [0.0, -1e40]])


# ------------------------------------------------------------------------------------------
# actions and states given to the simulator: rejected before the kernel launches
# ------------------------------------------------------------------------------------------

def _sim(dtype="float32", device="cpu", num_envs=2):
    sc = load_scene("pendulum2d")
    model = sc.build(num_envs=num_envs, device=device, dtype=dtype)
    sim = Simulator(model)
    return model, sim, model.state(), model.state(), model.control()


def _assert_no_launch(sim, s_out, count=0):
    assert sim.step_count == count
    np.testing.assert_array_equal(s_out.flat(), 0.0)  # the output state was never written


def test_action_wrong_shape():
    model, sim, s0, s1, ctrl = _sim()
    s1 = type(s0)(model)  # an all-zero output state
    ctrl.action = wp.zeros((2, 2), dtype=model.vec)
    for check in (True, False):
        with pytest.raises(ActionError, match=r"action\.shape = \(2, 2\): expected \(2, 1\) \(envs, handles\) of 2-vectors"):
            sim.step(s0, ctrl, s1, check=check)
    ctrl.action = wp.zeros(2, dtype=model.vec)
    with pytest.raises(ActionError, match=r"action\.shape = \(2,\): expected \(2, 1\)"):
        sim.step(s0, ctrl, s1)
    ctrl.action = np.zeros((2, 1, 2), dtype=np.float32)
    with pytest.raises(ActionError, match=r"action: expected a warp array, got ndarray"):
        sim.step(s0, ctrl, s1)
    _assert_no_launch(sim, s1)


def test_action_wrong_dtype():
    model, sim, s0, s1, ctrl = _sim("float32")
    s1 = type(s0)(model)
    ctrl.action = wp.zeros((2, 1), dtype=wp.vec2d)  # float64 actions for a float32 model
    for check in (True, False):
        with pytest.raises(ActionError, match=r"action\.dtype = vec2d: expected vec2f \(2-vectors of float32\)"):
            sim.step(s0, ctrl, s1, check=check)
    ctrl.action = wp.zeros((2, 1), dtype=wp.vec3f)  # 3D actions for a 2D model
    with pytest.raises(ActionError, match=r"action\.dtype = vec3f: expected vec2f"):
        sim.step(s0, ctrl, s1)
    _assert_no_launch(sim, s1)


@pytest.mark.parametrize("dtype,vec", [("float32", wp.vec2f), ("float64", wp.vec2d)])
def test_action_builtin_vector_type_accepted(dtype, vec):
    model, sim, s0, s1, ctrl = _sim(dtype)
    assert wp.types.types_equal(vec, model.vec)
    ctrl.action = wp.zeros((2, 1), dtype=vec)
    sim.step(s0, ctrl, s1)
    assert sim.step_count == 1


def test_action_wrong_device():
    devices = ["cpu"] + [str(d) for d in wp.get_cuda_devices()]
    if len(devices) < 2:
        pytest.skip("only one Warp device available (no CUDA device to put a misplaced action on)")
    model, sim, s0, s1, ctrl = _sim(device=devices[1])
    ctrl.action = wp.zeros((2, 1), dtype=model.vec, device="cpu")
    with pytest.raises(ActionError, match=rf"action\.device = cpu: expected {re.escape(devices[1])}"):
        sim.step(s0, ctrl, s1)
    assert sim.step_count == 0


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_nonfinite_action(dtype, bad):
    model, sim, s0, _, ctrl = _sim(dtype, num_envs=3)
    s1 = type(s0)(model)
    a = np.zeros((3, 1, 2))
    a[2, 0, 1] = bad
    ctrl.action.assign(wp.array(a.astype(model.np_dtype), dtype=model.vec))
    with pytest.raises(ActionError, match=rf"action: non-finite values in env\(s\) \[2\], e\.g\. action\[2\] = \[\[0\.0, {bad}\]\]"):
        sim.step(s0, ctrl, s1, check=True)
    _assert_no_launch(sim, s1)


def test_state_of_other_dtype_or_same_buffers():
    model, sim, s0, s1, ctrl = _sim("float32")
    other = load_scene("pendulum2d").build(num_envs=2, device="cpu", dtype="float64")
    with pytest.raises(ValueError, match=r"state_in: not a State of this model"):
        sim.step(other.state(), ctrl, s1)
    with pytest.raises(ValueError, match=r"state_out: not a State of this model"):
        sim.step(s0, ctrl, other.state())
    with pytest.raises(ValueError, match=r"state_out must be a different State than state_in"):
        sim.step(s0, ctrl, s0)
    assert sim.step_count == 0


def test_scene_from_dict_source_prefix():
    with pytest.raises(SceneError, match=r"^mydict: \[scene\]: missing table$"):
        scene_from_dict({}, "mydict")


# ------------------------------------------------------------------------------------------
# vectors: every entry must be a number (no strings, no booleans), named by its index
# ------------------------------------------------------------------------------------------

GOOD_TOML_3D = """
[scene]
name = "tiny3d"
dim = 3
dt = 0.01
gravity = [0.0, -9.81, 0.0]

[[particles]]
name = "h"
handle = true
position = [0.0, 0.0, 0.0]
velocity_limit = [2.0, 2.0, 2.0]

[[particles]]
name = "bob"
position = [0.0, -0.5, 0.0]
mass = 1.0

[[springs]]
particles = ["h", "bob"]
stiffness = 1000.0
"""


@pytest.mark.parametrize("old,new,match", [
    ("position = [0.0, -0.5, 0.0]", 'position = [0.0, "-0.5", 0.0]',
     r"particles\[1\]\.position\[1\] = '-0\.5': expected a number, got a str "
     r"\(particles\[1\]\.position = \[0\.0, '-0\.5', 0\.0\]\)"),
    ("position = [0.0, -0.5, 0.0]", "position = [0.0, true, 0.0]",
     r"particles\[1\]\.position\[1\] = True: expected a number, got a boolean"),
    ("gravity = [0.0, -9.81, 0.0]", 'gravity = [0.0, "-9.81", 0.0]',
     r"scene\.gravity\[1\] = '-9\.81': expected a number, got a str"),
    ("velocity_limit = [2.0, 2.0, 2.0]", 'velocity_limit = ["2.0", 2, 2]',
     r"particles\[0\]\.velocity_limit\[0\] = '2\.0': expected a number"),
    ("velocity_limit = [2.0, 2.0, 2.0]", "velocity_limit = [2.0, false, 2.0]",
     r"particles\[0\]\.velocity_limit\[1\] = False: expected a number, got a boolean"),
    ("mass = 1.0", 'mass = 1.0\nvelocity = [0.0, 0.0, "1"]',
     r"particles\[1\]\.velocity\[2\] = '1': expected a number"),
    ("mass = 1.0", "mass = 1.0\nvelocity = [0.0, [1.0], 0.0]",
     r"particles\[1\]\.velocity\[1\] = \[1\.0\]: expected a number, got a list"),
    ('stiffness = 1000.0', 'stiffness = 1000.0\n\n[[planes]]\nnormal = [0.0, "1", 0.0]\noffset = -2.0',
     r"planes\[0\]\.normal\[1\] = '1': expected a number"),
    ('stiffness = 1000.0', 'stiffness = 1000.0\n\n[[boxes]]\ncenter = [0.0, -2.0, 0.0]\nhalf_extents = [1.0, true, 1.0]',
     r"boxes\[0\]\.half_extents\[1\] = True: expected a number, got a boolean"),
])
def test_vector_entries_must_be_numbers_toml(tmp_path, old, new, match):
    """Strings and booleans inside vectors used to be converted silently ("-0.5" -> -0.5,
    true -> 1.0); like scalars they are rejected, naming the field, the index and the value."""
    assert old in GOOD_TOML_3D
    load_scene(write(tmp_path, GOOD_TOML_3D, "good.toml"))  # the unmodified scene loads
    with pytest.raises(SceneError, match=r"scene\.toml: " + match):
        load_scene(write(tmp_path, GOOD_TOML_3D.replace(old, new, 1)))


@pytest.mark.parametrize("call,match", [
    (lambda b: b.add_particle([0, "-1"], 1.0), r"particles\[1\]\.position\[1\] = '-1': expected a number, got a str \(particles\[1\]\.position = \[0, '-1'\]\)"),
    (lambda b: b.add_particle([0.0, True], 1.0), r"particles\[1\]\.position\[1\] = True: expected a number, got a boolean"),
    (lambda b: b.add_particle(np.array([False, True]), 1.0), r"particles\[1\]\.position\[0\] = False: expected a number, got a boolean"),
    (lambda b: b.add_particle([0.0, -1.0], 1.0, velocity=[0.0, "0"]), r"particles\[1\]\.velocity\[1\] = '0'"),
    (lambda b: b.add_handle([1.0, 0.0], ["2.0", 2]), r"particles\[1\]\.velocity_limit\[0\] = '2\.0'"),
    (lambda b: SceneBuilder("t", dim=2, dt=0.01, gravity=[0.0, "-9.81"]), r"scene\.gravity\[1\] = '-9\.81'"),
    (lambda b: b.add_plane([0.0, True]), r"planes\[0\]\.normal\[1\] = True"),
    (lambda b: b.add_box([0.0, "0"], [1.0, 1.0]), r"boxes\[0\]\.center\[1\] = '0'"),
    (lambda b: b.add_chain("h", [0.0, "-1"], segments=2, mass=1.0, stiffness=1.0), r"chains\.chain\.end\[1\] = '-1'"),
])
def test_vector_entries_must_be_numbers_builder(call, match):
    with pytest.raises(SceneError, match=match):
        call(builder())


def test_vectors_still_accept_numbers_of_any_numeric_type():
    b = builder()
    i = b.add_particle(np.array([0.5, -1.0], dtype=np.float32), mass=1.0, velocity=(np.int64(1), 2))
    j = b.add_particle([np.float64(0.25), -2], mass=1.0)
    b.add_spring(i, j, stiffness=1e3)
    sc = b.finalize()
    np.testing.assert_array_equal(sc.positions[1:], [[0.5, -1.0], [0.25, -2.0]])
    np.testing.assert_array_equal(sc.velocities[1], [1.0, 2.0])


def test_parameter_errors_name_the_parameter(tmp_path):
    """An invalid value derived from a parameter names the derived field and the parameter the
    user passed (an override), or the [parameters] entries the table used (a bad file default)."""
    with pytest.raises(SceneError, match=r"^scenes/rope3d\.toml: particles\[1\]\.mass = -1: must be > 0 for a free "
                                         r"particle \(chains\[0\] uses the parameter override particle_mass = -1\)$"):
        load_scene("rope3d", particle_mass=-1)
    with pytest.raises(SceneError, match=r"particles\[1\]\.mass = '0\.05': expected a number "
                                         r"\(chains\[0\] uses the parameter override particle_mass = '0\.05'\)"):
        load_scene("rope3d", particle_mass="0.05")
    with pytest.raises(SceneError, match=r"chains\.rope\.segments = 0: must be an integer >= 1 "
                                         r"\(chains\[0\] uses the parameter override num_particles = 0\)"):
        load_scene("rope3d", num_particles=0)
    text = GOOD_TOML.replace("[scene]", "[parameters]\nbob_y = -1.0\nbob_mass = -2.0\n\n[scene]")
    text = text.replace("position = [0.0, -1.0]", 'position = [0.0, "$bob_y"]').replace("mass = 1.0", 'mass = "$bob_mass"')
    p = write(tmp_path, text)
    with pytest.raises(SceneError, match=r"particles\[1\]\.mass = -2\.0: must be > 0 for a free particle "
                                         r"\(particles\[1\] uses \[parameters\] bob_mass = -2\.0, bob_y = -1\.0\)"):
        load_scene(p)
    with pytest.raises(SceneError, match=r"particles\[1\]\.position\[1\] = True: expected a number, got a boolean "
                                         r".*\(particles\[1\] uses the parameter overrides bob_mass = 1\.0, bob_y = True\)"):
        load_scene(p, bob_y=True, bob_mass=1.0)
    assert load_scene(p, bob_mass=1.0).masses[1] == 1.0
