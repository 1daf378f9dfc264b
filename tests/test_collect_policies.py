"""Behaviour policies of the collect stage: random, noisy (OU) and a finetune actor checkpoint."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from policy_fixtures import TinyActor

from models.checkpoint import save_module
from pipeline.collect import collect_task
from pipeline.collect.policies import NoisyPolicy, RandomPolicy, make_policy
from pipeline.config.collect import CollectParams, PolicyParams
from pipeline.sim.episodes import load_episode

LOW = np.array([-2.0, 0.0, -1.0], np.float32)
HIGH = np.array([2.0, 1.0, 3.0], np.float32)


def run_policy(policy, steps: int, seed: int = 0) -> np.ndarray:
    policy.reset(np.random.default_rng(seed), None)
    return np.stack([policy.act(None) for _ in range(steps)])


def test_random_policy_fills_the_box() -> None:
    actions = run_policy(RandomPolicy(PolicyParams(kind="random"), LOW, HIGH), 4000)
    assert actions.dtype == np.float32 and actions.shape == (4000, 3)
    assert (actions >= LOW).all() and (actions <= HIGH).all()
    np.testing.assert_allclose(actions.mean(0), (LOW + HIGH) / 2, atol=0.1)
    np.testing.assert_allclose(actions.min(0), LOW, atol=0.02)
    np.testing.assert_allclose(actions.max(0), HIGH, atol=0.02)


def test_noisy_policy_is_an_ou_process_with_the_asked_std_and_correlation() -> None:
    params = PolicyParams(kind="noisy", noise_scale=0.2, noise_theta=0.1)
    actions = run_policy(NoisyPolicy(params, LOW, HIGH), 40000)
    unit = 2.0 * (actions - LOW) / (HIGH - LOW) - 1.0  # back to [-1, 1]
    np.testing.assert_allclose(unit.std(0), 0.2, rtol=0.15)
    np.testing.assert_allclose(unit.mean(0), 0.0, atol=0.05)
    lag1 = np.mean([np.corrcoef(unit[:-1, i], unit[1:, i])[0, 1] for i in range(3)])
    assert lag1 == pytest.approx(0.9, abs=0.03)
    white = run_policy(NoisyPolicy(PolicyParams(kind="noisy", noise_scale=0.2, noise_theta=1.0), LOW, HIGH), 20000)
    white_unit = 2.0 * (white - LOW) / (HIGH - LOW) - 1.0
    assert abs(np.corrcoef(white_unit[:-1, 0], white_unit[1:, 0])[0, 1]) < 0.05
    # Same seed, same actions.
    np.testing.assert_array_equal(actions[:50], run_policy(NoisyPolicy(params, LOW, HIGH), 50))


def save_actor(
    folder: Path, *, action_dim: int = 1, frame_stack: int = 2, image_size: int = 32, task: str = "cartpole-swingup"
) -> TinyActor:
    torch.manual_seed(0)
    actor = TinyActor(action_dim=action_dim, frame_stack=frame_stack)
    meta = {
        "task": task,
        "action_dim": action_dim,
        "frame_stack": frame_stack,
        "image_size": image_size,
        "action_repeat": 2,
    }
    save_module(folder, actor, {"action_dim": action_dim, "frame_stack": frame_stack}, meta)
    return actor


def test_checkpoint_policy_drives_the_env_from_stacked_frames(tmp_path: Path) -> None:
    actor = save_actor(tmp_path / "actor", frame_stack=2)
    params = CollectParams(
        episodes_per_task=1,
        episode_steps=8,
        action_repeat={"cartpole-swingup": 2},
        image_size=32,
        depth=False,
        segmentation=False,
        workers=1,
        preview_episodes=0,
        policy=PolicyParams(kind="checkpoint", checkpoint=str(tmp_path / "actor")),
    )
    (meta,) = collect_task("cartpole-swingup", params, tmp_path / "eps")
    episode = load_episode(tmp_path / "eps" / "episode_000000.npz")
    assert meta.policy == "checkpoint" and meta.extra["policy"]["frame_stack"] == 2
    assert len(meta.extra["policy"]["weights_sha256"]) == 64
    # Recompute every action from the stored frames: stack (oldest first, first frame repeated at
    # the start), act, rescale from [-1, 1] to the box [-1, 1] of cartpole.
    frames = episode.frames
    expected = []
    for t in range(episode.length):
        stack = [frames[max(t - 1, 0)], frames[t]]
        obs = torch.from_numpy(np.concatenate([f.transpose(2, 0, 1) for f in stack])[None].copy())
        with torch.no_grad():
            expected.append(actor.act(obs).numpy()[0])
    np.testing.assert_allclose(episode.actions, np.array(expected, np.float32), atol=1e-6)
    assert np.ptp(episode.actions) > 0, "a constant action would not show the frame stack at work"


def test_checkpoint_actions_are_rescaled_to_the_box(tmp_path: Path) -> None:
    save_actor(tmp_path / "actor", action_dim=3, frame_stack=1)
    policy = make_policy(
        PolicyParams(kind="checkpoint", checkpoint=str(tmp_path / "actor")),
        LOW,
        HIGH,
        task="cartpole-swingup",
        image_size=32,
        action_repeat=2,
    )

    class Frame:
        frame = np.full((32, 32, 3), 200, np.uint8)

    policy.reset(np.random.default_rng(0), Frame())
    action = policy.act(Frame())
    unit = policy.module.act(torch.from_numpy(Frame.frame.transpose(2, 0, 1)[None].copy())).detach().numpy()[0]
    np.testing.assert_allclose(action, LOW + (unit + 1) / 2 * (HIGH - LOW), atol=1e-6)
