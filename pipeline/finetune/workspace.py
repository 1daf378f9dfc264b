"""The online fine-tuning workspace (DrQ-v2's shape): it owns the environments, the agent, the
replay buffer and the resumable checkpoint, and offers ``train()``, ``evaluate()``,
``save_checkpoint()`` and ``export()``.

Frames are environment frames after action repeat (one agent step = ``action_repeat`` frames).
The run is deterministic for given params and backbone: every random stream (network init,
exploration, action sampling, augmentation, replay sampling, environment resets) is seeded from
``seed``. Checkpoints are written at episode ends under ``<checkpoint_dir>/<run key>/``; the run
key hashes everything that changes the result except ``frames``, so the same run with more frames
continues where the last one stopped, and a stopped run resumes at its last checkpoint and
reaches exactly the state an uninterrupted run would.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.actor import ActorMeta, PixelPolicy
from models.checkpoint import save_module
from pipeline.collect.envs.wrappers import ActionScale, FrameStack
from pipeline.common import seeding
from pipeline.common.errors import UserError
from pipeline.common.io import atomic_path
from pipeline.config.finetune import FinetuneParams
from pipeline.finetune.checkpoint import ResumeCheckpoint, TrainState, code_digest
from pipeline.finetune.encoder import EncoderSpec, build_encoder
from pipeline.finetune.replay_buffer import ReplayBuffer
from pipeline.finetune.report import summarise, write_gif
from pipeline.finetune.sac import SAC

log = logging.getLogger(__name__)

#: Params that do not change what the run computes, left out of the run key.
_NOT_IN_RUN_KEY = {
    "frames",
    "checkpoint_every_frames",
    "checkpoint_dir",
    "device",
    "threads",
    "video",
    "allow_mismatch",
}
#: Random streams derived from ``seed`` (the value is the stream's id in the seed sequence).
_STREAMS = {"torch": 0, "explore": 1, "replay": 2, "train_env": 3, "eval_env": 4}


def derive_seed(seed: int, stream: str, index: int = 0) -> int:
    """A 31-bit seed for ``stream`` (and its ``index``-th member) derived from the run's ``seed``."""
    return seeding.derive_seed(seed, _STREAMS[stream], index)


def run_key(params: FinetuneParams, spec: EncoderSpec) -> str:
    """16 hex digits identifying the computation (params but ``frames`` and bookkeeping, the backbone)."""
    record = {
        "params": params.model_dump(mode="json", exclude=_NOT_IN_RUN_KEY),
        "backbone": {"class": spec.class_path, "config": spec.config, "sha256": spec.sha256},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def check_memory(params: FinetuneParams, frame_shape: tuple[int, int, int], action_dim: int) -> int:
    """Bytes this run's replay buffer will use; stops before work if that cannot fit in RAM."""
    steps = math.ceil(params.frames / params.action_repeat)
    steps_per_episode = params.episode_frames // params.action_repeat
    used = ReplayBuffer.estimate_bytes(
        min(params.replay_capacity, steps + math.ceil(steps / steps_per_episode)), frame_shape, action_dim
    )
    log.info(
        "replay buffer: frames of %s uint8 stored once (stacks built at sampling time): about %.1f MiB for this run",
        "x".join(map(str, frame_shape)),
        used / 2**20,
    )
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return used
    if used > 0.8 * ram:
        raise UserError(
            f"finetune.replay_capacity = {params.replay_capacity}: "
            f"this run's replay buffer needs about {used / 2**30:.1f} GiB, "
            f"more than 80% of this machine's {ram / 2**30:.1f} GiB; lower finetune.replay_capacity"
        )
    return used


class Workspace:
    """One online SAC run from pixels.

    Args:
        params: the ``finetune`` section.
        spec: the backbone checkpoint the encoder comes from.
        device: where the agent runs.
    """

    def __init__(self, params: FinetuneParams, spec: EncoderSpec, device: torch.device) -> None:
        from pipeline.collect import make_env

        p = self.p = params
        self.spec, self.device = spec, device
        self.key = run_key(p, spec)
        self.run_info = {
            "key": self.key,
            "code": code_digest(),
            "params": p.model_dump(mode="json"),
            "backbone_sha256": spec.sha256,
        }
        env_kwargs = dict(
            image_size=spec.image_size,
            camera=p.camera,
            action_repeat=p.action_repeat,
            render_mode=p.render_mode,
            episode_steps=p.episode_frames // p.action_repeat,
        )
        self.env = FrameStack(
            ActionScale(make_env(p.task, seed=derive_seed(p.seed, "train_env"), **env_kwargs)), spec.frame_stack
        )
        try:
            self.eval_env = FrameStack(
                ActionScale(make_env(p.task, seed=derive_seed(p.seed, "eval_env"), **env_kwargs)), spec.frame_stack
            )
        except BaseException:
            self.env.close()
            raise
        self.action_dim = self.env.action_dim
        self.frame_shape = (3, spec.image_size, spec.image_size)
        self.replay_bytes = check_memory(p, self.frame_shape, self.action_dim)
        self.checkpoint = ResumeCheckpoint(Path(p.checkpoint_dir) / self.key)
        self._build()
        self.video: list[np.ndarray] = []
        self.info: dict[str, float] = {}
        self.timing = {"update_s": 0.0, "updates": 0, "env_s": 0.0, "env_frames": 0, "eval_s": 0.0}

    def _build(self) -> None:
        """Fresh agent, replay buffer, exploration RNG and counters (seeded)."""
        p = self.p
        torch.manual_seed(derive_seed(p.seed, "torch"))
        self.agent = SAC(
            build_encoder(self.spec, p.encoder_init),
            self.action_dim,
            p,
            self.device,
            train_encoder=p.encoder_init != "frozen",
        )
        self.replay = ReplayBuffer(
            p.replay_capacity,
            self.frame_shape,
            self.action_dim,
            self.spec.frame_stack,
            p.n_step,
            p.gamma,
            seed=derive_seed(p.seed, "replay"),
        )
        self.explore = np.random.default_rng(derive_seed(p.seed, "explore"))
        self.state = TrainState(next_checkpoint=p.checkpoint_every_frames)

    def close(self) -> None:
        self.env.close()
        self.eval_env.close()

    # --- checkpoints -----------------------------------------------------------------------
    def resume(self) -> None:
        """Continue from this run key's checkpoint, if there is a readable one at or before ``frames``."""
        ckpt = self.checkpoint
        if not ckpt.exists():
            return
        if (reason := ckpt.mismatch(self.key)) is not None:
            ckpt.set_aside(reason)
            return
        if ckpt.frame() > self.p.frames:
            log.warning(
                "checkpoint %s is at frame %d, past frames=%d: starting afresh (it will be overwritten)",
                ckpt.folder,
                ckpt.frame(),
                self.p.frames,
            )
            return
        state = ckpt.try_load(self.agent, self.replay, self.explore)
        if state is None:
            self._build()  # a failed load may have left parts of the old state behind
            return
        self.state = state
        log.info(
            "resumed from %s at frame %d (episode %d, %d updates)",
            ckpt.folder,
            state.frame,
            state.episode,
            self.agent.updates,
        )

    def save_checkpoint(self) -> None:
        self.checkpoint.save(
            self.agent, self.replay, self.state, self.explore, {**self.run_info, "frame": self.state.frame}
        )

    # --- evaluation ------------------------------------------------------------------------
    def evaluate(self, *, episodes: int | None = None, keep_video: bool = False) -> dict[str, Any]:
        """Deterministic-policy returns (the same start states at every evaluation); the first
        episode's frames become the video when ``keep_video``."""
        start = time.perf_counter()
        returns, frames = [], []
        for i in range(episodes or self.p.eval_episodes):
            result = self.eval_env.reset(seed=derive_seed(self.p.seed, "eval_env", i))
            if keep_video and i == 0:
                frames.append(result.frame)
            total = 0.0
            while not result.done:
                result = self.eval_env.step(self.agent.act(result.obs, sample=False))
                total += result.reward
                if keep_video and i == 0:
                    frames.append(result.frame)
            returns.append(total)
        if keep_video:
            self.video = frames
        record = {"frames": self.state.frame, **summarise(returns), "returns": returns}
        log.info(
            "eval at frame %d: return %.1f +- %.1f over %d episodes",
            record["frames"],
            record["return_mean"],
            record["return_std"],
            len(returns),
        )
        self.timing["eval_s"] += time.perf_counter() - start
        return record

    def _scheduled_evaluation(self) -> None:
        state = self.state
        if state.frame >= state.next_eval:
            state.evals.append(self.evaluate(keep_video=self.p.video and state.frame >= self.p.frames))
            while state.next_eval <= state.frame:
                state.next_eval += self.p.eval_every_frames

    # --- training --------------------------------------------------------------------------
    def _act(self, obs: np.ndarray) -> np.ndarray:
        if self.state.frame < self.p.seed_frames:
            return self.explore.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
        return self.agent.act(obs, sample=True)

    def _update(self) -> None:
        start = time.perf_counter()
        for _ in range(self.p.updates_per_step):
            self.info = self.agent.update(self.replay.sample(self.p.batch_size))
        self.timing["update_s"] += time.perf_counter() - start
        self.timing["updates"] += self.p.updates_per_step

    def train_episode(self) -> bool:
        """One training episode (or up to ``frames``); True if it ended (terminated or truncated)."""
        p, state = self.p, self.state
        result = self.env.reset(seed=derive_seed(p.seed, "train_env", state.episode))
        self.replay.start_episode(result.frame)
        episode_return = 0.0
        while True:
            start = time.perf_counter()
            action = self._act(result.obs)
            result = self.env.step(action)
            self.replay.add_step(action, result.reward, result.terminated, result.frame)
            state.frame += p.action_repeat
            episode_return += result.reward
            self.timing["env_s"] += time.perf_counter() - start
            self.timing["env_frames"] += p.action_repeat
            if state.frame >= p.seed_frames:
                self._update()
            self._scheduled_evaluation()
            if result.done:
                break
            if state.frame >= p.frames:
                return False  # frames reached mid-episode: the last checkpoint stays at the previous episode end
        state.episode += 1
        state.episodes.append({"frames": state.frame, "episode_return": episode_return})
        log.info(
            "episode %d: frame %d, return %.1f%s",
            state.episode,
            state.frame,
            episode_return,
            "".join(f", {k} {v:.3g}" for k, v in sorted(self.info.items())),
        )
        return True

    def train(self) -> None:
        """Train to ``frames``: evaluations every ``eval_every_frames``, checkpoints at episode ends."""
        from pipeline.common.logs import progress

        p, state = self.p, self.state
        with progress(total=p.frames, desc=f"finetune {p.task} ({p.encoder_init})", unit="frame") as bar:
            bar.update(min(state.frame, p.frames))
            self._scheduled_evaluation()  # frame 0, unless resumed
            while state.frame < p.frames:
                before = state.frame
                ended = self.train_episode()
                bar.update(state.frame - before)
                if not ended:
                    break
                if state.frame >= state.next_checkpoint or state.frame >= p.frames:
                    self.save_checkpoint()
                    while state.next_checkpoint <= state.frame:
                        state.next_checkpoint += p.checkpoint_every_frames

    def final_evaluation(self) -> list[dict[str, Any]]:
        """The whole evaluation curve, ending at the last frame (evaluated now unless scheduled there).

        An unscheduled final evaluation is not part of the checkpointed state, so a longer rerun
        of the same run is unaffected by it."""
        evals = list(self.state.evals)
        if not evals or evals[-1]["frames"] != self.state.frame:
            evals.append(self.evaluate(keep_video=self.p.video))
        if self.p.video and not self.video:  # resumed a finished run: replay the final evaluation's first episode
            self.evaluate(episodes=1, keep_video=True)
        return evals

    # --- outputs ---------------------------------------------------------------------------
    def export(self, out_dir: str | Path, final: dict[str, Any], *, warnings: list[str] | tuple[str, ...] = ()) -> None:
        """``out_dir/actor/`` (the deployable :class:`PixelPolicy`, meta declared by :class:`ActorMeta`)
        and ``out_dir/eval_video.gif``, as one atomic folder. ``warnings`` (backbone/run observation
        mismatches allowed by ``finetune.allow_mismatch``) go into the actor's meta as ``observation_warnings``."""
        p, agent = self.p, self.agent
        actor_config = {
            "feature_dim": int(agent.encoder.feature_dim),
            "action_dim": self.action_dim,
            "hidden_dim": p.hidden_dim,
            "hidden_depth": p.hidden_depth,
            "log_std_min": p.log_std_min,
            "log_std_max": p.log_std_max,
        }
        policy_config = {
            "encoder_config": self.spec.config,
            "actor_config": actor_config,
            "encoder_class": self.spec.class_path,
        }
        policy = PixelPolicy(**policy_config)
        policy.encoder.load_state_dict(agent.encoder.state_dict())
        policy.actor.load_state_dict(agent.actor.state_dict())
        unwrapped = self.env.unwrapped
        meta = ActorMeta(
            task=p.task,
            action_dim=self.action_dim,
            frame_stack=self.spec.frame_stack,
            image_size=self.spec.image_size,
            action_repeat=p.action_repeat,
            camera=p.camera,
            render_mode=p.render_mode,
        ).to_meta(
            action_low=np.asarray(unwrapped.action_low).tolist(),
            action_high=np.asarray(unwrapped.action_high).tolist(),
            encoder_init=p.encoder_init,
            frames=final["frames"],
            eval_return_mean=final["return_mean"],
            backbone_sha256=self.spec.sha256,
            seed=p.seed,
            observation_warnings=list(warnings),
        )
        with atomic_path(out_dir, clean_stale=True, owner="finetune") as tmp:
            tmp.mkdir()
            save_module(tmp / "actor", policy.cpu(), policy_config, meta)
            if self.video:
                write_gif(tmp / "eval_video.gif", self.video, fps=10.0)
