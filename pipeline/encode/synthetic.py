"""Small synthetic inputs in the collect / flow / annotate file formats, for tests and benchmarks.

A coloured square moves across a plain background at a constant velocity, so the
exact flow is known; annotations describe it. Written with the same writers and
schemas the upstream stages use (``pipeline.episodes.save_episode``, deterministic
``.npz`` and JSON), so the encode stage reads them exactly as it reads real ones.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.episodes import Episode, EpisodeMeta, episode_filename, save_episode
from pipeline.io import dumps_json, write_json_atomic, write_npz_atomic


def synthetic_episode(task: str, index: int, length: int, size: int, seed: int = 0, action_dim: int = 2) -> tuple[Episode, np.ndarray, np.ndarray]:
    """An episode of ``length`` steps with ``size`` x ``size`` frames, its flow (T, 2, H, W) float16 and valid mask."""
    rng = np.random.default_rng([seed, index, len(task)])
    velocity = rng.uniform(-1.5, 1.5, size=2)
    side = max(size // 4, 2)
    start = rng.uniform(0, size - side, size=2)
    colour = rng.integers(64, 256, size=3).astype(np.uint8)
    frames = np.zeros((length + 1, size, size, 3), np.uint8)
    frames[:] = np.array([20, 30, 40], np.uint8)
    flow = np.zeros((length, 2, size, size), np.float16)
    positions = start + np.arange(length + 1)[:, None] * velocity
    for t in range(length + 1):
        x0, y0 = (np.round(positions[t]).astype(int) % (size - side))
        frames[t, y0 : y0 + side, x0 : x0 + side] = colour
        if t < length:
            flow[t, 0, y0 : y0 + side, x0 : x0 + side] = velocity[0]
            flow[t, 1, y0 : y0 + side, x0 : x0 + side] = velocity[1]
    valid = np.ones((length, size, size), bool)
    nbody = 2
    truncated = np.zeros(length, bool)
    truncated[-1] = True
    rewards = rng.uniform(0, 1, length).astype(np.float32)
    episode = Episode(
        frames=frames,
        actions=rng.uniform(-1, 1, (length, action_dim)).astype(np.float32),
        rewards=rewards,
        discounts=np.ones(length, np.float32),
        terminated=np.zeros(length, bool),
        truncated=truncated,
        qpos=np.concatenate([positions, np.zeros((length + 1, 1))], axis=1),
        qvel=np.tile(np.append(velocity, 0.0), (length + 1, 1)),
        body_pos=np.zeros((length + 1, nbody, 3)),
        body_quat=np.tile(np.array([1.0, 0, 0, 0]), (length + 1, nbody, 1)),
        camera_extrinsics=np.tile(np.eye(4), (length + 1, 1, 1)),
        camera_intrinsics=np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], np.float64),
        geom_body=np.array([0, 1, 1], np.int32),
        meta=EpisodeMeta(
            task=task, suite="synthetic", episode=index, seed=seed * 1000 + index, policy="random", action_repeat=1,
            image_size=size, camera=0, render_mode="fast", control_timestep=0.01, length=length,
            episode_return=float(rewards.sum()), terminated=False, truncated=True, action_low=[-1.0] * action_dim,
            action_high=[1.0] * action_dim, body_names=["world", "square"], geom_names=["floor", "square", "marker"],
        ),
    )
    return episode, flow, valid


def synthetic_annotations(task: str, index: int, length: int, every_k: int, failed_steps: tuple[int, ...] = ()) -> dict:
    """An annotation file body in the annotate stage's format (records at steps 0, k, 2k, ...)."""
    records = []
    for step in range(0, length + 1, every_k):
        if step in failed_steps:
            records.append({"step": step, "status": "failed", "annotation": None, "raw": "not json", "error": "invalid JSON"})
            continue
        side = "left" if (step // every_k) % 2 else "right"
        records.append({
            "step": step,
            "status": "ok",
            "annotation": {
                "caption": f"A square moves to the {side} in {task}.",
                "objects": [
                    {"name": "square", "description": f"a coloured square, step {step}", "box": [1, 2, 10, 12]},
                    {"name": "background", "description": "plain dark floor", "box": None},
                ],
                "motion": f"the square drifts {side}",
            },
            "raw": "{...}",
            "error": None,
        })
    return {"task": task, "episode": index, "backend": "synthetic", "model": "none", "prompt": "Describe {task}.",
            "every_k": every_k, "weights": {"source": "none"}, "records": records}


def write_synthetic_inputs(
    root: str | Path,
    tasks: tuple[str, ...] = ("cartpole-swingup",),
    episodes: int = 3,
    length: int = 8,
    size: int = 16,
    every_k: int = 3,
    failed: dict[tuple[str, int], tuple[int, ...]] | None = None,
) -> tuple[Path, Path, Path]:
    """Write ``root/{episodes,flow,annotations}/<task>/...``; returns the three folders."""
    root = Path(root)
    dirs = root / "episodes", root / "flow", root / "annotations"
    for task in tasks:
        for i in range(episodes):
            episode, flow, valid = synthetic_episode(task, i, length, size)
            save_episode(dirs[0] / task / episode_filename(i), episode)
            meta = np.array(dumps_json({"backend": "synthetic", "model": "exact", "task": task, "episode": i}))
            write_npz_atomic(dirs[1] / task / episode_filename(i), {"flow": flow, "valid": valid, "meta": meta})
            body = synthetic_annotations(task, i, length, every_k, (failed or {}).get((task, i), ()))
            write_json_atomic(dirs[2] / task / f"episode_{i:06d}.json", body)
    return dirs
