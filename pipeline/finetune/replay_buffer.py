"""Replay buffer for pixel RL that stores every frame once, as uint8.

Layout: a ring of ``capacity`` slots, one per frame. An episode of T agent steps fills T + 1
consecutive slots: its first frame (from ``reset``) and one per step. Slot i also holds what
led *into* its frame: the action, the reward and whether that transition terminated, plus the
frame's step index within its episode (0 for a reset frame). Frame stacks are never stored:
:meth:`ReplayBuffer.sample` builds them from the slots, repeating an episode's first frame
where the stack would reach into the previous episode (as a frame-stack wrapper does at reset).

Memory: ``capacity * (3*H*W + 4*A + 13)`` bytes; a buffer of stacked observations would hold
each frame ``2 * frame_stack`` times (in obs and next_obs).

N-step returns are cut short at the end of an episode: the sample then carries the discount
``gamma ** m`` of the m <= n steps it covers and ``terminated`` of its last transition. A
time-limit truncation is not a termination: its last frame is stored and bootstrapped from.
"""

from __future__ import annotations

import json
import logging

import numpy as np

from pipeline.collect.envs.wrappers import stack_frames

log = logging.getLogger(__name__)

_PER_SLOT_SCALARS = 4 + 1 + 8  # reward float32, terminated bool, step int64
_INITIAL_SLOTS = 1024
_ARRAYS = ("frames", "actions", "rewards", "terminated", "steps")


class ReplayBuffer:
    """Ring buffer of frames with n-step, stack-at-sampling-time sampling.

    Args:
        capacity: frames (slots) kept; the oldest are overwritten.
        frame_shape: (3, H, W) of one RGB frame, channels first.
        action_dim: A.
        frame_stack: k frames per observation (oldest first).
        n_step: steps of the n-step return.
        gamma: discount per agent step.
        seed: seeds the sampling generator (its state is part of :meth:`state_dict`).
    """

    def __init__(
        self,
        capacity: int,
        frame_shape: tuple[int, int, int],
        action_dim: int,
        frame_stack: int,
        n_step: int = 1,
        gamma: float = 0.99,
        seed: int = 0,
    ) -> None:
        if capacity < frame_stack + n_step + 1:
            raise ValueError(f"capacity={capacity} is too small for frame_stack={frame_stack} and n_step={n_step}")
        self.capacity = capacity
        self.frame_shape = tuple(frame_shape)
        self.action_dim = action_dim
        self.frame_stack = frame_stack
        self.n_step = n_step
        self.gamma = gamma
        self.rng = np.random.default_rng(seed)
        # Arrays grow (doubling) up to ``capacity`` while the buffer fills, so a short run only
        # takes the memory it uses; slot = logical index % capacity is unaffected.
        size = min(capacity, _INITIAL_SLOTS)
        self.frames = np.zeros((size, *self.frame_shape), dtype=np.uint8)
        self.actions = np.zeros((size, action_dim), dtype=np.float32)
        self.rewards = np.zeros(size, dtype=np.float32)
        self.terminated = np.zeros(size, dtype=bool)
        self.steps = np.full(size, -1, dtype=np.int64)
        self.total = 0  # frames ever added; logical index L lives in slot L % capacity
        self._first = 0  # oldest logical index ever held (> 0 after loading a partial state)
        self._in_episode = False
        self._step = 0  # step index of the newest frame within its episode

    @staticmethod
    def estimate_bytes(capacity: int, frame_shape: tuple[int, int, int], action_dim: int) -> int:
        """Bytes the buffer's arrays take when full."""
        return capacity * (int(np.prod(frame_shape)) + 4 * action_dim + _PER_SLOT_SCALARS)

    @property
    def nbytes(self) -> int:
        return (
            self.frames.nbytes + self.actions.nbytes + self.rewards.nbytes + self.terminated.nbytes + self.steps.nbytes
        )

    def __len__(self) -> int:
        """Frames currently held."""
        return self.total - self.oldest

    @property
    def oldest(self) -> int:
        """Logical index of the oldest frame held."""
        return max(self._first, self.total - self.capacity)

    # --- writing -----------------------------------------------------------------------------
    def _put(self, frame: np.ndarray, step: int, action: np.ndarray | None, reward: float, terminated: bool) -> None:
        frame = np.asarray(frame)
        if frame.shape[-1] == 3 and frame.shape != self.frame_shape:
            frame = frame.transpose(2, 0, 1)  # (H, W, 3) -> (3, H, W)
        if frame.shape != self.frame_shape or frame.dtype != np.uint8:
            raise ValueError(
                f"frame has shape {frame.shape} dtype {frame.dtype}; "
                f"expected uint8 {self.frame_shape} or its (H, W, 3) transpose"
            )
        slot = self.total % self.capacity
        if slot >= len(self.steps):
            self._grow(min(self.capacity, 2 * len(self.steps)))
        self.frames[slot] = frame
        self.steps[slot] = step
        self.actions[slot] = 0.0 if action is None else action
        self.rewards[slot] = reward
        self.terminated[slot] = terminated
        self.total += 1

    def _grow(self, size: int) -> None:
        for name in _ARRAYS:
            old = getattr(self, name)
            new = np.full((size, *old.shape[1:]), -1 if name == "steps" else 0, dtype=old.dtype)
            new[: len(old)] = old
            setattr(self, name, new)

    def start_episode(self, frame: np.ndarray) -> None:
        """Store the first frame of an episode (the observation ``reset`` returned)."""
        self._put(frame, 0, None, 0.0, False)
        self._step = 0
        self._in_episode = True

    def add_step(self, action: np.ndarray, reward: float, terminated: bool, next_frame: np.ndarray) -> None:
        """Store one agent step: the action taken, its reward, whether it truly terminated, the new frame.

        A time-limit truncation is just the last step of an episode (``terminated=False``); the
        next :meth:`start_episode` begins a new one.
        """
        if not self._in_episode:
            raise RuntimeError("add_step before start_episode (or after a terminating step)")
        action = np.asarray(action, dtype=np.float32)
        if action.shape != (self.action_dim,):
            raise ValueError(f"action has shape {action.shape}; expected ({self.action_dim},)")
        self._step += 1
        self._put(next_frame, self._step, action, float(reward), bool(terminated))
        if terminated:
            self._in_episode = False

    # --- sampling ----------------------------------------------------------------------------
    def _slot_step(self, logical: np.ndarray) -> np.ndarray:
        """Step index within its episode of each logical frame; -2 where the frame is not held."""
        held = (logical >= self.oldest) & (logical < self.total)
        out = np.full(logical.shape, -2, dtype=np.int64)
        out[held] = self.steps[logical[held] % self.capacity]
        return out

    def _valid(self, logical: np.ndarray) -> np.ndarray:
        """Logical indices whose frame starts a transition with its whole stack still held."""
        oldest = self.oldest
        step = self._slot_step(logical)
        has_next = (step >= 0) & (self._slot_step(logical + 1) == step + 1)
        history_held = logical - np.minimum(step, self.frame_stack - 1) >= oldest
        return has_next & history_held

    def num_transitions(self) -> int:
        """Transitions that can be sampled now (O(capacity); for logs and tests)."""
        return int(self._valid(np.arange(self.oldest, self.total)).sum())

    def stack(self, logical: np.ndarray) -> np.ndarray:
        """(B,) logical frame indices -> (B, 3k, H, W) uint8 stacks ending at those frames, oldest first.

        Within the first k - 1 steps of an episode the episode's first frame is repeated.
        """
        return stack_frames(
            self.frames, logical, self.frame_stack, self._slot_step(logical), ring=self.capacity, channels_last=False
        )

    def sample_indices(self, batch_size: int) -> np.ndarray:
        """Uniformly sampled logical indices of valid transition starts (rejection sampling)."""
        oldest = self.oldest
        if self.total - oldest < 2:
            raise RuntimeError("the replay buffer holds no transition yet")
        chosen: list[np.ndarray] = []
        have = 0
        for _ in range(1000):
            candidates = self.rng.integers(oldest, self.total - 1, size=2 * (batch_size - have) + 8)
            good = candidates[self._valid(candidates)]
            chosen.append(good[: batch_size - have])
            have += len(chosen[-1])
            if have == batch_size:
                return np.concatenate(chosen)
        raise RuntimeError("the replay buffer holds no valid transition (only episode ends or partial stacks)")

    def sample(self, batch_size: int) -> dict[str, np.ndarray]:
        """A batch of n-step transitions.

        Returns:
            obs, next_obs: (B, 3k, H, W) uint8 stacks, oldest frame first.
            action: (B, A) float32, the action taken at obs.
            reward: (B,) float32, sum_{i<m} gamma^i r_{t+1+i} over the m <= n steps covered.
            discount: (B,) float32, gamma^m (the bootstrap factor when not terminated).
            terminated: (B,) float32, 1 where the m-th step truly terminated (no bootstrap).
        """
        start = self.sample_indices(batch_size)
        step = self._slot_step(start)
        reward = np.zeros(batch_size, dtype=np.float32)
        discount = np.ones(batch_size, dtype=np.float32)
        last = start.copy()
        running = np.ones(batch_size, dtype=bool)  # still inside the episode
        for i in range(1, self.n_step + 1):
            nxt = start + i
            running &= self._slot_step(nxt) == step + i
            slot = nxt[running] % self.capacity
            reward[running] += discount[running] * self.rewards[slot]
            discount[running] *= self.gamma
            last[running] = nxt[running]
        return {
            "obs": self.stack(start),
            "action": self.actions[(start + 1) % self.capacity].copy(),
            "reward": reward,
            "discount": discount,
            "terminated": self.terminated[last % self.capacity].astype(np.float32),
            "next_obs": self.stack(last),
        }

    # --- checkpointing -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, np.ndarray]:
        """The held frames in logical order (oldest first) and the counters, as numpy arrays.

        Independent of the capacity: :meth:`load_state_dict` lays them out again, so a run can
        resume into a buffer of another capacity (it keeps the newest frames that fit).
        """
        logical = np.arange(self.oldest, self.total)
        slots = logical % self.capacity
        return {
            "frames": self.frames[slots],
            "actions": self.actions[slots],
            "rewards": self.rewards[slots],
            "terminated": self.terminated[slots],
            "steps": self.steps[slots],
            "total": np.int64(self.total),
            "in_episode": np.bool_(self._in_episode),
            "step": np.int64(self._step),
            "rng": np.frombuffer(json.dumps(self.rng.bit_generator.state).encode(), dtype=np.uint8).copy(),
        }

    def load_state_dict(self, state: dict[str, np.ndarray]) -> None:
        if tuple(state["frames"].shape[1:]) != self.frame_shape or state["actions"].shape[1:] != (self.action_dim,):
            raise ValueError(
                f"replay state holds frames {state['frames'].shape[1:]} and actions {state['actions'].shape[1:]}; "
                f"this buffer takes {self.frame_shape} and ({self.action_dim},)"
            )
        self.total = int(state["total"])
        keep = min(len(state["steps"]), self.capacity)
        self._first = self.total - keep
        logical = np.arange(self.total - keep, self.total)
        slots = logical % self.capacity
        if len(self.steps) < self.capacity:
            self._grow(self.capacity if self.total > self.capacity else max(len(self.steps), self.total))
        self.steps[:] = -1
        for name in _ARRAYS:
            getattr(self, name)[slots] = state[name][len(state["steps"]) - keep :]
        self._in_episode = bool(state["in_episode"])
        self._step = int(state["step"])
        self.rng.bit_generator.state = json.loads(bytes(state["rng"]).decode())
