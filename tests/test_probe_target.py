"""The probe's target: the state observation as a frame can show it (unbounded angles as cos/sin)."""

from __future__ import annotations

import math

import mujoco
import numpy as np
import pytest

from pipeline.collect import make_env
from pipeline.evaluate.heldout import collect_heldout


def test_a_full_turn_of_reachers_shoulder_changes_the_state_but_not_the_probe_target() -> None:
    with make_env("reacher-easy", image_size=16, action_repeat=4, episode_steps=5, seed=0) as env:
        env.reset(seed=3)
        state, _ = env.state_observation()
        target, kinds = env.probe_observation()
        env.data.qpos[0] += 2 * math.pi  # the same picture, one turn further
        mujoco.mj_forward(env.model, env.data)
        turned_state, _ = env.state_observation()
        turned_target, _ = env.probe_observation()
    assert turned_state[0] == pytest.approx(state[0] + 2 * math.pi, abs=1e-5)
    np.testing.assert_allclose(turned_target, target, atol=1e-5)
    # shoulder (unbounded) -> cos, sin; wrist (limited to +-160 deg), to_target and velocities as they were
    assert target.size == state.size + 1
    np.testing.assert_allclose(target[:2], [math.cos(state[0]), math.sin(state[0])], atol=1e-6)
    np.testing.assert_array_equal(target[2:], state[1:])
    assert kinds == ["position"] * 5 + ["velocity"] * 2


@pytest.mark.parametrize("task, wrapped", [("cartpole-swingup", 0), ("cheetah-run", 1), ("HalfCheetah-v5", 1)])
def test_only_unbounded_hinges_copied_from_qpos_are_wrapped(task: str, wrapped: int) -> None:
    """cartpole's pole already comes as cos/sin; both cheetahs give their root pitch as a raw angle."""
    with make_env(task, image_size=16, action_repeat=2, episode_steps=5, seed=0) as env:
        env.reset(seed=1)
        state, _ = env.state_observation()
        target, _ = env.probe_observation()
    assert target.size == state.size + wrapped
    if not wrapped:
        np.testing.assert_array_equal(target, state)


def test_held_out_episodes_carry_the_probe_target() -> None:
    held = collect_heldout(
        "reacher-easy",
        episodes=1,
        frames_per_episode=16,
        action_repeat=4,
        image_size=16,
        camera=0,
        render_mode="fast",
        noise=0.5,
        seed=0,
    )
    assert held.observations[0].shape == (5, 7)  # 4 agent steps + the first frame; 6 dims + 1 for the shoulder
    np.testing.assert_allclose(np.hypot(held.observations[0][:, 0], held.observations[0][:, 1]), 1.0, atol=1e-5)
