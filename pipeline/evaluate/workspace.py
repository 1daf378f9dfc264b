"""SAC on vectors: the ``state`` arm (the task's observation vector) and the ``frozen`` arm
(features of a frozen backbone). One :class:`VectorWorkspace` owns the environments, the agent,
the replay buffer and the observer, DrQ-v2 style: ``train()`` runs the schedule and ``evaluate()``
one evaluation.

The agent is the project's :class:`pipeline.finetune.sac.SAC` with an identity encoder: the
observer turns each environment step into a vector, and the replay buffer stores vectors, so an
update is an MLP update. There is no augmentation: a frozen encoder's features are computed once
per frame while acting, so a random shift of the pixels could never reach the stored features
(DrQ's augmentation regularises an encoder that *learns*; here nothing upstream of the features
learns), and the state arm has no pixels.

Frames are environment frames after action repeat (:mod:`pipeline.sim.benchmark`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch

from pipeline.collect.envs.base import StepResult
from pipeline.collect.envs.wrappers import ActionScale, FrameStacker
from pipeline.config.evaluate import AgentParams
from pipeline.evaluate.backbones import Backbone
from pipeline.evaluate.seeding import derive_seed
from pipeline.finetune.sac import SAC, IdentityEncoder

log = logging.getLogger(__name__)


class Observer(Protocol):
    """Turns what environments show into the agent's observation vectors.

    ``reset`` / ``step`` take the result of env number ``i`` (several run in lockstep during
    evaluation) and return its raw observation; ``encode`` maps a list of raw observations to
    (N, D) float32 vectors at once (one batched backbone forward for the frozen arm).
    """

    dim: int
    needs_frames: bool  # False: the environments need not render (no pixels reach the observer)

    def reset(self, env: Any, result: StepResult, i: int = 0) -> np.ndarray: ...

    def step(self, env: Any, result: StepResult, i: int = 0) -> np.ndarray: ...

    def encode(self, raw: list[np.ndarray]) -> np.ndarray: ...


class StateObserver:
    """The task's proprioceptive observation (``PixelEnv.state_observation``)."""

    needs_frames = False

    def __init__(self, dim: int) -> None:
        self.dim = dim

    def reset(self, env: Any, result: StepResult, i: int = 0) -> np.ndarray:
        return env.state_observation()[0]

    def step(self, env: Any, result: StepResult, i: int = 0) -> np.ndarray:
        return env.state_observation()[0]

    def encode(self, raw: list[np.ndarray]) -> np.ndarray:
        return np.stack(raw).astype(np.float32, copy=False)


class FeatureObserver:
    """A frozen backbone's features of each environment's current frame stack."""

    needs_frames = True

    def __init__(self, backbone: Backbone) -> None:
        self.backbone = backbone
        self.dim = backbone.feature_dim
        self._stacks: dict[int, FrameStacker] = {}

    def reset(self, env: Any, result: StepResult, i: int = 0) -> np.ndarray:
        self._stacks[i] = FrameStacker(self.backbone.spec.frame_stack)
        return self._stacks[i].reset(result.frame)

    def step(self, env: Any, result: StepResult, i: int = 0) -> np.ndarray:
        return self._stacks[i].push(result.frame)

    def encode(self, raw: list[np.ndarray]) -> np.ndarray:
        return self.backbone.features(np.stack(raw), batch=len(raw))


class VectorReplay:
    """Ring buffer of vector transitions: obs and next_obs (D,) float32, action (A,), reward, terminated.

    Memory: ``capacity * (8D + 4A + 5)`` bytes (100k transitions of 64-d features: 52 MB).
    """

    def __init__(self, capacity: int, obs_dim: int, action_dim: int, gamma: float, seed: int) -> None:
        self.capacity, self.gamma, self.size, self._next = capacity, gamma, 0, 0
        self.obs = np.zeros((capacity, obs_dim), np.float32)
        self.next_obs = np.zeros((capacity, obs_dim), np.float32)
        self.action = np.zeros((capacity, action_dim), np.float32)
        self.reward = np.zeros(capacity, np.float32)
        self.terminated = np.zeros(capacity, np.float32)
        self._rng = np.random.default_rng(seed)

    def add(self, obs: np.ndarray, action: np.ndarray, reward: float, terminated: bool, next_obs: np.ndarray) -> None:
        i = self._next
        self.obs[i], self.action[i], self.reward[i], self.terminated[i], self.next_obs[i] = (
            obs,
            action,
            reward,
            terminated,
            next_obs,
        )
        self._next = (i + 1) % self.capacity
        self.size = min(self.size + 1, self.capacity)

    def sample(self, batch: int) -> dict[str, np.ndarray]:
        """A uniform batch in :meth:`SAC.update`'s layout (discount = gamma: one-step returns)."""
        idx = self._rng.integers(0, self.size, batch)
        return {
            "obs": self.obs[idx],
            "action": self.action[idx],
            "reward": self.reward[idx],
            "discount": np.full(batch, self.gamma, np.float32),
            "terminated": self.terminated[idx],
            "next_obs": self.next_obs[idx],
        }


@dataclass
class RunResult:
    """One RL run: its evaluation curve (frames after action repeat) and speed."""

    curve: list[dict[str, float]] = field(default_factory=list)  # {"frames", "return_mean", "return_std"}
    updates: int = 0
    update_s: float = 0.0
    act_s: float = 0.0
    act_frames: int = 0

    @property
    def final_return(self) -> float:
        return self.curve[-1]["return_mean"]

    def speed(self) -> dict[str, float]:
        return {
            "updates_per_s": self.updates / self.update_s if self.update_s else float("nan"),
            "acting_frames_per_s": self.act_frames / self.act_s if self.act_s else float("nan"),
        }


@dataclass(frozen=True)
class Schedule:
    """How long and how often: all in frames after action repeat."""

    frames: int
    seed_frames: int
    eval_every_frames: int
    eval_episodes: int
    episode_frames: int
    action_repeat: int


class VectorWorkspace:
    """Owns the training and evaluation environments, the SAC agent, the replay buffer and the observer.

    Args:
        make_env: builds a :class:`PixelEnv` for a given seed (task, image size, camera, action
            repeat and episode length already bound).
        observer: turns steps into vectors (:class:`StateObserver` or :class:`FeatureObserver`);
            a second, independent observer for evaluation comes from ``make_observer``.
        agent_params: SAC hyperparameters.
        schedule: frames, evaluation cadence, episode length.
        seed: this run's seed (every random stream derives from it).
        name: what its log lines call the run (default: the task); runs side by side need their own.
    """

    def __init__(
        self,
        task: str,
        make_env: Callable[[int], Any],
        make_observer: Callable[[], Observer],
        agent_params: AgentParams,
        schedule: Schedule,
        seed: int,
        device: torch.device,
        *,
        name: str | None = None,
    ) -> None:
        self.task, self.schedule, self.seed, self.name = task, schedule, seed, name or task
        self.observer, self.eval_observer = make_observer(), make_observer()

        def env(seed: int) -> ActionScale:
            inner = make_env(seed)
            inner.render_frames = self.observer.needs_frames
            return ActionScale(inner)

        self.env = env(derive_seed(seed, "train_env", task))
        self.eval_envs = [env(derive_seed(seed, "eval_env", task, i + 1)) for i in range(schedule.eval_episodes)]
        self.action_dim = self.env.action_dim
        torch.manual_seed(derive_seed(seed, "agent", task))
        self.agent = SAC(IdentityEncoder(self.observer.dim), self.action_dim, agent_params, device, train_encoder=False)
        self.replay = VectorReplay(
            agent_params.replay_capacity,
            self.observer.dim,
            self.action_dim,
            agent_params.gamma,
            derive_seed(seed, "replay", task),
        )
        self.explore = np.random.default_rng(derive_seed(seed, "explore", task))
        self.batch_size, self.updates_per_step = agent_params.batch_size, agent_params.updates_per_step
        self.frame, self.episode = 0, 0
        self.result = RunResult()

    def close(self) -> None:
        for env in (self.env, *self.eval_envs):
            env.close()

    def evaluate(self) -> dict[str, float]:
        """Deterministic-policy returns of ``eval_episodes`` episodes run in lockstep (one batched
        observer and policy forward per step), from the same start states every time."""
        envs = self.eval_envs
        results = [env.reset(seed=derive_seed(self.seed, "eval_env", self.task, i + 1)) for i, env in enumerate(envs)]
        raw = [self.eval_observer.reset(env, r, i) for i, (env, r) in enumerate(zip(envs, results, strict=True))]
        returns = np.zeros(len(envs))
        alive = [i for i, r in enumerate(results) if not r.done]
        while alive:
            actions = self.agent.act_batch(self.eval_observer.encode([raw[i] for i in alive]), sample=False)
            for i, action in zip(alive, actions, strict=True):
                results[i] = envs[i].step(action)
                raw[i] = self.eval_observer.step(envs[i], results[i], i)
                returns[i] += results[i].reward
            alive = [i for i in alive if not results[i].done]
        record = {"frames": self.frame, "return_mean": float(np.mean(returns)), "return_std": float(np.std(returns))}
        self.result.curve.append(record)
        log.info("%s eval at frame %d: return %.1f", self.name, self.frame, record["return_mean"])
        return record

    def train_episode(self) -> None:
        """One training episode (or until ``frames``): act, store, update."""
        s = self.schedule
        result = self.env.reset(seed=derive_seed(self.seed, "train_env", self.task, self.episode + 1))
        obs = self.observer.encode([self.observer.reset(self.env, result)])[0]
        while not result.done and self.frame < s.frames:
            t0 = time.perf_counter()
            if self.frame < s.seed_frames:
                action = self.explore.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
            else:
                action = self.agent.act(obs, sample=True)
            result = self.env.step(action)
            next_obs = self.observer.encode([self.observer.step(self.env, result)])[0]
            self.replay.add(obs, action, result.reward, result.terminated, next_obs)
            obs = next_obs
            self.frame += s.action_repeat
            t1 = time.perf_counter()
            self.result.act_s += t1 - t0
            self.result.act_frames += s.action_repeat
            if self.frame >= s.seed_frames:
                for _ in range(self.updates_per_step):
                    self.agent.update(self.replay.sample(self.batch_size))
                self.result.updates += self.updates_per_step
                self.result.update_s += time.perf_counter() - t1
            if self.frame % s.eval_every_frames < s.action_repeat:
                self.evaluate()
        self.episode += 1

    def train(self) -> RunResult:
        """The whole schedule: evaluation at frame 0, every ``eval_every_frames`` and at the end."""
        self.evaluate()
        while self.frame < self.schedule.frames:
            self.train_episode()
        if self.result.curve[-1]["frames"] != self.frame:
            self.evaluate()
        return self.result
