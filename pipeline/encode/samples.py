"""Turn one episode (frames, flow, annotations, CLIP embeddings) into WebDataset samples.

Every member is encoded here to bytes, deterministically (PNG without
timestamps, ``.npy`` via numpy's format writer, JSON with sorted keys), so the
tar writer only stores bytes.
"""
from __future__ import annotations

import io
import json
from typing import Any, Iterator

import numpy as np
from PIL import Image

from pipeline.encode.inputs import FrameAnnotation
from pipeline.encode.schema import empty_annotation, make_key
from pipeline.episodes import Episode

#: zlib level of the PNG frames (lossless at any level; 6 is PIL's default trade-off).
PNG_COMPRESS_LEVEL = 6


def png_bytes(frame: np.ndarray) -> bytes:
    """Lossless PNG of an (H, W, 3) uint8 RGB frame (no timestamp chunks: same pixels, same bytes)."""
    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(frame), mode="RGB").save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def npy_bytes(array: np.ndarray) -> bytes:
    """``.npy`` bytes of ``array`` (C order, no pickle)."""
    buffer = io.BytesIO()
    np.lib.format.write_array(buffer, np.ascontiguousarray(array), allow_pickle=False)
    return buffer.getvalue()


def json_bytes(obj: Any) -> bytes:
    """Compact JSON with sorted keys; NaN/inf are refused (they are not JSON)."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def frame_record(episode: Episode, task: str, index: int, step: int, annotation: FrameAnnotation | None) -> dict[str, Any]:
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
        "action": [float(a) for a in episode.actions[step]] if has_action else [0.0] * action_dim,
        "reward": float(episode.rewards[step]) if has_action else 0.0,
        "discount": float(episode.discounts[step]) if has_action else 1.0,
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
) -> Iterator[dict[str, Any]]:
    """Yield the T+1 samples of one episode, in step order.

    Args:
        episode: the collected episode (frames (T+1, H, W, 3) uint8 and per-step arrays).
        task: task name; index: episode index.
        flow: (T, 2, H, W) float16 pixels; valid: (T, H, W) bool.
        annotations: frame index -> annotation (frames without one are absent).
        clip_image: (T+1, D) float32, L2-normalised.
        clip_text: (T+1, 2, D) float32, L2-normalised rows or zeros.

    Yields:
        dicts with ``__key__`` and one bytes value per field of ``schema.FIELDS``.
    """
    length = episode.length
    _, height, width, _ = episode.frames.shape
    zero_flow = np.zeros((2, height, width), np.float16)
    no_valid = np.zeros((height, width), np.bool_)
    for step in range(length + 1):
        last = step == length
        sample = {
            "__key__": make_key(task, index, step),
            "rgb.png": png_bytes(episode.frames[step]),
            "flow.npy": npy_bytes(zero_flow if last else flow[step]),
            "flowvalid.npy": npy_bytes(no_valid if last else valid[step]),
            "clipimage.npy": npy_bytes(clip_image[step].astype(np.float16)),
            "cliptext.npy": npy_bytes(clip_text[step].astype(np.float16)),
            "json": json_bytes(frame_record(episode, task, index, step, annotations.get(step))),
        }
        yield sample
