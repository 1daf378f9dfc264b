"""The online fine-tuning loop: act, store, update, evaluate, checkpoint; then write the outputs.

Frames are environment frames after action repeat (one agent step = ``action_repeat`` frames).
The run is deterministic for given params and backbone: every random stream (network init,
exploration, action sampling, augmentation, replay sampling, environment resets) is seeded from
``seed``. Resumable checkpoints are written at episode ends under
``<checkpoint_dir>/<run key>/``; the run key hashes everything that changes the result except
``frames``, so the same run with more frames continues where the last one stopped, and a stopped
run resumes at its last checkpoint and reaches exactly the state an uninterrupted run would.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from models.actor import ActorMeta, PixelPolicy
from models.checkpoint import save_module
from pipeline.config.finetune import FinetuneParams
from pipeline.device import select_device
from pipeline.errors import UserError
from pipeline.finetune.encoder import EncoderSpec, build_encoder, read_spec
from pipeline.finetune.replay_buffer import ReplayBuffer
from pipeline.finetune.report import summarise, write_gif, write_metrics, write_plots
from pipeline.finetune.sac import SAC
from pipeline.io import atomic_path
from pipeline.logs import progress

log = logging.getLogger(__name__)

#: Params that do not change what the run computes, left out of the run key.
_NOT_IN_RUN_KEY = {"frames", "checkpoint_every_frames", "checkpoint_dir", "device", "threads", "video"}
#: Random streams derived from ``seed`` (the value is the stream's id in the seed sequence).
_STREAMS = {"torch": 0, "explore": 1, "replay": 2, "train_env": 3, "eval_env": 4}


def derive_seed(seed: int, stream: str, index: int = 0) -> int:
    """A 31-bit seed for ``stream`` (and its ``index``-th member) derived from the run's ``seed``."""
    return int(np.random.SeedSequence([seed, _STREAMS[stream], index]).generate_state(1)[0] >> 1)


class FrameStack:
    """The last k frames as one (3k, H, W) uint8 observation, oldest first; reset repeats the first frame."""

    def __init__(self, k: int) -> None:
        self.frames: deque[np.ndarray] = deque(maxlen=k)

    def reset(self, frame: np.ndarray) -> np.ndarray:
        chw = np.ascontiguousarray(frame.transpose(2, 0, 1))
        for _ in range(self.frames.maxlen or 1):
            self.frames.append(chw)
        return self.obs()

    def push(self, frame: np.ndarray) -> np.ndarray:
        self.frames.append(np.ascontiguousarray(frame.transpose(2, 0, 1)))
        return self.obs()

    def obs(self) -> np.ndarray:
        return np.concatenate(list(self.frames), axis=0)


@dataclass
class TrainState:
    """Counters and curves that a checkpoint restores (plain numbers and lists: torch.load-safe)."""

    frame: int = 0
    episode: int = 0
    next_eval: int = 0
    next_checkpoint: int = 0
    evals: list[dict[str, Any]] = field(default_factory=list)
    episodes: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class FinetuneResult:
    """What :func:`finetune` returns: the metrics it wrote, the curves, and timings (not written: wall clock)."""

    metrics: dict[str, Any]
    evals: list[dict[str, Any]]
    episodes: list[dict[str, Any]]
    timing: dict[str, float]


def run_key(params: FinetuneParams, spec: EncoderSpec) -> str:
    """16 hex digits identifying the computation (params but ``frames`` and bookkeeping, the backbone)."""
    record = {
        "params": params.model_dump(mode="json", exclude=_NOT_IN_RUN_KEY),
        "backbone": {"class": spec.class_path, "config": spec.config, "sha256": spec.sha256},
    }
    return hashlib.sha256(json.dumps(record, sort_keys=True).encode()).hexdigest()[:16]


def _check_memory(params: FinetuneParams, frame_bytes: tuple[int, int, int], action_dim: int, steps_per_episode: int) -> int:
    """Log the replay buffer's memory estimate; stop before work if it cannot fit in RAM."""
    full = ReplayBuffer.estimate_bytes(params.replay_capacity, frame_bytes, action_dim)
    steps = math.ceil(params.frames / params.action_repeat)
    used = ReplayBuffer.estimate_bytes(min(params.replay_capacity, steps + math.ceil(steps / steps_per_episode)), frame_bytes, action_dim)
    log.info(
        "replay buffer: %d frames of %s uint8 stored once (stacks built at sampling time): %.1f MiB when full, about %.1f MiB for this run's %d frames",
        params.replay_capacity, "x".join(map(str, frame_bytes)), full / 2**20, used / 2**20, params.frames,
    )
    try:
        ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return used
    if used > 0.8 * ram:
        raise UserError(
            f"finetune.replay_capacity = {params.replay_capacity}: this run's replay buffer needs about {used / 2**30:.1f} GiB, "
            f"more than 80% of this machine's {ram / 2**30:.1f} GiB; lower finetune.replay_capacity"
        )
    return used


class _Checkpoints:
    """Resumable state under one folder: ``agent.pt`` (networks, optimisers, RNGs, counters), ``replay.npz``."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def exists(self) -> bool:
        return (self.folder / "agent.pt").is_file() and (self.folder / "replay.npz").is_file()

    def save(self, agent: SAC, buffer: ReplayBuffer, state: TrainState, explore: np.random.Generator, run: dict[str, Any]) -> None:
        payload = {
            "agent": agent.state_dict(),
            "state": state.__dict__,
            "explore_rng": explore.bit_generator.state,
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if agent.device.type == "cuda" else [],
        }
        with atomic_path(self.folder) as tmp:
            tmp.mkdir()
            torch.save(payload, tmp / "agent.pt")
            np.savez(tmp / "replay.npz", **buffer.state_dict())
            (tmp / "run.json").write_text(json.dumps(run, sort_keys=True, indent=2) + "\n")
        log.info("checkpoint at frame %d -> %s", state.frame, self.folder)

    def load(self, agent: SAC, buffer: ReplayBuffer, explore: np.random.Generator) -> TrainState:
        payload = torch.load(self.folder / "agent.pt", map_location=agent.device, weights_only=True)
        agent.load_state_dict(payload["agent"])
        with np.load(self.folder / "replay.npz") as replay:
            buffer.load_state_dict({k: replay[k] for k in replay.files})
        explore.bit_generator.state = payload["explore_rng"]
        torch.set_rng_state(payload["torch_rng"].cpu())
        if agent.device.type == "cuda" and payload["cuda_rng"]:
            torch.cuda.set_rng_state_all([s.cpu() for s in payload["cuda_rng"]])
        return TrainState(**payload["state"])

    def frame(self) -> int:
        return int(json.loads((self.folder / "run.json").read_text())["frame"])


def _to_env(action: np.ndarray, low: np.ndarray, high: np.ndarray) -> np.ndarray:
    """[-1, 1] -> the env's action box."""
    return (low + (action + 1.0) * 0.5 * (high - low)).astype(np.float32)


def evaluate(agent: SAC, env: Any, params: FinetuneParams, frame_stack: int, *, episodes: int, keep_frames: bool = False) -> tuple[list[float], list[np.ndarray]]:
    """Returns of ``episodes`` deterministic-policy episodes (the same start states at every evaluation),
    and the frames of the first one when ``keep_frames``."""
    returns: list[float] = []
    frames: list[np.ndarray] = []
    stack = FrameStack(frame_stack)
    for i in range(episodes):
        result = env.reset(seed=derive_seed(params.seed, "eval_env", i))
        obs = stack.reset(result.frame)
        if keep_frames and i == 0:
            frames.append(result.frame)
        total = 0.0
        while not (result.terminated or result.truncated):
            result = env.step(_to_env(agent.act(obs, sample=False), env.action_low, env.action_high))
            obs = stack.push(result.frame)
            total += result.reward
            if keep_frames and i == 0:
                frames.append(result.frame)
        returns.append(total)
    return returns, frames


class _OnlineRun:
    """One training run's moving parts: the agent, the replay buffer, both environments, the counters."""

    def __init__(self, p: FinetuneParams, spec: EncoderSpec, env: Any, eval_env: Any, device: torch.device, run_info: dict[str, Any]) -> None:
        self.p, self.spec, self.env, self.eval_env, self.run_info = p, spec, env, eval_env, run_info
        self.low, self.high = np.asarray(env.action_low, np.float32), np.asarray(env.action_high, np.float32)
        self.action_dim = int(self.low.shape[0])
        frame_shape = (3, spec.image_size, spec.image_size)
        self.replay_bytes = _check_memory(p, frame_shape, self.action_dim, p.episode_frames // p.action_repeat)

        torch.manual_seed(derive_seed(p.seed, "torch"))
        self.agent = SAC(build_encoder(spec, p.encoder_init), self.action_dim, p, device, train_encoder=p.encoder_init != "frozen")
        self.buffer = ReplayBuffer(p.replay_capacity, frame_shape, self.action_dim, spec.frame_stack, p.n_step, p.gamma, seed=derive_seed(p.seed, "replay"))
        self.explore = np.random.default_rng(derive_seed(p.seed, "explore"))
        self.state = TrainState(next_checkpoint=p.checkpoint_every_frames)
        self.checkpoints = _Checkpoints(Path(p.checkpoint_dir) / run_info["key"])
        self.stack = FrameStack(spec.frame_stack)
        self.video: list[np.ndarray] = []
        self.info: dict[str, float] = {}
        self.timing = {"update_s": 0.0, "updates": 0, "env_s": 0.0, "env_frames": 0, "eval_s": 0.0}

    def resume(self) -> None:
        """Continue from this run key's checkpoint, if there is one at or before ``frames``."""
        ckpt, p = self.checkpoints, self.p
        if not ckpt.exists():
            return
        if ckpt.frame() > p.frames:
            log.warning("checkpoint %s is at frame %d, past frames=%d: starting afresh (it will be overwritten)", ckpt.folder, ckpt.frame(), p.frames)
            return
        self.state = ckpt.load(self.agent, self.buffer, self.explore)
        log.info("resumed from %s at frame %d (episode %d, %d updates)", ckpt.folder, self.state.frame, self.state.episode, self.agent.updates)

    def evaluate(self) -> dict[str, Any]:
        """Evaluate now; keep the first episode's frames as the video when training is over."""
        start = time.perf_counter()
        keep = self.p.video and self.state.frame >= self.p.frames
        returns, frames = evaluate(self.agent, self.eval_env, self.p, self.spec.frame_stack, episodes=self.p.eval_episodes, keep_frames=keep)
        if keep:
            self.video = frames
        record = {"frames": self.state.frame, **summarise(returns), "returns": returns}
        log.info("eval at frame %d: return %.1f +- %.1f over %d episodes", record["frames"], record["return_mean"], record["return_std"], len(returns))
        self.timing["eval_s"] += time.perf_counter() - start
        return record

    def scheduled_evaluation(self) -> None:
        state = self.state
        if state.frame >= state.next_eval:
            state.evals.append(self.evaluate())
            while state.next_eval <= state.frame:
                state.next_eval += self.p.eval_every_frames

    def episode(self, bar: Any) -> bool:
        """Run one training episode (or up to ``frames``); True if it ended (terminated or truncated)."""
        p, state, agent, buffer = self.p, self.state, self.agent, self.buffer
        result = self.env.reset(seed=derive_seed(p.seed, "train_env", state.episode))
        buffer.start_episode(result.frame)
        obs = self.stack.reset(result.frame)
        episode_return = 0.0
        while True:
            t0 = time.perf_counter()
            if state.frame < p.seed_frames:
                action = self.explore.uniform(-1.0, 1.0, self.action_dim).astype(np.float32)
            else:
                action = agent.act(obs, sample=True)
            result = self.env.step(_to_env(action, self.low, self.high))
            buffer.add_step(action, result.reward, result.terminated, result.frame)
            obs = self.stack.push(result.frame)
            state.frame += p.action_repeat
            episode_return += result.reward
            bar.update(p.action_repeat)
            t1 = time.perf_counter()
            self.timing["env_s"] += t1 - t0
            self.timing["env_frames"] += p.action_repeat
            if state.frame >= p.seed_frames:
                for _ in range(p.updates_per_step):
                    self.info = agent.update(buffer.sample(p.batch_size))
                self.timing["update_s"] += time.perf_counter() - t1
                self.timing["updates"] += p.updates_per_step
            self.scheduled_evaluation()
            if result.terminated or result.truncated:
                break
            if state.frame >= p.frames:
                return False  # frames reached mid-episode: the last checkpoint stays at the previous episode end
        state.episode += 1
        state.episodes.append({"frames": state.frame, "episode_return": episode_return})
        log.info("episode %d: frame %d, return %.1f%s", state.episode, state.frame, episode_return, "".join(f", {k} {v:.3g}" for k, v in sorted(self.info.items())))
        return True

    def train(self) -> None:
        p, state = self.p, self.state
        with progress(total=p.frames, desc=f"finetune {p.task} ({p.encoder_init})", unit="frame") as bar:
            bar.update(min(state.frame, p.frames))
            self.scheduled_evaluation()  # frame 0, unless resumed
            while state.frame < p.frames:
                if not self.episode(bar):
                    break
                if state.frame >= state.next_checkpoint or state.frame >= p.frames:
                    self.checkpoints.save(self.agent, self.buffer, state, self.explore, {**self.run_info, "frame": state.frame})
                    while state.next_checkpoint <= state.frame:
                        state.next_checkpoint += p.checkpoint_every_frames

    def final_evaluation(self) -> tuple[dict[str, Any], list[dict[str, Any]]]:
        """The evaluation at the last frame (run now unless it was scheduled there) and the whole curve.

        An unscheduled final evaluation is not part of the checkpointed state, so a longer rerun
        of the same run is unaffected by it."""
        evals = list(self.state.evals)
        if not evals or evals[-1]["frames"] != self.state.frame:
            evals.append(self.evaluate())
        if self.p.video and not self.video:  # resumed a finished run: replay the final evaluation's first episode
            self.video = evaluate(self.agent, self.eval_env, self.p, self.spec.frame_stack, episodes=1, keep_frames=True)[1]
        return evals[-1], evals


def finetune(params: FinetuneParams, backbone: str | Path, out_dir: str | Path, metrics_path: str | Path, plots_dir: str | Path) -> FinetuneResult:
    """Train SAC online from the backbone under ``backbone`` and write every output.

    Outputs: ``out_dir/actor/`` (a :class:`models.actor.PixelPolicy` checkpoint), ``out_dir/eval_video.gif``
    (when ``video``), ``metrics_path`` (JSON) and ``plots_dir/`` (eval.csv, train.csv, learning_curve.png).
    """
    from pipeline.collect import make_env  # sets up headless rendering (and preloads triton) first

    p = params
    if p.threads:
        torch.set_num_threads(p.threads)
    spec = read_spec(backbone)
    device = select_device(p.device, param_key="finetune.device")
    run_info = {"key": run_key(p, spec), "params": p.model_dump(mode="json"), "backbone_sha256": spec.sha256}

    env_kwargs = dict(image_size=spec.image_size, camera=p.camera, action_repeat=p.action_repeat, render_mode=p.render_mode, episode_steps=p.episode_frames // p.action_repeat)
    env = make_env(p.task, seed=derive_seed(p.seed, "train_env"), **env_kwargs)
    eval_env = None
    try:
        eval_env = make_env(p.task, seed=derive_seed(p.seed, "eval_env"), **env_kwargs)
        run = _OnlineRun(p, spec, env, eval_env, device, run_info)
        run.resume()
        run.train()
        final, evals = run.final_evaluation()
    finally:
        env.close()
        if eval_env is not None:
            eval_env.close()

    _log_speed(run.timing)
    state, agent = run.state, run.agent
    metrics = {
        "task": p.task,
        "encoder_init": p.encoder_init,
        "frames": state.frame,
        "episodes": state.episode,
        "updates": agent.updates,
        "eval": {k: v for k, v in final.items() if k != "returns"} | {"episodes": p.eval_episodes},
        "best_eval_return_mean": max(e["return_mean"] for e in evals),
        "last_train_episode_return": state.episodes[-1]["episode_return"] if state.episodes else None,
        "replay_buffer_mib": round(run.replay_bytes / 2**20, 2),
    }
    _write_outputs(agent, spec, p, run.action_dim, run.low, run.high, out_dir, run.video, metrics)
    write_metrics(metrics_path, metrics)
    write_plots(plots_dir, [{k: v for k, v in e.items() if k != "returns"} for e in evals], state.episodes, f"{p.task}: SAC, {p.encoder_init} encoder")
    return FinetuneResult(metrics, evals, list(state.episodes), run.timing)


def _log_speed(timing: dict[str, float]) -> None:
    ups = timing["updates"] / timing["update_s"] if timing["update_s"] else float("nan")
    fps = timing["env_frames"] / timing["env_s"] if timing["env_s"] else float("nan")
    log.info("speed: %.2f updates/s, %.1f env frames/s while acting, %.1f s in evaluation", ups, fps, timing["eval_s"])


def _write_outputs(agent: SAC, spec: EncoderSpec, p: FinetuneParams, action_dim: int, low: np.ndarray, high: np.ndarray, out_dir: str | Path, video: list[np.ndarray], metrics: dict[str, Any]) -> None:
    """``out_dir/actor/`` (the deployable policy) and ``out_dir/eval_video.gif``, as one atomic folder."""
    actor_config = {"feature_dim": int(agent.encoder.feature_dim), "action_dim": action_dim, "hidden_dim": p.hidden_dim, "hidden_depth": p.hidden_depth, "log_std_min": p.log_std_min, "log_std_max": p.log_std_max}
    policy_config = {"encoder_config": spec.config, "actor_config": actor_config, "encoder_class": spec.class_path}
    policy = PixelPolicy(**policy_config)
    policy.encoder.load_state_dict(agent.encoder.state_dict())
    policy.actor.load_state_dict(agent.actor.state_dict())
    meta = ActorMeta(
        task=p.task, action_dim=action_dim, frame_stack=spec.frame_stack, image_size=spec.image_size,
        action_repeat=p.action_repeat, camera=p.camera, render_mode=p.render_mode,
    ).to_meta(
        action_low=low.tolist(), action_high=high.tolist(), encoder_init=p.encoder_init, frames=metrics["frames"],
        eval_return_mean=metrics["eval"]["return_mean"], backbone_sha256=spec.sha256, seed=p.seed,
    )
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        save_module(tmp / "actor", policy.cpu(), policy_config, meta)
        if video:
            write_gif(tmp / "eval_video.gif", video, fps=10.0)
