"""Small datasets for tests and benchmarks, built through the real writers.

* :func:`write_synthetic_inputs`: episodes, flow and annotations in the collect / flow / annotate
  file formats (a coloured square moving at a constant velocity, so the exact flow is known;
  annotations describe it), written with the upstream stages' own writers
  (``pipeline.sim.episodes.save_episode``, deterministic ``.npz`` and JSON) and carrying the
  provenance (episode file name and SHA-256) the encode stage checks;
* :func:`write_synthetic_dataset`: those inputs encoded by the real encode stage
  (:func:`pipeline.encode.run.run`) with :class:`ProjectionClip`, a tiny deterministic stand-in
  for CLIP, so the result is a dataset the real validator accepts.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.io import dumps_json, sha256_of, write_json_atomic, write_npz_atomic
from pipeline.sim.episodes import Episode, EpisodeMeta, episode_filename, save_episode


@functools.cache
def physics_sizes(task: str) -> tuple[int, int]:
    """(nq, nv) of ``task``'s MuJoCo model, so that a synthetic episode's qpos/qvel have the widths the
    probe's joint state (:func:`pipeline.sim.joint_state.state_matrix`) expects; (3, 3) for a made-up task name."""
    from pipeline.common.errors import UserError
    from pipeline.sim.task_physics import load_task_physics

    try:
        model, _, close = load_task_physics(task)
    except UserError:
        return 3, 3
    sizes = int(model.nq), int(model.nv)
    close()
    return sizes


def synthetic_episode(
    task: str, index: int, length: int, size: int, seed: int = 0, action_dim: int = 2
) -> tuple[Episode, np.ndarray, np.ndarray]:
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
        x0, y0 = np.round(positions[t]).astype(int) % (size - side)
        frames[t, y0 : y0 + side, x0 : x0 + side] = colour
        if t < length:
            flow[t, 0, y0 : y0 + side, x0 : x0 + side] = velocity[0]
            flow[t, 1, y0 : y0 + side, x0 : x0 + side] = velocity[1]
    valid = np.ones((length, size, size), bool)
    nq, nv = physics_sizes(task)
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
        # the square's position and velocity in the first two of the task's model's qpos / qvel
        qpos=np.concatenate([positions, np.zeros((length + 1, nq - 2))], axis=1),
        qvel=np.tile(np.append(velocity, np.zeros(nv - 2)), (length + 1, 1)),
        body_pos=np.zeros((length + 1, nbody, 3)),
        body_quat=np.tile(np.array([1.0, 0, 0, 0]), (length + 1, nbody, 1)),
        camera_extrinsics=np.tile(np.eye(4), (length + 1, 1, 1)),
        camera_intrinsics=np.array([[size, 0, size / 2], [0, size, size / 2], [0, 0, 1]], np.float64),
        geom_body=np.array([0, 1, 1], np.int32),
        meta=EpisodeMeta(
            task=task,
            suite="synthetic",
            episode=index,
            seed=seed * 1000 + index,
            policy="random",
            action_repeat=1,
            image_size=size,
            camera=0,
            render_mode="fast",
            control_timestep=0.01,
            length=length,
            episode_return=float(rewards.sum()),
            terminated=False,
            truncated=True,
            action_low=[-1.0] * action_dim,
            action_high=[1.0] * action_dim,
            body_names=["world", "square"],
            geom_names=["floor", "square", "marker"],
        ),
    )
    return episode, flow, valid


def synthetic_annotations(
    task: str,
    index: int,
    length: int,
    every_k: int,
    failed_steps: tuple[int, ...] = (),
    episode_sha256: str | None = None,
    size: int = 16,
) -> dict:
    """An annotation file body in the annotate stage's format (records at steps 0, k, 2k, ...).

    ``episode_sha256``: the SHA-256 of the episode file, recorded as ``source`` (as the annotate stage does).
    """
    records = []
    for step in range(0, length + 1, every_k):
        if step in failed_steps:
            records.append(
                {"step": step, "status": "failed", "annotation": None, "raw": "not json", "error": "invalid JSON"}
            )
            continue
        side = "left" if (step // every_k) % 2 else "right"
        records.append(
            {
                "step": step,
                "status": "ok",
                "annotation": {
                    "caption": f"A square moves to the {side} in {task}.",
                    "objects": [
                        {
                            "name": "square",
                            "description": f"a coloured square, step {step}",
                            "box": [1, 2, min(10, size), min(12, size)],
                        },
                        {"name": "background", "description": "plain dark floor", "box": None},
                    ],
                    "motion": f"the square drifts {side}",
                },
                "raw": "{...}",
                "error": None,
            }
        )
    body = {
        "task": task,
        "episode": index,
        "backend": "synthetic",
        "model": "none",
        "prompt": "Describe {task}.",
        "every_k": every_k,
        "weights": {"source": "none"},
        "records": records,
    }
    if episode_sha256 is not None:
        body["source"] = {"episode": episode_filename(index), "episode_sha256": episode_sha256}
    return body


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
            episode_path = dirs[0] / task / episode_filename(i)
            save_episode(episode_path, episode)
            digest = sha256_of(episode_path)
            meta = {
                "backend": "synthetic",
                "model": "exact",
                "task": task,
                "episode": episode_filename(i),
                "source": {"episode_sha256": digest},
            }
            write_npz_atomic(
                dirs[1] / task / episode_filename(i), {"flow": flow, "valid": valid, "meta": np.array(dumps_json(meta))}
            )
            body = synthetic_annotations(
                task, i, length, every_k, (failed or {}).get((task, i), ()), episode_sha256=digest, size=size
            )
            write_json_atomic(dirs[2] / task / f"episode_{i:06d}.json", body)
    return dirs


class ProjectionClip:
    """A deterministic stand-in for CLIP (the encode stage's ``ClipEncoder``): image embeddings are a fixed
    random projection of the pixels (a learnable function of the frame), text embeddings a hash of the text."""

    def __init__(self, dim: int = 8, seed: int = 0) -> None:
        self.dim = dim
        self.seed = seed
        self._projections: dict[int, np.ndarray] = {}

    def encode_images(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 -> (N, D) float32, unit rows."""
        flat = frames.reshape(len(frames), -1).astype(np.float32) / 255.0
        size = flat.shape[1]
        if size not in self._projections:
            self._projections[size] = (
                np.random.default_rng([self.seed, size]).standard_normal((size, self.dim)).astype(np.float32)
            )
        out = flat @ self._projections[size]
        return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-8)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N strings -> (N, D) float32, unit rows (seeded by the text's bytes)."""
        rows = [np.random.default_rng([self.seed, *text.encode()]).standard_normal(self.dim) for text in texts]
        out = np.array(rows, np.float32).reshape(len(texts), self.dim)
        return out / (np.linalg.norm(out, axis=1, keepdims=True) + 1e-8)

    def provenance(self) -> dict[str, Any]:
        return {
            "backend": "test-projection",
            "model": "projection",
            "weights_param": "random",
            "weights": {"sha256": "random init"},
            "random_init": True,
            "embed_dim": self.dim,
            "precision": "fp32",
            "preprocess": {"resize_mode": "none", "size": None, "interpolation": "none", "mean": None, "std": None},
        }


def write_synthetic_dataset(
    out: str | Path,
    *,
    tasks: tuple[str, ...] = ("squares-a", "squares-b"),
    episodes: int = 3,
    steps: int = 20,
    size: int = 16,
    clip_dim: int = 16,
    annotate_every: int = 5,
    val_fraction: float = 0.25,
    shard_maxcount: int = 1000,
    failed: dict[tuple[str, int], tuple[int, ...]] | None = None,
) -> Path:
    """A dataset folder at ``out`` written by the encode stage from :func:`write_synthetic_inputs`
    (inputs beside it, in ``<out>.inputs/``) with a :class:`ProjectionClip` of ``clip_dim``. Returns ``out``."""
    from pipeline.config import EncodeParams, WeightsParams
    from pipeline.encode.run import run as encode

    out = Path(out)
    inputs = write_synthetic_inputs(
        out.parent / f"{out.name}.inputs", tasks, episodes, steps, size, annotate_every, failed
    )
    params = EncodeParams(val_fraction=val_fraction, shard_maxcount=shard_maxcount)
    encode(*inputs, out, params, WeightsParams(), encoder=ProjectionClip(clip_dim))
    return out


def restamp(dirs: tuple[Path, Path, Path], task: str, index: int) -> None:
    """Record the current SHA-256 of episode ``index`` of ``task`` in its flow meta and annotation ``source``,
    as rerunning the flow and annotate stages would (for tests that edit an episode file on purpose)."""
    import json

    episode_path = dirs[0] / task / episode_filename(index)
    digest = sha256_of(episode_path)
    flow_path = dirs[1] / task / episode_filename(index)
    with np.load(flow_path) as npz:
        arrays = {name: npz[name] for name in npz.files}
    meta = json.loads(arrays["meta"].item())
    meta["source"]["episode_sha256"] = digest
    arrays["meta"] = np.array(dumps_json(meta))
    write_npz_atomic(flow_path, arrays)
    notes_path = dirs[2] / task / f"episode_{index:06d}.json"
    body = json.loads(notes_path.read_text())
    body["source"] = {"episode": episode_path.name, "episode_sha256": digest}
    write_json_atomic(notes_path, body)


def simulate_inputs(root: Path, task: str, collect: dict[str, Any], every_k: int) -> tuple[Any, Path, Path, Path]:
    """Episodes, flow and annotations of ``task`` made by the real collect, flow (simulator) and annotate
    (simulator) stages under ``root``; ``collect`` is the collect section (one worker, no previews).

    Returns ``(params, episodes, flow, annotations)``: the parsed params and the three input folders
    that the encode stage reads (one subfolder per task).
    """
    from pipeline.annotate.run import run as annotate
    from pipeline.collect import collect_task
    from pipeline.config import parse_params
    from pipeline.flow import run_flow

    params = parse_params(
        {
            "collect": {"tasks": [task], "workers": 1, "preview_episodes": 0, **collect},
            "annotate": {"every_k": every_k, "cache_dir": str(root / "cache")},
        }
    )
    episodes, flow, notes = root / "episodes", root / "flow", root / "annotations"
    collect_task(task, params.collect, episodes / task)
    run_flow(episodes / task, flow / task, root / "m" / "flow.json", params.flow, params.weights)
    annotate(episodes / task, notes / task, params.annotate, params.weights, metrics=root / "m" / "annotate.json")
    return params, episodes, flow, notes
