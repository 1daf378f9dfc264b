"""``preview.gif``: a short animation of recorded episodes for a person to look at.

Each frame shows the RGB image, and when recorded, the depth (grey, near = bright, background
black) and the segmentation (a fixed colour per geom id, background black) side by side.
The GIF's bytes depend only on the episodes (fixed palette quantisation, no timestamps).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.common.io import atomic_path
from pipeline.sim.episodes import Episode

#: GIF frame delays are multiples of 10 ms and most viewers clamp delays below 20 ms.
MIN_DELAY_MS = 20


def _depth_rgb(depth: np.ndarray, segmentation: np.ndarray | None) -> np.ndarray:
    """(T, H, W) float32 metres -> (T, H, W, 3) uint8; the scale is fixed over the episode."""
    foreground = depth < np.float32(0.99) * depth.max() if segmentation is None else segmentation >= 0
    if not foreground.any():
        return np.zeros(depth.shape + (3,), np.uint8)
    near, far = float(depth[foreground].min()), float(depth[foreground].max())
    scaled = 1.0 - (depth - near) / max(far - near, 1e-6)
    grey = np.where(foreground, 40 + 215 * np.clip(scaled, 0.0, 1.0), 0).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _segmentation_rgb(segmentation: np.ndarray) -> np.ndarray:
    """(T, H, W) int32 geom ids -> (T, H, W, 3) uint8 with a fixed colour per id."""
    ids = np.arange(int(segmentation.max()) + 1 if segmentation.size else 1, dtype=np.uint32)
    # A cheap integer hash gives well-spread, deterministic colours.
    hashed = (ids * np.uint32(2654435761)) & np.uint32(0xFFFFFF)
    palette = np.stack([(hashed >> 16) & 255, (hashed >> 8) & 255, hashed & 255], axis=-1).astype(np.uint8)
    palette = np.maximum(palette, 48)
    out = np.zeros(segmentation.shape + (3,), np.uint8)
    mask = segmentation >= 0
    out[mask] = palette[segmentation[mask]]
    return out


def preview_frames(episode: Episode) -> np.ndarray:
    """(T+1, H, k*W, 3) uint8: RGB, then depth and segmentation when the episode has them."""
    panels = [episode.frames]
    if episode.depth is not None:
        panels.append(_depth_rgb(episode.depth, episode.segmentation))
    if episode.segmentation is not None:
        panels.append(_segmentation_rgb(episode.segmentation))
    return np.concatenate(panels, axis=2)


def write_preview(path: str | Path, episodes: list[Episode], fps: float) -> None:
    """Write ``episodes`` one after another as an animated GIF at ``fps`` frames/s, atomically."""
    from PIL import Image

    frames = np.concatenate([preview_frames(e) for e in episodes], axis=0)
    # One palette for the whole GIF, from up to 16 frames spread over it: quantising every frame
    # with its own median-cut palette costs 100x more (about 1 s per 250 frames) for no visible gain.
    sample = frames[:: max(1, len(frames) // 16)]
    palette = Image.fromarray(np.concatenate(list(sample), axis=0)).quantize(
        colors=255, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE
    )
    images = [Image.fromarray(f).quantize(palette=palette, dither=Image.Dither.NONE) for f in frames]
    delay = max(MIN_DELAY_MS, int(round(100.0 / fps)) * 10)
    with atomic_path(path) as tmp, open(tmp, "wb") as f:
        images[0].save(f, format="GIF", save_all=True, append_images=images[1:], duration=delay, loop=0, optimize=False)
