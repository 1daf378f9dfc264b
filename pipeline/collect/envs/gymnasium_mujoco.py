"""gymnasium MuJoCo backend: environments by id (HalfCheetah-v5, Hopper-v5, ...).

The unwrapped environment is used: gymnasium's ``TimeLimit`` is replaced by the pipeline's
``episode_steps`` (truncation), and gymnasium's own renderer by :class:`SceneRenderer`.
``terminated`` (e.g. an unhealthy Hopper) is a true terminal. Camera ``-1`` is gymnasium's
default free camera (its ``default_camera_config``); camera ``0`` of a model without cameras
falls back to it.
"""

from __future__ import annotations

import mujoco
import numpy as np

from pipeline.collect.envs.base import PixelEnv

SUITE = "gymnasium"


def task_names() -> list[str]:
    """Registered gymnasium ids whose environment runs on the ``mujoco`` bindings, sorted."""
    import gymnasium as gym

    names = []
    for env_id, spec in gym.registry.items():
        entry = spec.entry_point if isinstance(spec.entry_point, str) else ""
        if entry.startswith("gymnasium.envs.mujoco.") and "mujoco_py" not in entry:
            names.append(env_id)
    return sorted(names)


class GymnasiumEnv(PixelEnv):
    """A gymnasium MuJoCo environment (see :func:`pipeline.collect.make_env` for the arguments)."""

    suite = SUITE

    def _load(self, task: str, seed: int) -> None:
        import gymnasium as gym

        self._wrapped = gym.make(task, disable_env_checker=True)
        self._env = self._wrapped.unwrapped
        self.model = self._env.model
        self.data = self._env.data
        space = self._env.action_space
        self.action_low = np.asarray(space.low, dtype=np.float32).copy()
        self.action_high = np.asarray(space.high, dtype=np.float32).copy()
        self.physics_timestep = float(self._env.dt)

    def _camera(self, camera: int | str) -> int | str:
        return -1 if camera == 0 and self.model.ncam == 0 else camera

    def _free_camera(self) -> mujoco.MjvCamera:
        """gymnasium's default view: a free camera with the env's ``default_camera_config``."""
        camera = super()._free_camera()
        config = getattr(self._env.mujoco_renderer, "default_cam_config", None) or {}
        for key, value in config.items():
            if isinstance(value, np.ndarray):
                getattr(camera, key)[:] = value
            else:
                setattr(camera, key, value)
        return camera

    def _reset_physics(self, seed: int | None) -> None:
        self._env.reset(seed=seed)

    def _step_physics(self, action: np.ndarray) -> tuple[float, float, bool, bool]:
        _, reward, terminated, truncated, _ = self._env.step(action)
        # gymnasium's mj_step leaves xpos/cam_xpos one substep behind qpos; bring them level.
        mujoco.mj_forward(self.model, self.data)
        return float(reward), 0.0 if terminated else 1.0, bool(terminated), bool(truncated and not terminated)

    def state_observation(self) -> tuple[np.ndarray, list[str]]:
        obs = np.asarray(self._env._get_obs(), dtype=np.float32).reshape(-1)
        skip, n_pos = self._qpos_layout(obs)
        n_vel = min(self.model.nv, obs.size - n_pos)
        kinds = ["position"] * n_pos + ["velocity"] * n_vel + ["other"] * (obs.size - n_pos - n_vel)
        return obs, kinds

    def _qpos_layout(self, obs: np.ndarray) -> tuple[int, int]:
        """gymnasium's MuJoCo observations are qpos[skip:] (root x/y left out), then qvel, then
        extras: (skip, number of qpos entries) of ``obs``."""
        nq = self.model.nq
        qpos = np.asarray(self.data.qpos, dtype=np.float32)
        skip = next((s for s in range(nq + 1) if np.allclose(obs[: nq - s], qpos[s:])), nq)
        return skip, nq - skip

    def _observation_qpos(self) -> list[int | None]:
        obs = np.asarray(self._env._get_obs(), dtype=np.float32).reshape(-1)
        skip, n_pos = self._qpos_layout(obs)
        return [skip + i for i in range(n_pos)] + [None] * (obs.size - n_pos)

    def _close_backend(self) -> None:
        self._wrapped.close()
