"""Small outputs of the finetune stage for people: return summaries and the evaluation video
(curves: DVCLive, in run.py)."""

from __future__ import annotations

import io
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.common.io import write_bytes_atomic


def summarise(returns: Sequence[float]) -> dict[str, float]:
    """Mean, std (population), min and max of episode returns."""
    r = np.asarray(returns, dtype=np.float64)
    return {
        "return_mean": float(r.mean()),
        "return_std": float(r.std()),
        "return_min": float(r.min()),
        "return_max": float(r.max()),
    }


def write_gif(path: str | Path, frames: Sequence[np.ndarray], fps: float) -> None:
    """An animated GIF of (H, W, 3) uint8 frames (deterministic bytes), atomically."""
    from PIL import Image

    images = [Image.fromarray(np.asarray(f, dtype=np.uint8)) for f in frames]
    buffer = io.BytesIO()
    images[0].save(
        buffer, format="GIF", save_all=True, append_images=images[1:], duration=max(20, int(round(1000 / fps))), loop=0
    )
    write_bytes_atomic(path, buffer.getvalue())
