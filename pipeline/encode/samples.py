"""Turn one episode (frames, flow, annotations, CLIP embeddings) into the dataset's samples.

Each sample is encoded to bytes by :func:`pipeline.dataset.codec.encode_sample` (the one place
that knows how a field is stored), so the shard writer only stores bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.dataset.codec import encode_sample
from pipeline.dataset.schema import empty_annotation, make_key
from pipeline.encode.inputs import FrameAnnotation
from pipeline.sim.episodes import Episode


def float32_value(value: np.floating | float) -> float:
    """A float32 as the shortest decimal that reads back as the same float32 (``0.24024545``, not
    ``0.24024544656276703``): the JSON stays exact for float32 fields at about half the characters."""
    return float(str(np.float32(value)))


def frame_record(
    episode: Episode, task: str, index: int, step: int, annotation: FrameAnnotation | None
) -> dict[str, Any]:
    """The ``json`` member of frame ``step`` (see ``schema.JSON_DOCS`` for keys and units)."""
    length = episode.length
    has_action = step < length
    action_dim = int(episode.actions.shape[1])
    record = {
        "task": task,
        "episode": index,
        "step": step,
        "length": length,
        "has_action": has_action,
        # float32 in the episode: written as their shortest exact decimals; qpos / qvel are float64, written in full
        "action": [float32_value(a) for a in episode.actions[step]] if has_action else [0.0] * action_dim,
        "reward": float32_value(episode.rewards[step]) if has_action else 0.0,
        "discount": float32_value(episode.discounts[step]) if has_action else 1.0,
        "terminated": bool(episode.terminated[step]) if has_action else False,
        "truncated": bool(episode.truncated[step]) if has_action else False,
        "qpos": [float(q) for q in episode.qpos[step]],
        "qvel": [float(q) for q in episode.qvel[step]],
        "annotated": annotation is not None and annotation.status == "ok",
        "annotation": annotation.record if annotation is not None else empty_annotation(),
    }
    return record


def episode_samples(
    episode: Episode,
    task: str,
    index: int,
    flow: np.ndarray,
    valid: np.ndarray,
    annotations: dict[int, FrameAnnotation],
    clip_image: np.ndarray,
    clip_text: np.ndarray,
) -> list[dict[str, Any]]:
    """The T+1 samples of one episode, in step order.

    Args:
        episode: the collected episode (frames (T+1, H, W, 3) uint8 and per-step arrays).
        task: task name; index: episode index.
        flow: (T, 2, H, W) pixels; valid: (T, H, W) bool.
        annotations: frame index -> annotation (frames without one are absent).
        clip_image: (T+1, D) float16, L2-normalised.
        clip_text: (T+1, R, D) float16 (R = len(TEXT_ROWS)), L2-normalised rows or zeros.

    Returns:
        dicts with ``__key__`` and one bytes value per field of ``schema.FIELDS``.
    """
    length = episode.length
    _, height, width, _ = episode.frames.shape
    zero_flow = np.zeros((2, height, width), np.float32)
    no_valid = np.zeros((height, width), np.bool_)
    samples = []
    for step in range(length + 1):
        last = step == length
        record = frame_record(episode, task, index, step, annotations.get(step))
        samples.append(
            encode_sample(
                make_key(task, index, step),
                episode.frames[step],
                zero_flow if last else flow[step],
                no_valid if last else valid[step],
                clip_image[step],
                clip_text[step],
                record,
            )
        )
    return samples
