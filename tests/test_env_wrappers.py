"""The observation and action conventions: frame stacks (live and from stored frames) and the
[-1, 1] -> action-box mapping, pinned on hand-made frames and a fake env (no simulator)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.collect.envs.base import StepResult
from pipeline.collect.envs.wrappers import (
    ActionScale,
    FrameStack,
    FrameStacker,
    scale_action,
    stack_frames,
    steps_from_starts,
)

H = W = 4


def frame(value: int) -> np.ndarray:
    """(H, W, 3) uint8 whose R, G, B planes are value, value + 1, value + 2."""
    return np.stack([np.full((H, W), value + c, np.uint8) for c in range(3)], axis=-1)


def channel_means(obs: np.ndarray) -> list[int]:
    return [int(plane.mean()) for plane in obs]


class FakeEnv:
    """Frame t of an episode is ``frame(10 * t)``; records the actions it is given."""

    def __init__(self) -> None:
        self.action_low = np.array([-2.0, 0.0], np.float32)
        self.action_high = np.array([2.0, 1.0], np.float32)
        self.t = 0
        self.actions: list[np.ndarray] = []
        self.closed = False
        self.task = "fake"

    def _result(self) -> StepResult:
        z = np.zeros(1)
        return StepResult(frame(10 * self.t), 0.0, 1.0, False, False, z, z, z, z, z, z)

    def reset(self, seed: int | None = None) -> StepResult:
        self.t = 0
        return self._result()

    def step(self, action: np.ndarray) -> StepResult:
        self.actions.append(np.asarray(action))
        self.t += 1
        return self._result()

    def close(self) -> None:
        self.closed = True


def test_scale_action_maps_the_endpoints_and_centre_exactly_and_clips() -> None:
    low = np.array([-2.0, 0.0, -1.0], np.float32)
    high = np.array([2.0, 1.0, 3.0], np.float32)
    np.testing.assert_array_equal(scale_action(-np.ones(3), low, high), low)
    np.testing.assert_array_equal(scale_action(np.ones(3), low, high), high)
    np.testing.assert_array_equal(scale_action(np.zeros(3), low, high), (low + high) / 2)
    np.testing.assert_array_equal(scale_action(np.array([-5.0, 7.0, 0.5]), low, high), [-2.0, 1.0, 2.0])
    out = scale_action(np.array([[0.5, -0.5, 0.0]], np.float32), low, high)
    assert out.dtype == np.float32 and out.shape == (1, 3)
    np.testing.assert_array_equal(out, [[1.0, 0.25, 1.0]])


def test_frame_stacker_repeats_the_first_frame_then_shifts_oldest_first_rgb_per_frame() -> None:
    stacker = FrameStacker(3)
    obs = stacker.reset(frame(0))
    assert obs.shape == (9, H, W) and obs.dtype == np.uint8
    assert channel_means(obs) == [0, 1, 2] * 3
    assert channel_means(stacker.push(frame(10))) == [0, 1, 2, 0, 1, 2, 10, 11, 12]
    assert channel_means(stacker.push(frame(20))) == [0, 1, 2, 10, 11, 12, 20, 21, 22]
    assert channel_means(stacker.push(frame(30))) == [10, 11, 12, 20, 21, 22, 30, 31, 32]
    # a new episode forgets the old one
    assert channel_means(stacker.reset(frame(50))) == [50, 51, 52] * 3
    with pytest.raises(RuntimeError, match="before reset"):
        FrameStacker(2).push(frame(0))


def test_steps_from_starts_counts_from_each_episode_start() -> None:
    starts = np.array([True, False, False, True, False, True, True, False])
    np.testing.assert_array_equal(steps_from_starts(starts), [0, 1, 2, 0, 1, 0, 0, 1])
    np.testing.assert_array_equal(steps_from_starts(np.array([False, False, True])), [0, 1, 0])


@pytest.mark.parametrize("channels_last", [True, False])
def test_stack_frames_pads_with_the_episode_first_frame_in_either_layout(channels_last: bool) -> None:
    # two episodes: frames 0..3 (values 0, 10, 20, 30) and 4..6 (values 40, 50, 60)
    hwc = np.stack([frame(10 * i) for i in range(7)])
    frames = hwc if channels_last else hwc.transpose(0, 3, 1, 2).copy()
    steps_all = steps_from_starts(np.array([True, False, False, False, True, False, False]))
    indices = np.arange(7)
    stacks = stack_frames(frames, indices, 3, steps_all[indices])
    assert stacks.shape == (7, 9, H, W) and stacks.dtype == np.uint8
    firsts = [[int(s[3 * j].mean()) for j in range(3)] for s in stacks]  # R plane of each stacked frame
    assert firsts == [[0, 0, 0], [0, 0, 10], [0, 10, 20], [10, 20, 30], [40, 40, 40], [40, 40, 50], [40, 50, 60]]
    assert channel_means(stacks[2]) == [0, 1, 2, 10, 11, 12, 20, 21, 22]


def test_stack_frames_matches_the_live_stacker_and_reads_a_ring() -> None:
    values = [0, 10, 20, 30, 40]
    stacker = FrameStacker(3)
    live = [stacker.reset(frame(values[0]))] + [stacker.push(frame(v)) for v in values[1:]]
    # a ring of 4 slots holding logical frames 1..4 (slot = logical % 4); frame 0 was overwritten
    ring = np.zeros((4, 3, H, W), np.uint8)
    for logical, v in enumerate(values):
        ring[logical % 4] = frame(v).transpose(2, 0, 1)
    logical = np.array([3, 4])
    stacks = stack_frames(ring, logical, 3, logical.copy(), ring=4)
    np.testing.assert_array_equal(stacks, np.stack([live[3], live[4]]))


def test_stack_frames_rejects_an_ambiguous_layout() -> None:
    with pytest.raises(ValueError, match="channels_last"):
        stack_frames(np.zeros((2, 3, 5, 3), np.uint8), np.array([1]), 2, np.array([1]))


def test_wrappers_stack_observations_and_scale_actions_and_delegate() -> None:
    inner = FakeEnv()
    env = ActionScale(FrameStack(inner, 2))
    assert env.unwrapped is inner and env.task == "fake" and env.frame_stack == 2
    np.testing.assert_array_equal(env.action_low, [-1.0, -1.0])
    np.testing.assert_array_equal(env.action_high, [1.0, 1.0])
    first = env.reset(seed=3)
    assert channel_means(first.obs) == [0, 1, 2, 0, 1, 2]
    assert first.frame.shape == (H, W, 3)  # the raw frame is kept
    result = env.step(np.array([1.0, -1.0]))
    assert channel_means(result.obs) == [0, 1, 2, 10, 11, 12]
    result = env.step(np.array([0.0, 0.5]))
    assert channel_means(result.obs) == [10, 11, 12, 20, 21, 22]
    np.testing.assert_array_equal(inner.actions[0], [2.0, 0.0])
    np.testing.assert_array_equal(inner.actions[1], [0.0, 0.75])
    assert inner.actions[0].dtype == np.float32
    with env:
        pass
    assert inner.closed
