"""The simulator-grounded annotator: the annotation schema written from recorded physics, no weights.

It stands in for a vision-language model reading the frame's key information, and
says it the way such a model would: in coarse words, not numbers. For each frame
(see :mod:`pipeline.annotate.truth`):

* **caption** and **motion**: the task's state in words from the domain's describer
  (:mod:`pipeline.annotate.describe`: e.g. cart-pole "The pole is tilted a little to
  the right and swinging fast clockwise; the cart is left of the middle, moving
  slowly to the right."; cheetah: pitch, forward speed, which feet touch the ground);
* **objects**: every entity in view (at least ``annotate.min_visible_pixels`` pixels
  in the segmentation), named by its MuJoCo body or geom name, with its box from
  the segmentation and a description in words: the domain's state words for the
  objects that carry the task (pole angle, cart place, feet on the ground ...), else
  the body's motion (direction in the image, still / slowly / fast), spin and what
  it touches;
* **physics** (``annotate.physics: true``, the default): the frame's ``qpos`` /
  ``qvel`` restored into the task's physics (:func:`pipeline.sim.task_physics.load_task_physics`: the model
  collect simulates, built without a renderer) and ``mj_forward`` run; velocities are
  then the bodies' centres of mass (``mj_objectVelocity``: exact, and meaningful for a
  pole hinged at its frame origin), and MuJoCo's contact list gives what touches what
  (bodies, or named world geoms such as ``floor``). With ``physics: false`` only the
  episode file is used: body poses and their finite differences over the control
  timestep, and nothing is said about contacts.

It is the offline default backend and the ground truth of the accuracy metric.
Output is a pure function of the episode file (and the task's model for contacts).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.annotate.base import Backend, FrameItem, FrameResult
from pipeline.annotate.describe import describe_frame, object_words
from pipeline.annotate.schema import Annotation, KeyObject
from pipeline.annotate.truth import PhysicsState, SceneTruth
from pipeline.common.errors import UserError
from pipeline.sim.task_physics import load_task_physics

if TYPE_CHECKING:
    from pipeline.config import AnnotateParams, WeightsParams

log = logging.getLogger(__name__)

#: The simulator's "model id" in annotation files and cache keys; v2: state in words
#: (:mod:`pipeline.annotate.describe`).
MODEL_NAME = "mujoco-truth-v2"


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
        if (
            data.qpos.shape != scene.qpos.shape
            or data.qvel.shape != scene.qvel.shape
            or model.nbody != len(scene.body_pos)
        ):
            raise UserError(
                f"{scene.task}: the recorded state "
                f"(nq={scene.qpos.size}, nv={scene.qvel.size}, nbody={len(scene.body_pos)}) "
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


def describe(scene: SceneTruth, physics: PhysicsState | None) -> Annotation:
    """The annotation of one frame from its :class:`SceneTruth` and, if read, its :class:`PhysicsState`.

    Caption and motion come from the domain's describer (:func:`pipeline.annotate.describe.describe_frame`);
    the key objects are the entities in view, in entity order, with their segmentation boxes.
    """
    frame, words = describe_frame(scene, physics)
    objects = [
        KeyObject(
            name=vis.entity.name,
            description=words.objects.get(vis.entity.name) or object_words(frame, vis.entity),
            box=[float(v) for v in vis.box],
        )
        for vis in scene.visible
    ]
    return Annotation(caption=words.caption, objects=objects, motion=words.motion)


class SimulatorBackend(Backend):
    """Annotations from the recorded physics; needs segmentation in the episodes."""

    name = "simulator"
    uses_cache = False  # cheaper than a cache lookup, and a pure function of the episode file
    needs_scene = True

    def __init__(self, params: AnnotateParams, weights: WeightsParams) -> None:
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
