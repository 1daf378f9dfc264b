"""Several vector-arm runs of one task trained side by side in one process, as one batched agent.

A :class:`GroupWorkspace` is N :class:`~pipeline.evaluate.workspace.VectorWorkspace` runs (same task,
schedule and observation size; their own seeds, environments, observers and replay buffers) stepped in
lockstep:

* every agent step, the N training environments step once each, and the frames of the members that
  share a frozen backbone go through it in one forward (:meth:`GroupWorkspace.encode`);
* the N agents are one :class:`~pipeline.finetune.ensemble_sac.EnsembleSAC`: one acting forward and one
  update for all of them, each agent with its own parameters, noise generator and replay;
* evaluation runs every member's ``eval_episodes`` episodes together (N x E environments).

Member ``i`` draws every random number from the streams its :class:`VectorWorkspace` would use (the same
seeds, the same order), so a group of one is that run to float rounding, and no member's data reaches
another's agent. All members count the same frames (their episodes last ``episode_frames`` unless a task
terminates one early: that member resets alone), so they evaluate at the same frames.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.collect.envs.wrappers import ActionScale
from pipeline.config.evaluate import AgentParams
from pipeline.evaluate.seeding import derive_seed
from pipeline.evaluate.workspace import Observer, RunResult, Schedule, VectorReplay
from pipeline.finetune.ensemble_sac import EnsembleSAC

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Member:
    """One run of a group: its seed (as :class:`VectorWorkspace` takes it), observer factory and log name."""

    seed: int
    make_observer: Callable[[], Observer]
    name: str


class GroupWorkspace:
    """N lockstepped runs of ``task`` (see the module docstring); ``train()`` returns one result per member."""

    def __init__(
        self,
        task: str,
        make_env: Callable[[int], Any],
        members: Sequence[Member],
        agent_params: AgentParams,
        schedule: Schedule,
        device: torch.device,
    ) -> None:
        self.task, self.schedule, self.members = task, schedule, list(members)
        self.observers = [m.make_observer() for m in members]
        self.eval_observers = [m.make_observer() for m in members]
        dims = {o.dim for o in self.observers}
        if len(dims) != 1:
            raise ValueError(f"a group's runs must share one observation size, got {sorted(dims)}")
        self.dim = dim = dims.pop()

        def env(seed: int, observer: Observer) -> ActionScale:
            inner = make_env(seed)
            inner.render_frames = observer.needs_frames
            return ActionScale(inner)

        self.envs = [
            env(derive_seed(m.seed, "train_env", task), o) for m, o in zip(members, self.observers, strict=True)
        ]
        self.eval_envs = [
            [env(derive_seed(m.seed, "eval_env", task, i + 1), o) for i in range(schedule.eval_episodes)]
            for m, o in zip(members, self.eval_observers, strict=True)
        ]
        self.action_dim = self.envs[0].action_dim
        seeds = [derive_seed(m.seed, "agent", task) for m in members]
        self.agent = EnsembleSAC(dim, self.action_dim, agent_params, device, seeds)
        self.replays = [
            VectorReplay(
                agent_params.replay_capacity,
                dim,
                self.action_dim,
                agent_params.gamma,
                derive_seed(m.seed, "replay", task),
            )
            for m in members
        ]
        self.explore = [np.random.default_rng(derive_seed(m.seed, "explore", task)) for m in members]
        self.batch_size, self.updates_per_step = agent_params.batch_size, agent_params.updates_per_step
        self.frame = 0
        self.episodes = [0] * len(members)
        self.results = [RunResult() for _ in members]
        self._last_steps: list[Any] = [None] * len(members)  # each member's latest training step

    def close(self) -> None:
        for env in (*self.envs, *(e for envs in self.eval_envs for e in envs)):
            env.close()

    @staticmethod
    def encode(observers: Sequence[Observer], raw: Sequence[np.ndarray]) -> np.ndarray:
        """(len(raw), D) float32 vectors of ``raw[k]`` as ``observers[k]`` sees it: one forward per backbone
        (observers of one frozen backbone share it), one stack per state observer kind."""
        out: list[np.ndarray | None] = [None] * len(raw)
        shared: dict[int, list[int]] = {}
        for k, observer in enumerate(observers):
            shared.setdefault(id(getattr(observer, "backbone", type(observer))), []).append(k)
        for ks in shared.values():
            for k, vector in zip(ks, observers[ks[0]].encode([raw[k] for k in ks]), strict=True):
                out[k] = vector
        return np.stack(out)

    def _reset(self, i: int) -> np.ndarray:
        """Start member ``i``'s next training episode; its raw observation."""
        env = self.envs[i]
        result = env.reset(seed=derive_seed(self.members[i].seed, "train_env", self.task, self.episodes[i] + 1))
        self._last_steps[i] = result
        return self.observers[i].reset(env, result)

    def evaluate(self) -> None:
        """Every member's deterministic-policy returns over its ``eval_episodes`` episodes, all run together."""
        n, e = len(self.members), self.schedule.eval_episodes
        pairs = [(i, j) for i in range(n) for j in range(e)]
        results, raw = {}, {}
        for i, j in pairs:
            env = self.eval_envs[i][j]
            results[i, j] = env.reset(seed=derive_seed(self.members[i].seed, "eval_env", self.task, j + 1))
            raw[i, j] = self.eval_observers[i].reset(env, results[i, j], j)
        returns = np.zeros((n, e))
        alive = [p for p in pairs if not results[p].done]
        while alive:
            obs = np.zeros((n, e, self.dim), np.float32)
            vectors = self.encode([self.eval_observers[i] for i, _ in alive], [raw[p] for p in alive])
            for (i, j), vector in zip(alive, vectors, strict=True):
                obs[i, j] = vector
            actions = self.agent.act(obs, sample=False)
            for i, j in alive:
                results[i, j] = self.eval_envs[i][j].step(actions[i, j])
                raw[i, j] = self.eval_observers[i].step(self.eval_envs[i][j], results[i, j], j)
                returns[i, j] += results[i, j].reward
            alive = [p for p in alive if not results[p].done]
        for i, result in enumerate(self.results):
            record = {
                "frames": self.frame,
                "return_mean": float(np.mean(returns[i])),
                "return_std": float(np.std(returns[i])),
            }
            result.curve.append(record)
            log.info("%s eval at frame %d: return %.1f", self.members[i].name, self.frame, record["return_mean"])

    def train(self) -> list[RunResult]:
        """The whole schedule for every member: evaluations at frame 0, every ``eval_every_frames`` and at the end."""
        s, n = self.schedule, len(self.members)
        self.evaluate()
        raw = [self._reset(i) for i in range(n)]
        obs = self.encode(self.observers, raw)
        while self.frame < s.frames:
            t0 = time.perf_counter()
            if self.frame < s.seed_frames:
                actions = np.stack([rng.uniform(-1.0, 1.0, self.action_dim).astype(np.float32) for rng in self.explore])
            else:
                actions = self.agent.act(obs[:, None], sample=True)[:, 0]
            for i in range(n):
                self._last_steps[i] = self.envs[i].step(actions[i])
                raw[i] = self.observers[i].step(self.envs[i], self._last_steps[i])
            next_obs = self.encode(self.observers, raw)
            for i, result in enumerate(self._last_steps):
                self.replays[i].add(obs[i], actions[i], result.reward, result.terminated, next_obs[i])
            obs = next_obs
            self.frame += s.action_repeat
            t1 = time.perf_counter()
            if self.frame >= s.seed_frames:
                for _ in range(self.updates_per_step):
                    batch = [r.sample(self.batch_size) for r in self.replays]
                    self.agent.update({k: np.stack([b[k] for b in batch]) for k in batch[0]})
            t2 = time.perf_counter()
            for result in self.results:
                result.act_s += (t1 - t0) / n
                result.act_frames += s.action_repeat
                if self.frame >= s.seed_frames:
                    result.updates += self.updates_per_step
                    result.update_s += (t2 - t1) / n
            if self.frame % s.eval_every_frames < s.action_repeat:
                self.evaluate()
            ended = [i for i, r in enumerate(self._last_steps) if r.done]
            if ended and self.frame < s.frames:
                for i in ended:
                    self.episodes[i] += 1
                    raw[i] = self._reset(i)
                fresh = self.encode([self.observers[i] for i in ended], [raw[i] for i in ended])
                obs[ended] = fresh
        if self.results[0].curve[-1]["frames"] != self.frame:
            self.evaluate()
        return self.results
