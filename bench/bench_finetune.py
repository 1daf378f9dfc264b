"""Benchmark (not a test): online SAC on cartpole-swingup, scratch vs pretrained backbone.

Runs the finetune stage (``pipeline.finetune.run.run``) for ``--frames``
environment frames (after action repeat; the literature's budget is 100k at action repeat 8) once
per ``--modes`` entry, with the real-experiment configuration below, and prints for each: the
evaluation returns (mean +- std), updates/s, acting frames/s and wall time, and the time that
``--target-frames`` would take at the measured speeds.

Bare baselines, measured in the same run on the same machine:
* environment alone: frames/s of the same env (same render size, action repeat) under random
  actions: the ceiling of acting speed (acting adds one encoder forward per agent step);
* bare SAC update: updates/s of the same SAC update with the DrQ conv encoder (4 convs of 32
  channels, Linear -> 50, LayerNorm, tanh: the encoder of DrQ's published numbers) in place of
  the dual-path backbone: the cost of the backbone in each update.

Reference points at 100k frames on cartpole-swingup: DrQ 759 +- 88, DrQ-v2 about 626.

    python bench/bench_finetune.py --backbone data/pretrain --frames 100000
    python bench/bench_finetune.py --backbone data/pretrain --frames 3000 --batch-size 128   # a quick look
"""

from __future__ import annotations

import argparse
import logging
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.common.logs import setup_logging
from pipeline.common.rendering import setup_headless_rendering
from pipeline.config import load_params
from pipeline.config.finetune import FinetuneParams

#: The real experiment (DrQ's cartpole-swingup settings where they apply; see docs/ARCHITECTURE.md).
REAL_EXPERIMENT = dict(
    task="cartpole-swingup",
    action_repeat=8,
    episode_frames=1000,
    frames=100_000,
    seed_frames=4000,
    batch_size=512,
    hidden_dim=1024,
    hidden_depth=2,
    lr=1e-3,
    alpha_lr=1e-3,
    init_temperature=0.1,
    tau=0.01,
    actor_update_every=2,
    target_update_every=2,
    n_step=1,
    gamma=0.99,
    aug_pad=4,
    replay_capacity=100_000,
    eval_every_frames=10_000,
    eval_episodes=10,
)


class DrQEncoder(nn.Module):
    """DrQ's pixel encoder (the bare baseline): 4 unpadded 3x3 convs, Linear -> feature_dim, LayerNorm, tanh."""

    def __init__(self, frame_stack: int, image_size: int, feature_dim: int = 50) -> None:
        super().__init__()
        self.feature_dim = feature_dim
        self.convs = nn.Sequential(
            nn.Conv2d(3 * frame_stack, 32, 3, stride=2),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3),
            nn.ReLU(),
            nn.Conv2d(32, 32, 3),
            nn.ReLU(),
        )
        side = (image_size - 3) // 2 + 1 - 6
        self.head = nn.Sequential(nn.Linear(32 * side * side, feature_dim), nn.LayerNorm(feature_dim), nn.Tanh())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.head(self.convs(obs.float() / 255.0).flatten(1))


def env_baseline(params: FinetuneParams, image_size: int, steps: int) -> float:
    """Frames/s (after action repeat) of the bare environment under uniform random actions."""
    from pipeline.collect import make_env

    env = make_env(
        params.task,
        image_size=image_size,
        camera=params.camera,
        action_repeat=params.action_repeat,
        render_mode=params.render_mode,
        episode_steps=params.episode_frames // params.action_repeat,
        seed=0,
    )
    rng = np.random.default_rng(0)
    try:
        result = env.reset()
        start = time.perf_counter()
        for _ in range(steps):
            result = env.step(rng.uniform(env.action_low, env.action_high).astype(np.float32))
            if result.terminated or result.truncated:
                env.reset()
        return steps * params.action_repeat / (time.perf_counter() - start)
    finally:
        env.close()


def update_rate(
    encoder: nn.Module, params: FinetuneParams, frame_stack: int, image_size: int, device: torch.device, updates: int
) -> float:
    """Updates/s of SAC with ``encoder`` on a replay buffer of random frames (after one warm-up update)."""
    from pipeline.finetune.replay_buffer import ReplayBuffer
    from pipeline.finetune.sac import SAC

    agent = SAC(encoder, 1, params, device)
    buffer = ReplayBuffer(4096, (3, image_size, image_size), 1, frame_stack, params.n_step, params.gamma)
    rng = np.random.default_rng(0)
    for _ in range(4):
        buffer.start_episode(rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8))
        for _ in range(250):
            buffer.add_step(
                rng.uniform(-1, 1, 1).astype(np.float32),
                0.5,
                False,
                rng.integers(0, 256, (image_size, image_size, 3), dtype=np.uint8),
            )
    agent.update(buffer.sample(params.batch_size))
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(updates):
        agent.update(buffer.sample(params.batch_size))
    if device.type == "cuda":
        torch.cuda.synchronize()
    return updates / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--backbone",
        default="data/pretrain",
        help="the pretrain stage's output (holding backbone/) (default: %(default)s)",
    )
    parser.add_argument(
        "--params",
        default="params.yaml",
        help="params file; its finetune section is the base, overridden by the real-experiment settings",
    )
    parser.add_argument("--frames", type=int, default=100_000, help="environment frames per run (default: %(default)s)")
    parser.add_argument(
        "--target-frames",
        type=int,
        default=100_000,
        help="frames to extrapolate the wall time to (default: %(default)s)",
    )
    parser.add_argument(
        "--modes", default="scratch,pretrained", help="comma-separated encoder_init values (default: %(default)s)"
    )
    parser.add_argument("--batch-size", type=int, default=None, help="override the real experiment's batch size (512)")
    parser.add_argument("--hidden-dim", type=int, default=None, help="override the real experiment's MLP width (1024)")
    parser.add_argument(
        "--seed-frames", type=int, default=None, help="override the random-action warm-up frames (4000)"
    )
    parser.add_argument("--eval-every", type=int, default=None, help="override eval_every_frames (10000)")
    parser.add_argument("--eval-episodes", type=int, default=None, help="override eval_episodes (10)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--baseline-updates", type=int, default=5, help="updates timed for the bare-update baseline")
    parser.add_argument(
        "--out", default=None, help="folder for the runs' outputs and checkpoints (default: a temporary folder)"
    )
    args = parser.parse_args()

    setup_headless_rendering()
    setup_logging("WARNING")
    logging.getLogger("pipeline.finetune").setLevel(logging.INFO)

    from pipeline.common.device import select_device
    from pipeline.finetune.encoder import build_encoder, read_spec
    from pipeline.finetune.run import run as finetune

    overrides = {
        **REAL_EXPERIMENT,
        "frames": args.frames,
        "device": args.device,
        "threads": args.threads,
        "seed": args.seed,
    }
    for key, value in (
        ("batch_size", args.batch_size),
        ("hidden_dim", args.hidden_dim),
        ("seed_frames", args.seed_frames),
        ("eval_every_frames", args.eval_every),
        ("eval_episodes", args.eval_episodes),
    ):
        if value is not None:
            overrides[key] = value
    base = load_params(args.params).finetune.model_dump()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = read_spec(args.backbone)
    device = select_device(args.device)
    out = Path(args.out) if args.out else Path(tempfile.mkdtemp(prefix="bench_finetune_"))

    params = FinetuneParams(**{**base, **overrides, "checkpoint_dir": str(out / "checkpoints")})
    print(
        f"cartpole-swingup SAC benchmark: {args.frames} frames per run (action repeat {params.action_repeat}), "
        f"batch {params.batch_size}, hidden {params.hidden_dim}, device {device}, "
        f"torch threads {torch.get_num_threads()}, backbone {spec.folder} ({spec.image_size}px, k={spec.frame_stack})"
    )

    env_fps = env_baseline(params, spec.image_size, steps=200)
    torch.manual_seed(0)
    drq_ups = update_rate(
        DrQEncoder(spec.frame_stack, spec.image_size),
        params,
        spec.frame_stack,
        spec.image_size,
        device,
        args.baseline_updates,
    )
    torch.manual_seed(0)
    backbone_ups = update_rate(
        build_encoder(spec, "scratch"), params, spec.frame_stack, spec.image_size, device, args.baseline_updates
    )
    print(f"bare environment (random actions): {env_fps:.1f} frames/s")
    print(
        f"bare SAC update, DrQ encoder: {drq_ups:.2f} updates/s; "
        f"with the dual-path backbone: {backbone_ups:.2f} updates/s (ratio {backbone_ups / drq_ups:.2f})"
    )

    rows = []
    for mode in [m.strip() for m in args.modes.split(",") if m.strip()]:
        run_params = params.model_copy(update={"encoder_init": mode})
        start = time.perf_counter()
        result = finetune(args.backbone, out / mode / "out", run_params)
        wall = time.perf_counter() - start
        t = result.timing
        ups = t["updates"] / t["update_s"] if t["update_s"] else float("nan")
        act_fps = t["env_frames"] / t["env_s"] if t["env_s"] else float("nan")
        per_frame_eval = t["eval_s"] / max(1, len(result.evals))
        steps_target = args.target_frames // run_params.action_repeat
        updates_target = (
            max(0, steps_target - run_params.seed_frames // run_params.action_repeat) * run_params.updates_per_step
        )
        evals_target = args.target_frames // run_params.eval_every_frames + 1
        projected = args.target_frames / act_fps + updates_target / ups + evals_target * per_frame_eval
        curve = ", ".join(f"{e['frames']}: {e['return_mean']:.1f} +- {e['return_std']:.1f}" for e in result.evals)
        rows.append((mode, result.eval["return_mean"], result.eval["return_std"], ups, act_fps, wall, projected))
        print(f"[{mode}] eval returns by frame: {curve}")
        print(
            f"[{mode}] {t['updates']} updates at {ups:.2f} updates/s; acting {act_fps:.1f} frames/s "
            f"(ratio to bare env {act_fps / env_fps:.2f}); {t['eval_s']:.0f} s evaluating; wall {wall:.0f} s; "
            f"projected for {args.target_frames} frames: {projected / 3600:.1f} h"
        )

    print("\nmode        final eval return     updates/s  acting fps   wall s   projected h @ target")
    for mode, mean, std, ups, fps, wall, projected in rows:
        print(f"{mode:<11} {mean:8.1f} +- {std:<8.1f} {ups:10.2f} {fps:11.1f} {wall:8.0f} {projected / 3600:10.1f}")
    print("reference at 100k frames: DrQ 759 +- 88, DrQ-v2 ~626")
    print(f"outputs: {out}")


if __name__ == "__main__":
    main()
