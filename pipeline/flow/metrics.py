"""How right a flow is: end-point error against exact flow, and photometric error of warping.

Errors are accumulated over many episodes with :class:`ErrorStats` in bounded
memory: exact sum and count below the threshold, and a fine histogram
(:data:`BIN_WIDTH` wide bins) for the median.
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np

from pipeline.flow.base import FlowResult, pixel_grid


def end_point_error(flow: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Per-pixel Euclidean distance (..., H, W) float32 between flows (..., 2, H, W), in pixels."""
    diff = flow.astype(np.float32) - reference.astype(np.float32)
    return np.sqrt(diff[..., 0, :, :] ** 2 + diff[..., 1, :, :] ** 2)


def warp_back(image: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Sample ``image`` (frame t+1, (H, W, C)) at ``pixel + flow`` (flow (2, H, W)): frame t as predicted by the flow.

    Bilinear; samples outside the image take the nearest border pixel. Returns float32 (H, W, C).
    """
    h, w = image.shape[:2]
    u, v = pixel_grid(h, w)
    map_u = u + flow[0].astype(np.float32)
    map_v = v + flow[1].astype(np.float32)
    out = cv2.remap(image.astype(np.float32), map_u, map_v, interpolation=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
    return out.reshape(h, w, -1)


def photometric_error(first: np.ndarray, second: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Per-pixel mean absolute RGB difference (H, W) float32 (0-255 scale) between frame t and frame t+1 warped back by ``flow``."""
    diff = np.abs(warp_back(second, flow) - first)
    return (diff[..., 0] + diff[..., 1] + diff[..., 2]) / np.float32(3)  # faster than a mean over the short axis


#: Resolution of the median (pixels for EPE, grey levels for photometric error).
BIN_WIDTH = 1e-3
#: Errors at or above this go to one overflow bin (the median is then reported as this bound).
HIST_MAX = 512.0


@dataclass
class ErrorStats:
    """Accumulates per-pixel errors under masks; :meth:`summary` gives mean, median and share below ``threshold``."""

    threshold: float = 1.0
    count: int = 0
    below: int = 0
    #: one partial sum per :meth:`add`, added with ``math.fsum`` (exact, so independent of the order of calls)
    partial_sums: list[float] = field(default_factory=list, repr=False)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(int(HIST_MAX / BIN_WIDTH) + 1, np.int64), repr=False)

    def add(self, errors: np.ndarray, mask: np.ndarray) -> None:
        """Count ``errors`` (any shape, >= 0) where ``mask`` (same shape, bool) is true."""
        values = np.asarray(errors, np.float64)[mask]
        self.count += int(values.size)
        self.partial_sums.append(float(values.sum()))
        self.below += int((values < self.threshold).sum())
        counts = np.bincount(np.minimum((values / BIN_WIDTH).astype(np.int64), self.hist.size - 1))
        self.hist[: counts.size] += counts

    def median(self) -> float | None:
        """Median to within :data:`BIN_WIDTH` (the centre of the bin that holds it)."""
        if self.count == 0:
            return None
        cumulative = np.cumsum(self.hist)
        index = int(np.searchsorted(cumulative, (self.count + 1) / 2))
        return min((index + 0.5) * BIN_WIDTH, HIST_MAX)

    def summary(self) -> dict[str, float | int | None]:
        """``{"mean", "median", "under_<threshold>", "pixels"}``; statistics are None when nothing was added."""
        key = f"under_{self.threshold:g}"
        if self.count == 0:
            return {"mean": None, "median": None, key: None, "pixels": 0}
        return {
            "mean": round(math.fsum(self.partial_sums) / self.count, 6),
            "median": round(self.median(), 6),
            key: round(self.below / self.count, 6),
            "pixels": self.count,
        }


class TaskQuality:
    """The metrics of one task's flow, accumulated episode by episode (thread-safe, order-independent).

    With exact (simulator) flow: end-point error of the written flow and of zero flow under the
    exact flow's mask. Always: photometric error (mean absolute RGB difference, 0-255) of frame t+1
    warped back onto frame t by the flow, and by zero flow, under the exact mask when there is one,
    else under the flow's own mask.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.epe, self.epe_zero = ErrorStats(1.0), ErrorStats(1.0)
        self.photo, self.photo_zero = ErrorStats(1.0), ErrorStats(1.0)
        self.pairs = self.valid = self.pixels = self.exact_valid = self.exact_pixels = 0

    def add(self, frames: np.ndarray, flow: np.ndarray, valid: np.ndarray, exact: FlowResult | None) -> None:
        """Add one episode: ``frames`` (T+1, H, W, 3) uint8, ``flow`` (T, 2, H, W) as written, ``valid`` (T, H, W)."""
        mask = exact.valid if exact is not None else valid
        epe = end_point_error(flow, exact.flow) if exact is not None else None
        epe_zero = np.hypot(exact.flow[:, 0], exact.flow[:, 1]) if exact is not None else None
        photo = np.stack([photometric_error(frames[t], frames[t + 1], flow[t]) for t in range(len(flow))]) if len(flow) else None
        # zero flow: frame t+1 itself is the prediction of frame t
        if len(flow):
            diff = np.abs(frames[1:].astype(np.float32) - frames[:-1])
            photo_zero = (diff[..., 0] + diff[..., 1] + diff[..., 2]) / np.float32(3)
        with self._lock:
            self.pairs += len(flow)
            self.valid += int(valid.sum())
            self.pixels += valid.size
            if exact is not None:
                self.exact_valid += int(exact.valid.sum())
                self.exact_pixels += exact.valid.size
                self.epe.add(epe, mask)
                self.epe_zero.add(epe_zero, mask)
            if photo is not None:
                self.photo.add(photo, mask)
                self.photo_zero.add(photo_zero, mask)

    def summary(self, backend: dict[str, Any], episodes: int) -> dict[str, Any]:
        """The metrics JSON (see docs/ARCHITECTURE.md, flow)."""

        def fraction(num: int, den: int) -> float | None:
            return round(num / den, 6) if den else None

        has_exact = self.exact_pixels > 0
        return {
            "backend": backend.get("backend"),
            "model": backend.get("model"),
            "episodes": episodes,
            "pairs": self.pairs,
            "valid_fraction": fraction(self.valid, self.pixels),
            "exact_valid_fraction": fraction(self.exact_valid, self.exact_pixels) if has_exact else None,
            "epe": self.epe.summary() if has_exact else None,
            "epe_zero_flow": self.epe_zero.summary() if has_exact else None,
            "photometric": {"flow": self.photo.summary(), "zero_flow": self.photo_zero.summary()},
        }
