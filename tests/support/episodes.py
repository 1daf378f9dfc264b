"""Test factory for schema-valid episodes of synthetic scenes (``pipeline.sim.episodes.Episode``).

Tests give what their scene is about (frames, bodies, camera, truth); the bookkeeping every
episode needs (meta, zero rewards, unit discounts, truncation at the last step) is filled in here.
"""

from __future__ import annotations

import numpy as np

from pipeline.sim.episodes import Episode, EpisodeMeta


def make_episode(
    frames: np.ndarray,
    *,
    body_pos: np.ndarray,
    body_quat: np.ndarray,
    camera_extrinsics: np.ndarray,
    camera_intrinsics: np.ndarray,
    geom_body: np.ndarray,
    depth: np.ndarray | None = None,
    segmentation: np.ndarray | None = None,
    actions: np.ndarray | None = None,
    task: str = "synthetic-planes",
    index: int = 0,
) -> Episode:
    """An episode of ``frames`` (T+1, H, W, 3) uint8 with T = len(frames) - 1 steps.

    ``body_pos`` (T+1, B, 3) and ``body_quat`` (T+1, B, 4, wxyz) place bodies 0..B-1 (0: world);
    ``geom_body`` (G,) int32 names each geom's body; ``camera_extrinsics`` (T+1, 4, 4) world to
    camera, ``camera_intrinsics`` (3, 3) pixels. ``depth`` (T+1, H, W) float32 metres and
    ``segmentation`` (T+1, H, W) int32 geom ids (-1: none) are the simulator's truth, or None.
    ``actions`` (T, 1) float32 default to zeros.
    """
    n, size = len(frames), frames.shape[1]
    steps = n - 1
    meta = EpisodeMeta(
        task=task,
        suite="synthetic",
        episode=index,
        seed=index,
        policy="scripted",
        action_repeat=1,
        image_size=size,
        camera=0,
        render_mode="fast",
        control_timestep=0.05,
        length=steps,
        episode_return=0.0,
        terminated=False,
        truncated=True,
        action_low=[-1.0],
        action_high=[1.0],
        body_names=["world"] + [f"body{i}" for i in range(1, body_pos.shape[1])],
        geom_names=[f"plane{g}" for g in range(len(geom_body))],
    )
    episode = Episode(
        frames=frames,
        actions=np.zeros((steps, 1), np.float32) if actions is None else actions,
        rewards=np.zeros(steps, np.float32),
        discounts=np.ones(steps, np.float32),
        terminated=np.zeros(steps, bool),
        truncated=np.eye(1, steps, steps - 1, dtype=bool)[0],
        qpos=np.zeros((n, 1)),
        qvel=np.zeros((n, 1)),
        body_pos=np.asarray(body_pos, np.float64),
        body_quat=np.asarray(body_quat, np.float64),
        camera_extrinsics=camera_extrinsics,
        camera_intrinsics=camera_intrinsics,
        geom_body=np.asarray(geom_body, np.int32),
        meta=meta,
        depth=depth,
        segmentation=segmentation,
    )
    episode.validate()
    return episode
