"""Observation and action conventions, in one place: DrQ-v2-style wrappers over :class:`PixelEnv`.

Every part of the pipeline that feeds frames to an agent or maps an agent's action to an
environment uses this module (collection, online training, evaluation, the checkpoint policy,
the replay buffer and the pretraining dataset reader):

* **Observation**: a frame stack, (3k, H, W) uint8, channels first, the oldest frame first and
  channels R, G, B within each frame. At an episode's start, where fewer than k frames exist,
  the episode's first frame is repeated (a reset fills the whole stack with the first frame).
* **Action**: the agent acts in [-1, 1] per dimension; :func:`scale_action` maps that box
  affinely onto the environment's ``[action_low, action_high]`` (-1 -> low, +1 -> high).

Pieces:

* :func:`scale_action`: the [-1, 1] -> action-box mapping (the single definition).
* :class:`FrameStacker`: the running stack for a single stream of frames (reset / push / obs).
* :func:`stack_frames`: the same stacks built after the fact from a stored frame array and each
  frame's step within its episode (replay buffers, datasets read from shards).
* :class:`FrameStack`, :class:`ActionScale`: wrappers; the wrapped env's :class:`StepResult`
  gains ``obs`` (the stack) / takes actions in [-1, 1]. Everything else is delegated.
"""

from __future__ import annotations

from collections import deque
from dataclasses import replace
from typing import Any

import numpy as np

from pipeline.collect.envs.base import PixelEnv, StepResult

__all__ = ["ActionScale", "FrameStack", "FrameStacker", "Wrapper", "scale_action", "stack_frames", "steps_from_starts"]


def scale_action(unit: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """Map agent actions in [-1, 1] onto the action box ``[low, high]``.

    ``unit`` is first clipped to [-1, 1]; the affine map ``low + (unit + 1) / 2 * (high - low)``
    is computed in float64 and the result, cast to float32, is clipped to the box, so -1 gives
    exactly ``low`` and +1 exactly ``high``.

    Args:
        unit: (..., A) actions in [-1, 1] (any float dtype; values outside are clipped).
        low, high: (A,) bounds of the environment's action box (float32 in :class:`PixelEnv`).

    Returns:
        (..., A) float32 actions inside ``[low, high]``.
    """
    low = np.asarray(low, dtype=np.float32)
    high = np.asarray(high, dtype=np.float32)
    unit = np.clip(np.asarray(unit, dtype=np.float64), -1.0, 1.0)
    action = low + (unit + 1.0) * 0.5 * (high.astype(np.float64) - low)
    return np.clip(action.astype(np.float32), low, high)


def _chw(frame: np.ndarray) -> np.ndarray:
    """(H, W, 3) RGB -> (3, H, W), contiguous."""
    frame = np.asarray(frame)
    if frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected an (H, W, 3) RGB frame, got shape {frame.shape}")
    return np.ascontiguousarray(frame.transpose(2, 0, 1))


class FrameStacker:
    """The last ``k`` frames of one stream as a (3k, H, W) uint8 observation, oldest first.

    ``reset(first)`` fills the stack with ``k`` copies of the episode's first frame; ``push(frame)``
    drops the oldest frame. Frames come in as (H, W, 3) uint8 RGB (as :class:`StepResult.frame`).
    """

    def __init__(self, k: int) -> None:
        if k < 1:
            raise ValueError(f"frame stack k must be >= 1, got {k}")
        self.k = k
        self._frames: deque[np.ndarray] = deque(maxlen=k)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        """Start an episode at ``frame``; return the stack (k copies of it)."""
        chw = _chw(frame)
        self._frames.clear()
        self._frames.extend([chw] * self.k)
        return self.obs()

    def push(self, frame: np.ndarray) -> np.ndarray:
        """Append the next frame of the episode; return the stack."""
        if not self._frames:
            raise RuntimeError("FrameStacker.push before reset: call reset(first_frame) at an episode's start")
        self._frames.append(_chw(frame))
        return self.obs()

    def obs(self) -> np.ndarray:
        """(3k, H, W) uint8, oldest frame first."""
        if not self._frames:
            raise RuntimeError("FrameStacker.obs before reset")
        return np.concatenate(list(self._frames), axis=0)


def steps_from_starts(starts: np.ndarray) -> np.ndarray:
    """Each frame's step within its episode, from episode-start flags.

    Args:
        starts: (T,) bool, True where a frame is the first of an episode. Frames before the first
            True are treated as continuing an episode that began at frame 0.

    Returns:
        (T,) int64: 0 at each start, counting up until the next start.
    """
    starts = np.asarray(starts, dtype=bool)
    if starts.ndim != 1:
        raise ValueError(f"starts must be 1-D, got shape {starts.shape}")
    positions = np.arange(len(starts), dtype=np.int64)
    last_start = np.maximum.accumulate(np.where(starts, positions, 0))
    return positions - last_start


def stack_frames(
    frames: np.ndarray,
    indices: np.ndarray,
    k: int,
    steps: np.ndarray,
    *,
    ring: int | None = None,
    channels_last: bool | None = None,
) -> np.ndarray:
    """Frame stacks ending at ``indices`` of a stored frame array, oldest frame first.

    The stack for frame ``i`` holds frames ``i - k + 1 .. i``; where its episode has fewer previous
    frames (``steps`` < k - 1) the episode's first frame (index ``i - steps``) is repeated, exactly as
    :class:`FrameStacker` does after a reset.

    Args:
        frames: (N, 3, H, W) or (N, H, W, 3) uint8 frames, an episode's frames at consecutive
            indices (modulo ``ring``).
        indices: (B,) int indices of the newest frame of each stack.
        k: frames per stack.
        steps: (B,) int, each indexed frame's step within its episode (0: the episode's first
            frame; see :func:`steps_from_starts`). Values >= k - 1 all mean "a full history".
        ring: when set, frames live in a ring buffer of this many slots: index ``j`` is stored at
            ``j % ring`` (``indices`` may then be logical, ever-increasing indices).
        channels_last: layout of ``frames``; None infers it (channels first when ``shape[1] == 3``,
            channels last when ``shape[-1] == 3``; ambiguous shapes need it set).

    Returns:
        (B, 3k, H, W) uint8 stacks (channels R, G, B per frame).
    """
    frames = np.asarray(frames)
    if frames.ndim != 4:
        raise ValueError(f"frames must be (N, 3, H, W) or (N, H, W, 3), got shape {frames.shape}")
    if channels_last is None:
        first, last = frames.shape[1] == 3, frames.shape[-1] == 3
        if first == last:
            raise ValueError(f"frames of shape {frames.shape}: cannot tell the channel axis; pass channels_last")
        channels_last = last
    if k < 1:
        raise ValueError(f"frame stack k must be >= 1, got {k}")
    indices = np.asarray(indices, dtype=np.int64)
    steps = np.asarray(steps, dtype=np.int64)
    if indices.shape != steps.shape or indices.ndim != 1:
        raise ValueError(f"indices {indices.shape} and steps {steps.shape} must be the same 1-D shape")
    back = np.arange(k - 1, -1, -1)  # k-1, ..., 0 frames back
    idx = indices[:, None] - np.minimum(back[None, :], np.maximum(steps, 0)[:, None])
    if ring is not None:
        idx = idx % ring
    stacked = frames[idx]  # (B, k, 3, H, W) or (B, k, H, W, 3)
    if channels_last:
        stacked = stacked.transpose(0, 1, 4, 2, 3)
    b, _, c, h, w = stacked.shape
    return np.ascontiguousarray(stacked).reshape(b, k * c, h, w)


class Wrapper:
    """Base of the wrappers: delegates every attribute it does not define to the wrapped env."""

    def __init__(self, env: PixelEnv | Wrapper) -> None:
        self.env = env

    def __getattr__(self, name: str) -> Any:
        if name == "env":  # not set yet (during unpickling): do not recurse
            raise AttributeError(name)
        return getattr(self.env, name)

    @property
    def unwrapped(self) -> PixelEnv:
        """The innermost :class:`PixelEnv`."""
        env = self.env
        while isinstance(env, Wrapper):
            env = env.env
        return env

    def reset(self, seed: int | None = None) -> StepResult:
        return self.env.reset(seed=seed)

    def step(self, action: np.ndarray) -> StepResult:
        return self.env.step(action)

    def close(self) -> None:
        self.env.close()

    def __enter__(self) -> Wrapper:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FrameStack(Wrapper):
    """Adds ``obs``, the (3k, H, W) uint8 stack of the last ``k`` frames, to every :class:`StepResult`.

    ``reset`` fills the stack with the first frame; ``frame`` and everything else are unchanged.
    """

    def __init__(self, env: PixelEnv | Wrapper, k: int) -> None:
        super().__init__(env)
        self.frame_stack = k
        self._stacker = FrameStacker(k)

    def reset(self, seed: int | None = None) -> StepResult:
        result = self.env.reset(seed=seed)
        return replace(result, obs=self._stacker.reset(result.frame))

    def step(self, action: np.ndarray) -> StepResult:
        result = self.env.step(action)
        return replace(result, obs=self._stacker.push(result.frame))


class ActionScale(Wrapper):
    """Takes actions in [-1, 1] (``action_low`` = -1, ``action_high`` = 1) and maps them onto the
    wrapped env's action box with :func:`scale_action`."""

    def __init__(self, env: PixelEnv | Wrapper) -> None:
        super().__init__(env)
        self.env_action_low = np.asarray(env.action_low, dtype=np.float32)
        self.env_action_high = np.asarray(env.action_high, dtype=np.float32)
        self.action_low = np.full_like(self.env_action_low, -1.0)
        self.action_high = np.full_like(self.env_action_high, 1.0)

    def step(self, action: np.ndarray) -> StepResult:
        return self.env.step(scale_action(action, self.env_action_low, self.env_action_high))
