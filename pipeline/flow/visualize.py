"""Colour-wheel flow images for people: hue = direction, saturation = magnitude, black = invalid.

A preview PNG shows, left to right: frame t, frame t+1, the stage's flow and,
when the episode has simulator truth and the backend is not the simulator, the
exact flow - all flows on the same magnitude scale so they can be compared.
Directions: right = red, down = yellow-green, left = cyan, up = violet
(OpenCV hue of the angle of (dx, dy) in image axes).
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from pipeline.common.io import write_bytes_atomic


def flow_to_rgb(flow: np.ndarray, valid: np.ndarray | None = None, max_magnitude: float | None = None) -> np.ndarray:
    """Colour-wheel image (H, W, 3) uint8 RGB of ``flow`` (2, H, W) in pixels.

    Args:
        flow: (2, H, W) dx, dy.
        valid: (H, W) bool; invalid pixels are drawn black.
        max_magnitude: flow length drawn fully saturated (default: the largest valid one).
    """
    dx = flow[0].astype(np.float32)
    dy = flow[1].astype(np.float32)
    magnitude, angle = cv2.cartToPolar(dx, dy, angleInDegrees=True)
    if valid is None:
        valid = np.ones(dx.shape, bool)
    if max_magnitude is None:
        max_magnitude = float(magnitude[valid].max()) if valid.any() else 0.0
    scale = max(max_magnitude, 1e-6)
    hsv = np.empty((*dx.shape, 3), np.uint8)
    hsv[..., 0] = np.round(angle / 2.0).astype(np.uint8) % 180  # OpenCV hue is 0..179
    hsv[..., 1] = np.round(np.clip(magnitude / scale, 0.0, 1.0) * 255).astype(np.uint8)
    hsv[..., 2] = 255
    rgb = cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)
    rgb[~valid] = 0
    return rgb


def preview_image(
    first: np.ndarray,
    second: np.ndarray,
    flows: list[tuple[np.ndarray, np.ndarray]],
    min_height: int = 192,
) -> np.ndarray:
    """Side-by-side (H', W', 3) uint8 RGB: frame t, frame t+1, then one colour wheel per ``(flow, valid)``.

    Every flow uses the same magnitude scale (the largest valid magnitude among them);
    the strip is enlarged (nearest neighbour) to at least ``min_height`` rows.
    """
    peaks = [float(np.hypot(f[0], f[1])[v].max()) for f, v in flows if v.any()]
    scale = max(peaks, default=0.0)
    gap = np.full((first.shape[0], 2, 3), 255, np.uint8)
    tiles = [first, second] + [flow_to_rgb(f, v, scale) for f, v in flows]
    strip = np.concatenate([x for tile in tiles for x in (tile, gap)][:-1], axis=1)
    factor = max(1, -(-min_height // strip.shape[0]))
    return cv2.resize(strip, None, fx=factor, fy=factor, interpolation=cv2.INTER_NEAREST)


def write_png(path: str | Path, rgb: np.ndarray) -> None:
    """Write an (H, W, 3) uint8 RGB image as PNG, atomically (same pixels, same bytes)."""
    ok, data = cv2.imencode(".png", cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
    if not ok:
        raise RuntimeError(f"PNG encoding failed for {path}")
    write_bytes_atomic(path, data.tobytes())
