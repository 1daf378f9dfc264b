"""A small synthetic dataset in the encode stage's shard format, for tests and benchmarks.

Each episode shows coloured squares moving at constant velocity and bouncing off the borders; the
flow is exact (the squares' displacement to the next frame, zero elsewhere; zeros and invalid at
an episode's last frame), the "CLIP image embedding" is a fixed random projection of the frame
(so it is a learnable function of the pixels), text embeddings are given on every
``annotate_every``-th frame, the state is (square positions, velocities) and the reward is minus
the first square's distance to the image centre (of the transition to the next frame).

Field formats are those of the encode stage (docs/ARCHITECTURE.md): ``rgb.png``, ``flow.npy``
(2, H, W) float16, ``flowvalid.npy`` (H, W) bool, ``clipimage.npy`` (D,) float16,
``cliptext.npy`` (2, D) float16, ``json``.
"""
from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import webdataset as wds
from PIL import Image

#: Fixed tar member timestamp: same arguments, same bytes.
MTIME = 0


def _png(rgb: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def synthetic_episode(rng: np.random.Generator, steps: int, size: int, squares: int = 2) -> dict[str, np.ndarray]:
    """Frames (T+1, H, W, 3) uint8, flow (T+1, 2, H, W) float32, positions and velocities (T+1, n, 2)."""
    side = max(2, size // 8)
    pos = rng.uniform(0, size - side, (squares, 2))
    vel = rng.uniform(-3, 3, (squares, 2))
    colours = rng.integers(64, 256, (squares, 3))
    frames, flows, positions, velocities = [], [], [], []
    for _ in range(steps + 1):
        positions.append(pos.copy())
        nxt, nvel = pos + vel, vel.copy()
        for i in range(squares):
            for d in range(2):
                if not 0 <= nxt[i, d] <= size - side:
                    nvel[i, d] = -vel[i, d]
                    nxt[i, d] = np.clip(pos[i, d] + nvel[i, d], 0, size - side)
        velocities.append(nvel.copy())
        frame = np.full((size, size, 3), 20, np.uint8)
        flow = np.zeros((2, size, size), np.float32)
        for i in range(squares):
            x, y = np.round(pos[i]).astype(int)
            frame[y : y + side, x : x + side] = colours[i]
            flow[0, y : y + side, x : x + side] = np.round(nxt[i, 0]) - x
            flow[1, y : y + side, x : x + side] = np.round(nxt[i, 1]) - y
        frames.append(frame)
        flows.append(flow)
        pos, vel = nxt, nvel
    return {"frames": np.stack(frames), "flow": np.stack(flows), "pos": np.stack(positions), "vel": np.stack(velocities)}


def write_synthetic_dataset(
    out: str | Path,
    *,
    tasks: tuple[str, ...] = ("squares-a", "squares-b"),
    episodes: int = 3,
    steps: int = 20,
    size: int = 16,
    clip_dim: int = 16,
    annotate_every: int = 5,
    validation_episodes: int = 1,
    shard_maxcount: int = 1000,
    seed: int = 0,
) -> Path:
    """Write ``train/`` and ``validation/`` shards under ``out`` (the last ``validation_episodes``
    episodes of each task go to validation). Returns ``out``."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    projection = rng.standard_normal((size * size * 3, clip_dim)).astype(np.float32)
    text_projection = rng.standard_normal((8, 2 * clip_dim)).astype(np.float32)
    writers = {}
    for split in ("train", "validation"):
        (out / split).mkdir(parents=True, exist_ok=True)
        writers[split] = wds.ShardWriter(str(out / split / "shard-%06d.tar"), maxcount=shard_maxcount, verbose=0, mtime=MTIME)
    try:
        for task_index, task in enumerate(tasks):
            for episode in range(episodes):
                split = "validation" if episode >= episodes - validation_episodes else "train"
                ep = synthetic_episode(rng, steps, size, squares=2 + task_index % 2)
                centre = (size - 1) / 2
                for t in range(steps + 1):
                    frame = ep["frames"][t]
                    clip = frame.reshape(-1).astype(np.float32) / 255.0 @ projection
                    clip /= np.linalg.norm(clip) + 1e-8
                    annotated = t % annotate_every == 0
                    text = np.zeros((2, clip_dim), np.float32)
                    if annotated:
                        text = (np.concatenate([ep["pos"][t, 0], ep["vel"][t, 0], [task_index, 1, episode, t]]) @ text_projection).reshape(2, clip_dim)
                        text /= np.linalg.norm(text, axis=1, keepdims=True) + 1e-8
                    last = t == steps
                    reward = 0.0 if last else float(-np.linalg.norm(ep["pos"][t + 1, 0] - centre) / size)
                    record = {
                        "task": task, "episode": episode, "step": t,
                        "action": [0.0], "reward": reward, "discount": 1.0,
                        "terminated": False, "truncated": last,
                        "qpos": ep["pos"][t].ravel().tolist(), "qvel": ep["vel"][t].ravel().tolist(),
                        "annotated": annotated,
                    }
                    writers[split].write({
                        "__key__": f"{task}__ep{episode:06d}__{t:06d}",
                        "rgb.png": _png(frame),
                        "flow.npy": _npy((np.zeros_like(ep["flow"][t]) if last else ep["flow"][t]).astype(np.float16)),
                        "flowvalid.npy": _npy(np.full((size, size), not last)),
                        "clipimage.npy": _npy(clip.astype(np.float16)),
                        "cliptext.npy": _npy(text.astype(np.float16)),
                        "json": json.dumps(record, sort_keys=True).encode(),
                    })
    finally:
        for writer in writers.values():
            writer.close()
    return out
