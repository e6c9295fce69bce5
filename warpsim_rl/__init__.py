"""warpsim_rl: differentiable batched mass-spring simulation in NVIDIA Warp for policy optimisation."""

from .model import Control, Model, State
from .scene import Scene, SceneBuilder, SceneError, load_scene, scene_names
from .sim import ActionError, SimulationError, Simulator
from .util import resolve_device, resolve_dtype

__all__ = [
    "ActionError", "Control", "Model", "Scene", "SceneBuilder", "SceneError", "SimulationError",
    "Simulator", "State", "load_scene", "resolve_device", "resolve_dtype", "scene_names",
]
__version__ = "0.1.0"
