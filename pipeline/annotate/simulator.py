"""The simulator-grounded annotator: the annotation schema written from recorded physics, no weights.

For each frame (see :mod:`pipeline.annotate.truth`):

* **objects**: every entity in view (at least ``annotate.min_visible_pixels`` pixels
  in the segmentation), named by its MuJoCo body or geom name, with its box from
  the segmentation and a description giving its pixel count, world position (m),
  velocity (m/s, with its direction in the image: left/right, up/down,
  towards/away from the camera), turning rate and what it touches;
* **physics** (``annotate.physics: true``, the default): the frame's ``qpos`` /
  ``qvel`` restored into the task's physics (:func:`load_task_physics`: the model
  collect simulates, built without a renderer) and ``mj_forward`` run; positions and velocities are then the bodies' centres of mass
  (``xipos``, ``mj_objectVelocity``: exact, and meaningful for a pole hinged at its
  frame origin), angular velocities are added, and MuJoCo's contact list gives
  what touches what (bodies, or named world geoms such as ``floor``). With
  ``physics: false`` only the episode file is used: body frame origins
  (``body_pos``) and their central differences over the control timestep, no
  contacts, no turning;
* **caption**: which bodies are in view and how many contacts; **motion**: the
  fastest moving bodies in view, with direction and speed, or that all is still.

It is the offline default backend and the ground truth of the accuracy metric.
Output is a pure function of the episode file (and the task's model for contacts).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Iterable, Iterator

import numpy as np

from pipeline.annotate.base import Backend, FrameItem, FrameResult
from pipeline.annotate.schema import Annotation, KeyObject
from pipeline.annotate.truth import WORLD_BODY, SceneTruth
from pipeline.errors import UserError

if TYPE_CHECKING:
    from pipeline.config import AnnotateParams, WeightsParams

log = logging.getLogger(__name__)

#: Speeds below this (m/s) count as still.
STILL_SPEED = 0.05
#: Angular speeds below this (rad/s) are not mentioned.
STILL_SPIN = 0.5
#: A camera-frame velocity component is named when it is at least this share of the speed.
DIRECTION_SHARE = 0.35
#: Bodies named in the motion sentence, fastest first.
MOTION_BODIES = 3
MODEL_NAME = "mujoco-truth-v1"


def vector_norm(v: np.ndarray) -> float:
    """Euclidean norm of a float64 vector, the same float as ``np.linalg.norm(v)`` (``sqrt(v . v)``) at a quarter of its cost."""
    return math.sqrt(v.dot(v))


def direction_words(velocity_cam: np.ndarray) -> str:
    """Words for a camera-frame velocity (x right, y down, z forward), e.g. 'up and to the left'."""
    speed = vector_norm(velocity_cam)
    if speed < STILL_SPEED:
        return "still"
    x, y, z = velocity_cam.tolist()
    words = []
    if abs(y) >= DIRECTION_SHARE * speed:
        words.append("down" if y > 0 else "up")
    if abs(x) >= DIRECTION_SHARE * speed:
        words.append("to the right" if x > 0 else "to the left")
    if abs(z) >= DIRECTION_SHARE * speed:
        words.append("away from the camera" if z > 0 else "towards the camera")
    return " and ".join(words)


@dataclass(frozen=True)
class PhysicsState:
    """What the restored physics adds to a frame's truth.

    Attributes:
        contacts: geom id pairs (g1, g2), g1 < g2, sorted, of MuJoCo's contact list.
        com_pos: (nbody, 3) float64 body centres of mass in the world (m).
        lin_vel: (nbody, 3) float64 centre-of-mass linear velocities in the world (m/s).
        ang_vel: (nbody, 3) float64 angular velocities in the world (rad/s).
    """

    contacts: list[tuple[int, int]]
    com_pos: np.ndarray
    lin_vel: np.ndarray
    ang_vel: np.ndarray


def load_task_physics(task: str, suite: str = "") -> tuple[Any, Any, Callable[[], None]]:
    """``(MjModel, MjData, close)`` of ``task``, the model the collect stage simulates, without a renderer.

    Built the way :mod:`pipeline.collect.envs` builds the task (dm_control: ``suite.load``;
    gymnasium: ``gym.make(...).unwrapped``) but with no OpenGL context, which would cost
    more than annotating a whole task (about 1 s on the 2-core CPU machine). ``suite``
    (an episode's ``meta.suite``) saves looking the task up in both suites' registries.

    Raises:
        UnknownTaskError: ``task`` is not a task name of either suite.
    """
    if suite not in ("dm_control", "gymnasium"):
        from pipeline.collect.envs import resolve_task

        suite = resolve_task(task)
    if suite == "dm_control":
        from dm_control import suite as dm_suite

        logging.getLogger("absl").setLevel(logging.ERROR)  # the XML compiler warns at every load
        domain, _, name = task.partition("-")
        env = dm_suite.load(domain, name, task_kwargs={"time_limit": float("inf")})
        return env.physics.model.ptr, env.physics.data.ptr, env.close
    import gymnasium as gym

    wrapped = gym.make(task, disable_env_checker=True)
    return wrapped.unwrapped.model, wrapped.unwrapped.data, wrapped.close


class PhysicsReader:
    """Recorded states restored into the task's physics (one model per task, built on first use)."""

    def __init__(self) -> None:
        self._physics: dict[str, tuple[Any, Any, Callable[[], None]]] = {}

    def _model(self, task: str, suite: str) -> tuple[Any, Any]:
        if task not in self._physics:
            self._physics[task] = load_task_physics(task, suite)
        model, data, _ = self._physics[task]
        return model, data

    def read(self, scene: SceneTruth) -> PhysicsState:
        """Set ``qpos``/``qvel`` of ``scene``, run ``mj_forward`` and read contacts and body velocities."""
        import mujoco

        model, data = self._model(scene.task, scene.suite)
        if data.qpos.shape != scene.qpos.shape or data.qvel.shape != scene.qvel.shape or model.nbody != len(scene.body_pos):
            raise UserError(
                f"{scene.task}: the recorded state (nq={scene.qpos.size}, nv={scene.qvel.size}, nbody={len(scene.body_pos)}) "
                f"does not fit the task's model (nq={model.nq}, nv={model.nv}, nbody={model.nbody}).\n"
                "  Fix: rerun the collect stage with the installed simulator, or set annotate.physics: false."
            )
        data.qpos[:] = scene.qpos
        data.qvel[:] = scene.qvel
        mujoco.mj_forward(model, data)
        pairs = {tuple(sorted((int(data.contact.geom1[i]), int(data.contact.geom2[i])))) for i in range(data.ncon)}
        velocity = np.zeros((model.nbody, 6))
        for body in range(model.nbody):
            mujoco.mj_objectVelocity(model, data, mujoco.mjtObj.mjOBJ_BODY, body, velocity[body], 0)
        return PhysicsState(sorted(pairs), data.xipos.copy(), velocity[:, 3:].copy(), velocity[:, :3].copy())

    def close(self) -> None:
        for _, _, close in self._physics.values():
            close()
        self._physics.clear()


def spin_words(angular_cam: np.ndarray) -> str:
    """Words for a camera-frame angular velocity (rad/s): '' below :data:`STILL_SPIN`."""
    rate = vector_norm(angular_cam)
    if rate < STILL_SPIN:
        return ""
    # z is the optical axis pointing into the image, x right, y down: +z turns x towards y, clockwise on screen.
    if abs(float(angular_cam[2])) >= 0.5 * rate:
        sense = "clockwise" if angular_cam[2] > 0 else "counter-clockwise"
        return f"turning {sense} at {rate:.2f} rad/s"
    return f"turning at {rate:.2f} rad/s"


def describe(scene: SceneTruth, physics: PhysicsState | None) -> Annotation:
    """The annotation of one frame from its :class:`SceneTruth` and, if read, its :class:`PhysicsState`.

    Positions and velocities are the bodies' centres of mass with physics, their frame
    origins (``body_pos`` and its finite differences) without.
    """
    contacts = physics.contacts if physics is not None else None
    positions = physics.com_pos if physics is not None else scene.body_pos
    velocities = physics.lin_vel if physics is not None else scene.body_vel
    entity_of_geom: dict[int, str] = {}
    names_by_body = {e.index: e.name for e in scene.entities if e.kind == "body"}
    scenery = {e.index: e.name for e in scene.entities if e.kind == "scenery"}
    for g, b in enumerate(np.asarray(scene.geom_body).tolist()):
        entity_of_geom[g] = names_by_body[b] if b != WORLD_BODY and b in names_by_body else scenery.get(g, "the world")
    touching: dict[str, set[str]] = {}
    for g1, g2 in contacts or []:
        a, b = entity_of_geom.get(g1, "?"), entity_of_geom.get(g2, "?")
        if a != b:
            touching.setdefault(a, set()).add(b)
            touching.setdefault(b, set()).add(a)

    rotation = scene.world_from_camera[:3, :3]
    objects, moving = [], []
    bodies_in_view = []
    for vis in scene.visible:
        entity = vis.entity
        touch = f"; touching {', '.join(sorted(touching[entity.name]))}" if entity.name in touching else ""
        where = f"{vis.pixels} px in view"
        if entity.kind == "body":
            bodies_in_view.append(entity.name)
            pos = positions[entity.index]
            vel = velocities[entity.index]
            speed = vector_norm(vel)
            heading = direction_words(rotation.T @ vel)
            spin = spin_words(rotation.T @ physics.ang_vel[entity.index]) if physics is not None else ""
            motion = "still" if heading == "still" else f"moving {heading} at {speed:.2f} m/s"
            if spin:
                motion += f", {spin}"
            if heading != "still" or spin:
                moving.append((speed, entity.name, motion))
            description = (
                f"body '{entity.name}', {where}; at ({pos[0]:.2f}, {pos[1]:.2f}, {pos[2]:.2f}) m in the world; {motion}{touch}"
            )
        else:
            description = f"static scenery '{entity.name}', {where}{touch}"
        objects.append(KeyObject(name=entity.name, description=description, box=[float(v) for v in vis.box]))

    if bodies_in_view:
        caption = f"A {scene.task} frame with {len(bodies_in_view)} bodies in view: {', '.join(bodies_in_view)}"
    else:
        caption = f"A {scene.task} frame with no body of the agent in view"
    if contacts is not None:
        caption += f"; {len(contacts)} contact{'s' if len(contacts) != 1 else ''}"
    caption += "."
    moving.sort(key=lambda m: (-m[0], m[1]))
    if moving:
        parts = [f"{name} {motion.replace('moving ', 'moves ', 1)}" for _, name, motion in moving[:MOTION_BODIES]]
        rest = len(moving) - MOTION_BODIES
        motion_text = "; ".join(parts) + (f"; {rest} more bodies move" if rest > 0 else "") + "."
    elif bodies_in_view:
        motion_text = "Everything in view is still."
    else:
        motion_text = "Nothing of the agent is in view."
    return Annotation(caption=caption, objects=objects, motion=motion_text)


class SimulatorBackend(Backend):
    """Annotations from the recorded physics; needs segmentation in the episodes."""

    name = "simulator"
    uses_cache = False  # cheaper than a cache lookup, and a pure function of the episode file
    needs_scene = True

    def __init__(self, params: "AnnotateParams", weights: "WeightsParams") -> None:
        self.model = MODEL_NAME
        self.model_key = MODEL_NAME
        self._physics = PhysicsReader() if params.physics else None

    def annotate(self, items: Iterable[FrameItem]) -> Iterator[FrameResult]:
        for item in items:
            if item.scene is None:
                raise ValueError(f"{item.task} episode {item.episode}: the simulator backend needs segmentation")
            physics = self._physics.read(item.scene) if self._physics is not None else None
            yield FrameResult(item, "ok", describe(item.scene, physics), raw=None, error=None)

    def close(self) -> None:
        if self._physics is not None:
            self._physics.close()
