"""dm_control suite backend: tasks named ``domain-task`` (cheetah-run, ball_in_cup-catch, ...).

The suite's own time limit is disabled (``time_limit=inf``): the pipeline's ``episode_steps``
sets the limit, counted in agent steps, and reports it as truncation. Each ``reset(seed)``
reseeds the task's ``RandomState``, so an episode depends on its seed only (not on the
episodes run before it in the same process).
"""

from __future__ import annotations

import logging

import numpy as np

from pipeline.collect.envs.base import PixelEnv

SUITE = "dm_control"


def task_names() -> list[str]:
    """Every suite task as ``domain-task``, sorted."""
    from dm_control import suite

    return sorted(f"{domain}-{task}" for domain, task in suite.ALL_TASKS)


class DmControlEnv(PixelEnv):
    """A dm_control suite task (see :func:`pipeline.collect.make_env` for the arguments)."""

    suite = SUITE

    def _load(self, task: str, seed: int) -> None:
        from dm_control import suite

        # dm_control's XML compiler warns through absl about deprecated attributes at every load.
        logging.getLogger("absl").setLevel(logging.ERROR)
        domain, _, task_name = task.partition("-")
        self._env = suite.load(domain, task_name, task_kwargs={"random": seed, "time_limit": float("inf")})
        physics = self._env.physics
        self.model = physics.model.ptr
        self.data = physics.data.ptr
        spec = self._env.action_spec()
        self.action_low = np.asarray(np.broadcast_to(spec.minimum, spec.shape), dtype=np.float32).copy()
        self.action_high = np.asarray(np.broadcast_to(spec.maximum, spec.shape), dtype=np.float32).copy()
        self.physics_timestep = float(self._env.control_timestep())

    def _reset_physics(self, seed: int | None) -> None:
        if seed is not None:
            # dm_control tasks draw every random choice from task.random (a RandomState).
            self._env.task._random = np.random.RandomState(seed)
        self._env.reset()

    def _step_physics(self, action: np.ndarray) -> tuple[float, float, bool, bool]:
        # dm_control's (legacy) physics step leaves positions consistent with qpos.
        timestep = self._env.step(action)
        discount = 1.0 if timestep.discount is None else float(timestep.discount)
        terminated = timestep.last() and discount == 0.0
        ended = timestep.last() and not terminated
        return float(timestep.reward or 0.0), discount, terminated, ended

    def state_observation(self) -> tuple[np.ndarray, list[str]]:
        parts, kinds = [], []
        for key, value in self._env.task.get_observation(self._env.physics).items():
            flat = np.asarray(value, dtype=np.float32).reshape(-1)
            parts.append(flat)
            kinds += [_observation_kind(key)] * flat.size
        return np.concatenate(parts), kinds

    def _observation_qpos(self) -> list[int | None]:
        # The suite's observations are computed by each task's get_observation; which entries
        # copy qpos is found by giving the hinges of a copy of the physics distinctive angles
        # (twice, so no value can match by chance) and looking for them in its observation.
        import mujoco

        model = self.model
        hinges = [
            int(model.jnt_qposadr[j]) for j in range(model.njnt) if model.jnt_type[j] == mujoco.mjtJoint.mjJNT_HINGE
        ]
        matches = None
        for offset in (2.0, 5.0):
            physics = self._env.physics.copy(share_model=True)
            angles = {adr: offset + 0.1234567 * (k + 1) for k, adr in enumerate(hinges)}
            for adr, angle in angles.items():
                physics.data.qpos[adr] = angle
            physics.forward()
            obs = np.concatenate(
                [np.asarray(v, np.float64).reshape(-1) for v in self._env.task.get_observation(physics).values()]
            )
            found = [next((adr for adr, angle in angles.items() if abs(x - angle) < 1e-6), None) for x in obs]
            matches = found if matches is None else [a if a == b else None for a, b in zip(matches, found, strict=True)]
        return matches or []

    def _close_backend(self) -> None:
        self._env.close()


def _observation_kind(key: str) -> str:
    """'velocity' for the suite's velocity entries, 'other' for touch/force sensors, else 'position'."""
    if "velocity" in key:
        return "velocity"
    if key in ("touch", "force", "torque"):
        return "other"
    return "position"
