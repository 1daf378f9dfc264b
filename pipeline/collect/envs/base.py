"""The pixel environment interface shared by every simulator backend.

A backend wraps one simulator's task (dm_control suite, gymnasium MuJoCo) and exposes its
``mujoco.MjModel`` / ``mujoco.MjData``; this base class adds what the pipeline needs on
top: action repeat, the agent-step time limit (recorded as truncation, never as
termination), and rendering of the frame plus the simulator's truth for it.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # mujoco is imported by the backends, after make_env set up headless rendering
    import mujoco

    from pipeline.collect.render import SceneRenderer


@dataclass
class StepResult:
    """What the environment shows after ``reset`` or one agent ``step``.

    Attributes:
        frame: (H, W, 3) uint8 RGB, row 0 at the top; None when the env renders no frames
            (``PixelEnv.render_frames = False``, for state-only agents), as are the camera's
            matrices, depth and segmentation then.
        reward: reward summed over the action repeat (0.0 after reset).
        discount: product of the simulator's discounts over the repeat (0.0 at a true terminal).
        terminated: the task reached a terminal state (the episode cannot continue).
        truncated: the episode was cut by the time limit (``episode_steps`` agent steps) or ended
            by the simulator without a terminal state; never set together with ``terminated``.
        qpos, qvel: (nq,), (nv,) float64 MuJoCo state at this frame.
        body_pos, body_quat: (nbody, 3) m, (nbody, 4) (w, x, y, z) float64 world poses
            (MuJoCo ``xpos`` / ``xquat``) at this frame.
        camera_extrinsics: (4, 4) float64 world_from_camera, OpenCV axes (x right, y down, z forward).
        camera_intrinsics: (3, 3) float64 K in pixels, pixel centres at integer coordinates.
        depth: (H, W) float32 z-depth in metres, or None when not asked for.
        segmentation: (H, W) int32 geom id per pixel (-1: background), or None when not asked for.
        obs: (3k, H, W) uint8 frame stack, oldest frame first, when the env is wrapped in
            :class:`pipeline.collect.envs.wrappers.FrameStack`; None otherwise.
    """

    frame: np.ndarray | None
    reward: float
    discount: float
    terminated: bool
    truncated: bool
    qpos: np.ndarray
    qvel: np.ndarray
    body_pos: np.ndarray
    body_quat: np.ndarray
    camera_extrinsics: np.ndarray | None
    camera_intrinsics: np.ndarray | None
    depth: np.ndarray | None = None
    segmentation: np.ndarray | None = None
    obs: np.ndarray | None = None

    @property
    def done(self) -> bool:
        """The episode is over (terminated or truncated): call ``reset`` next."""
        return self.terminated or self.truncated


class PixelEnv(abc.ABC):
    """A MuJoCo task rendered to pixels, with action repeat and a time limit in agent steps.

    Subclasses set ``suite`` and implement :meth:`_load` (which sets ``model``, ``data``,
    ``action_low``, ``action_high`` and ``physics_timestep``, seconds of simulated time per backend
    step), :meth:`_reset_physics` and :meth:`_step_physics`; the arguments are :func:`make_env`'s.
    """

    suite: str
    task: str
    camera: int | str  # as requested (make_env's ``camera``)
    model: mujoco.MjModel
    data: mujoco.MjData
    action_low: np.ndarray  # (A,) float32
    action_high: np.ndarray  # (A,) float32
    physics_timestep: float

    def __init__(
        self,
        task: str,
        *,
        image_size: int,
        camera: int | str,
        action_repeat: int,
        render_mode: str,
        depth: bool,
        segmentation: bool,
        episode_steps: int,
        seed: int,
    ) -> None:
        if action_repeat < 1:
            raise ValueError(f"action_repeat must be >= 1, got {action_repeat}")
        if episode_steps < 1:
            raise ValueError(f"episode_steps must be >= 1, got {episode_steps}")
        self.action_repeat = action_repeat
        self.episode_steps = episode_steps
        self._next_seed: int | None = seed
        self._steps = 0
        self._done = True
        self._renderer: SceneRenderer | None = None
        self._render_spec: tuple | None = None  # SceneRenderer's arguments, set by _init_rendering
        #: False: steps return no frame (no OpenGL work at all); a state-only agent's env
        #: steps several times faster.
        self.render_frames = True
        self._wrap_dims: frozenset[int] | None = None  # see _unbounded_angle_dims
        self.task = task
        self.camera = camera
        self._load(task, seed)
        try:
            camera_id = resolve_camera(self.model, self._camera(camera), task)
            view = self._free_camera() if camera_id < 0 else camera_id
            self._init_rendering(image_size, view, render_mode, depth, segmentation)
        except BaseException:
            self._close_backend()
            raise

    # -- backend hooks -------------------------------------------------------------------------
    @abc.abstractmethod
    def _load(self, task: str, seed: int) -> None:
        """Build the simulator for ``task``; set ``model``, ``data``, ``action_low``, ``action_high``,
        ``physics_timestep``."""

    def _camera(self, camera: int | str) -> int | str:
        """The camera to resolve for the requested one (a backend may map a default to its own)."""
        return camera

    def _free_camera(self) -> mujoco.MjvCamera:
        """The view of camera ``-1``: MuJoCo's default free camera of the model."""
        import mujoco

        free = mujoco.MjvCamera()
        mujoco.mjv_defaultFreeCamera(self.model, free)
        return free

    @abc.abstractmethod
    def _reset_physics(self, seed: int | None) -> None:
        """Start a new episode; ``seed`` reseeds the task's randomness (None: continue its stream)."""

    @abc.abstractmethod
    def _step_physics(self, action: np.ndarray) -> tuple[float, float, bool, bool]:
        """One backend step; returns (reward, discount, terminated, ended_without_terminal).

        On return ``data``'s position-dependent fields (xpos, cam_xpos, ...) must match ``qpos``.
        """

    def _close_backend(self) -> None:  # noqa: B027 - optional hook, a no-op unless a backend holds resources
        """Release the backend's resources."""

    # -- shared machinery -----------------------------------------------------------------------
    def _init_rendering(
        self, image_size: int, camera: int | mujoco.MjvCamera, render_mode: str, depth: bool, segmentation: bool
    ) -> None:
        """Set up rendering; ``camera`` is a model camera id or a free ``MjvCamera``.

        The OpenGL context itself is created at the first frame rendered, so an env built only to
        validate a task and camera (the collect stage does, before its workers start) costs no GL
        start-up (about 3 s with llvmpipe).
        """
        self.image_size = image_size
        self.render_mode = render_mode
        self.camera_id = camera if isinstance(camera, int) else -1
        self._render_spec = (image_size, camera, render_mode, depth, segmentation)

    @property
    def action_dim(self) -> int:
        return int(self.action_low.shape[0])

    @property
    def control_timestep(self) -> float:
        """Seconds of simulated time per agent step (backend step x action repeat)."""
        return self.physics_timestep * self.action_repeat

    @property
    def body_names(self) -> list[str]:
        import mujoco

        return [
            mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_BODY, i) or f"body{i}" for i in range(self.model.nbody)
        ]

    @property
    def camera_name(self) -> str:
        """Name of the model camera rendered, or ``"free"``."""
        return camera_names(self.model)[self.camera_id] if self.camera_id >= 0 else "free"

    @property
    def geom_names(self) -> list[str]:
        import mujoco

        return [
            mujoco.mj_id2name(self.model, mujoco.mjtObj.mjOBJ_GEOM, i) or f"geom{i}" for i in range(self.model.ngeom)
        ]

    @property
    def geom_body(self) -> np.ndarray:
        """(ngeom,) int32 body id of each geom (maps segmentation ids to bodies)."""
        return np.asarray(self.model.geom_bodyid, dtype=np.int32).copy()

    def state_observation(self) -> tuple[np.ndarray, list[str]]:
        """The task's proprioceptive observation now: what a state-based agent sees.

        Returns:
            ``(obs, kinds)``: obs (D,) float32, the backend's own observation flattened
            (dm_control: the observation dict in key order; gymnasium: ``_get_obs()``), and
            ``kinds`` (D,) with ``"position"`` (positions, angles as cos/sin, orientations,
            distances), ``"velocity"`` or ``"other"`` (touch sensors, contact forces) per dim.
        """
        raise NotImplementedError(f"{type(self).__name__} has no state observation")

    def _observation_qpos(self) -> list[int | None]:
        """Per dimension of :meth:`state_observation`, the ``qpos`` address it is a raw copy of, or None."""
        raise NotImplementedError(f"{type(self).__name__} cannot map its observation to qpos")

    def probe_observation(self) -> tuple[np.ndarray, list[str]]:
        """The state observation as a frame can show it: the probe's target.

        :meth:`state_observation` with each raw angle of an unbounded hinge (a hinge joint without
        limits, copied from ``qpos``) replaced by its cos and sin, both of kind ``position``. A
        frame shows such an angle only modulo a full turn: reacher-easy's shoulder starts anywhere
        in [-pi, pi] and winds up to +-17 rad under the probe's noise policy, so no representation
        of pixels could predict the raw value. Bounded hinges (reacher's wrist, +-160 deg) and
        angles the task already gives as cos/sin are kept as they are.

        Returns:
            ``(obs, kinds)``: obs (D',) float32, D' = D + the number of unbounded-angle dims.
        """
        obs, kinds = self.state_observation()
        wrap = self._unbounded_angle_dims()
        if not wrap:
            return obs, kinds
        values: list[np.ndarray] = []
        out_kinds: list[str] = []
        for i, kind in enumerate(kinds):
            if i in wrap:
                values.append(np.array([np.cos(obs[i]), np.sin(obs[i])], np.float32))
                out_kinds += ["position", "position"]
            else:
                values.append(obs[i : i + 1])
                out_kinds.append(kind)
        return np.concatenate(values), out_kinds

    def _unbounded_angle_dims(self) -> frozenset[int]:
        """Dims of :meth:`state_observation` that are raw angles of unbounded hinges (computed once)."""
        if self._wrap_dims is None:
            import mujoco

            model = self.model
            joint_of = {int(model.jnt_qposadr[j]): j for j in range(model.njnt)}
            unbounded = {
                adr
                for adr, j in joint_of.items()
                if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE and not model.jnt_limited[j]
            }
            self._wrap_dims = frozenset(i for i, adr in enumerate(self._observation_qpos()) if adr in unbounded)
        return self._wrap_dims

    def reset(self, seed: int | None = None) -> StepResult:
        """Start an episode. ``seed`` fixes its initial state; None continues the env's seed stream
        (the first reset without a seed uses ``make_env``'s ``seed``)."""
        if seed is None:
            seed, self._next_seed = self._next_seed, None
        self._reset_physics(seed)
        self._steps = 0
        self._done = False
        return self._observe(0.0, 1.0, False, False)

    def step(self, action: np.ndarray) -> StepResult:
        """Apply ``action`` (A,) in env units for ``action_repeat`` backend steps; render the last state."""
        if self._done:
            raise RuntimeError("step() called on a finished episode (or before reset()); call reset() first")
        action = np.asarray(action)
        if action.shape != self.action_low.shape:
            raise ValueError(f"{self.task}: action has shape {action.shape}, expected {self.action_low.shape}")
        reward, discount, terminated, ended = 0.0, 1.0, False, False
        for _ in range(self.action_repeat):
            r, d, terminated, ended = self._step_physics(action)
            reward += r
            discount *= d
            if terminated or ended:
                break
        self._steps += 1
        truncated = not terminated and (ended or self._steps >= self.episode_steps)
        self._done = terminated or truncated
        return self._observe(reward, discount, terminated, truncated)

    def start_rendering(self) -> SceneRenderer:
        """Create the OpenGL context and renderer now if not yet done (the first frame does it
        otherwise); return the renderer."""
        if self._renderer is None:
            from pipeline.collect.render import SceneRenderer

            if self._render_spec is None:
                raise RuntimeError("the backend did not call _init_rendering, or the env is closed")
            self._renderer = SceneRenderer(self.model, *self._render_spec)
        return self._renderer

    def _observe(self, reward: float, discount: float, terminated: bool, truncated: bool) -> StepResult:
        data = self.data
        if not self.render_frames:
            return StepResult(
                frame=None,
                reward=float(reward),
                discount=float(discount),
                terminated=bool(terminated),
                truncated=bool(truncated),
                qpos=data.qpos.copy(),
                qvel=data.qvel.copy(),
                body_pos=data.xpos.copy(),
                body_quat=data.xquat.copy(),
                camera_extrinsics=None,
                camera_intrinsics=None,
            )
        frame = self.start_rendering().render(self.data)
        return StepResult(
            frame=frame.rgb,
            reward=float(reward),
            discount=float(discount),
            terminated=bool(terminated),
            truncated=bool(truncated),
            qpos=data.qpos.copy(),
            qvel=data.qvel.copy(),
            body_pos=data.xpos.copy(),
            body_quat=data.xquat.copy(),
            camera_extrinsics=frame.extrinsics,
            camera_intrinsics=frame.intrinsics,
            depth=frame.depth,
            segmentation=frame.segmentation,
        )

    def close(self) -> None:
        """Free the renderer's OpenGL context and the backend (call it: EGL contexts complain at exit otherwise)."""
        self._render_spec = None
        if self._renderer is not None:
            self._renderer.close()
            self._renderer = None
        self._close_backend()

    def __enter__(self) -> PixelEnv:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def camera_names(model: mujoco.MjModel) -> list[str]:
    import mujoco

    return [mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_CAMERA, i) or f"camera{i}" for i in range(model.ncam)]


def resolve_camera(model: mujoco.MjModel, camera: int | str, task: str) -> int:
    """Model camera id of ``camera`` (an id, a name, or -1 for the free camera).

    Raises:
        CameraError: no such camera; the message lists the model's cameras.
    """
    import mujoco

    from pipeline.collect.errors import CameraError

    names = camera_names(model)
    choices = ", ".join(f"{i} ({n!r})" for i, n in enumerate(names)) or "none"
    if isinstance(camera, str):
        camera_id = mujoco.mj_name2id(model, mujoco.mjtObj.mjOBJ_CAMERA, camera)
        if camera_id < 0:
            raise CameraError(
                f"collect.camera = {camera!r}: task {task} has no camera of that name; "
                f"its cameras are {choices}, or -1 for the free camera"
            )
        return camera_id
    if not -1 <= camera < model.ncam:
        raise CameraError(
            f"collect.camera = {camera}: task {task} has {model.ncam} camera(s): {choices}; "
            "use one of them or -1 for the free camera"
        )
    return int(camera)
