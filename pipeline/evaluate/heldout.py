"""Held-out episodes for the probe: pixels and the task's observation vector at every frame.

Collected by the evaluate stage itself from its own seeds (:mod:`pipeline.evaluate.seeding`),
so pretraining never saw them. The policy is Ornstein-Uhlenbeck noise in [-1, 1] mapped to the
action box, which spreads the states (a still pole or a fallen cheetah would teach a probe
little).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pipeline.collect.envs.wrappers import ActionScale
from pipeline.evaluate.seeding import derive_seed


@dataclass(frozen=True)
class HeldOutTask:
    """The held-out episodes of one task.

    Attributes:
        task: task name.
        frames: per episode, (T+1, H, W, 3) uint8 RGB frames.
        observations: per episode, (T+1, D) float32 probe targets, aligned with ``frames``: the
            task's observation vector as a frame can show it (``PixelEnv.probe_observation``:
            unbounded hinge angles as cos/sin).
        kinds: (D,) ``"position"`` / ``"velocity"`` / ``"other"`` per observation dimension.
        action_repeat: simulator steps per agent step used.
    """

    task: str
    frames: list[np.ndarray]
    observations: list[np.ndarray]
    kinds: list[str]
    action_repeat: int

    @property
    def episodes(self) -> int:
        return len(self.frames)


def collect_heldout(
    task: str,
    *,
    episodes: int,
    frames_per_episode: int,
    action_repeat: int,
    image_size: int,
    camera: int | str,
    render_mode: str,
    noise: float,
    seed: int,
) -> HeldOutTask:
    """Record ``episodes`` episodes of ``task`` with an OU-noise policy; deterministic for the arguments."""
    from pipeline.collect import make_env

    steps = max(1, frames_per_episode // action_repeat)
    all_frames, all_obs = [], []
    kinds: list[str] = []
    env = ActionScale(
        make_env(
            task,
            image_size=image_size,
            camera=camera,
            action_repeat=action_repeat,
            render_mode=render_mode,
            episode_steps=steps,
            seed=derive_seed(seed, "heldout", task),
        )
    )
    try:
        for i in range(episodes):
            rng = np.random.default_rng(derive_seed(seed, "heldout", task, i + 1))
            result = env.reset(seed=derive_seed(seed, "heldout", task, i + 1))
            obs, kinds = env.probe_observation()
            frames, observations = [result.frame], [obs]
            action = np.zeros(env.action_dim, np.float32)
            while not result.done:
                action = np.clip(
                    action - 0.15 * action + noise * rng.standard_normal(env.action_dim), -1.0, 1.0
                ).astype(np.float32)
                result = env.step(action)
                frames.append(result.frame)
                observations.append(env.probe_observation()[0])
            all_frames.append(np.stack(frames))
            all_obs.append(np.stack(observations).astype(np.float32))
    finally:
        env.close()
    return HeldOutTask(task, all_frames, all_obs, list(kinds), action_repeat)
