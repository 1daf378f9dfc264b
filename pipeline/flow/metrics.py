"""How right a flow is: end-point error against exact flow, and photometric error of warping.

Each episode is measured on its own (:func:`measure_episode`, vectorised over the episode and
only at the pixels the metrics count; on pairs 0, k, 2k, ... with ``flow.metrics_every`` k, a
systematic sample that costs 1/k) into a small value; :class:`TaskQuality` adds those up in
bounded memory: exact sums and counts, and a fine histogram (:data:`BIN_WIDTH` wide bins) for
the median, so the result does not depend on the order the episodes are added in.
"""

from __future__ import annotations

import math
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
    out = cv2.remap(
        np.ascontiguousarray(image, dtype=np.float32),
        map_u,
        map_v,
        interpolation=cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    return out.reshape(h, w, -1)


def photometric_error(first: np.ndarray, second: np.ndarray, flow: np.ndarray) -> np.ndarray:
    """Per-pixel mean absolute RGB difference (H, W) float32 (0-255 scale) between frame t and frame t+1
    warped back by ``flow``."""
    return _rgb_mean(np.abs(warp_back(second, flow) - first))


#: Resolution of the median (pixels for EPE, grey levels for photometric error).
BIN_WIDTH = 1e-3
#: Errors at or above this go to one overflow bin (the median is then reported as this bound).
HIST_MAX = 512.0
HIST_BINS = int(HIST_MAX / BIN_WIDTH) + 1


@dataclass(frozen=True)
class ErrorSample:
    """Per-pixel errors of one episode, reduced: what :class:`ErrorStats` accumulates.

    Attributes:
        count: pixels.
        total: their sum (float64, numpy's pairwise sum over the pixels in (t, row, column) order).
        below: pixels with an error below the threshold.
        bins: (n,) int64 histogram of ``error / BIN_WIDTH`` (the last bin of :data:`HIST_BINS` is the overflow).
    """

    count: int
    total: float
    below: int
    bins: np.ndarray

    @classmethod
    def of(cls, values: np.ndarray, threshold: float) -> ErrorSample:
        """Reduce the errors ``values`` (1-d, >= 0, any float dtype) of the pixels under a mask."""
        values = np.asarray(values, np.float64)
        scaled = values / BIN_WIDTH
        np.minimum(scaled, HIST_BINS - 1, out=scaled)  # the overflow bin (same as clipping the truncated index)
        bins = np.bincount(scaled.astype(np.int64))
        return cls(int(values.size), float(values.sum()), int((values < threshold).sum()), bins)


@dataclass
class ErrorStats:
    """Accumulates per-pixel errors under masks; :meth:`summary` gives mean, median and share below ``threshold``."""

    threshold: float = 1.0
    count: int = 0
    below: int = 0
    #: one partial sum per :meth:`add`, added with ``math.fsum`` (exact, so independent of the order of calls)
    partial_sums: list[float] = field(default_factory=list, repr=False)
    #: counts per :data:`BIN_WIDTH` bin, as long as the largest bin seen (at most :data:`HIST_BINS`)
    hist: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64), repr=False)

    def add(self, sample: ErrorSample) -> None:
        """Count one episode's errors (an :class:`ErrorSample` reduced with this threshold)."""
        self.count += sample.count
        self.partial_sums.append(sample.total)
        self.below += sample.below
        if sample.bins.size > self.hist.size:
            self.hist = np.concatenate([self.hist, np.zeros(sample.bins.size - self.hist.size, np.int64)])
        self.hist[: sample.bins.size] += sample.bins

    def median(self) -> float | None:
        """Median to within :data:`BIN_WIDTH` (the centre of the bin that holds it)."""
        if self.count == 0:
            return None
        # the first bin where the running count reaches (count + 1) / 2; integer target: no float copy of the counts
        index = int(np.searchsorted(np.cumsum(self.hist), math.ceil((self.count + 1) / 2)))
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


#: Pixels sampled per ``cv2.remap`` call (OpenCV refuses maps of 32767 rows or more).
_REMAP_ROWS = 16384
#: Pixels below this error count as right (pixels for EPE, grey levels for photometric error).
THRESHOLD = 1.0


@dataclass(frozen=True)
class EpisodeQuality:
    """The metrics of one episode's flow, reduced (see :func:`measure_episode`)."""

    pairs: int
    measured: int  # pairs the errors and the exact mask count (:func:`measured_pairs`)
    valid: int  # pixels of the written mask (every pair)
    pixels: int
    exact_valid: int  # pixels of the exact mask on the measured pairs (0 without simulator truth)
    exact_pixels: int
    epe: ErrorSample | None  # None without simulator truth
    epe_zero: ErrorSample | None
    photo: ErrorSample | None  # None for an episode without pairs
    photo_zero: ErrorSample | None


def measured_pairs(pairs: int, every: int) -> np.ndarray:
    """(P,) int64 indices of the pairs the metrics measure: 0, ``every``, 2 ``every``, ... below ``pairs``."""
    return np.arange(0, pairs, every, dtype=np.int64)


def measure_episode(
    frames: np.ndarray, flow: np.ndarray, valid: np.ndarray, exact: FlowResult | None, every: int = 1
) -> EpisodeQuality:
    """The metrics of one episode's flow on the pairs :func:`measured_pairs` picks, computed only at the
    pixels they count.

    With exact (simulator) flow: end-point error of ``flow`` and of zero flow under the exact
    flow's mask. Always: photometric error (mean absolute RGB difference, 0-255) of frame t+1
    warped back onto frame t by ``flow`` (bilinear, :func:`warp_back`'s sampling), and by zero
    flow, under the exact mask when there is one, else under ``valid``. The written mask's valid
    fraction counts every pair; the errors and the exact mask's fraction, the measured pairs.

    Args:
        frames: (T+1, H, W, 3) uint8 RGB.
        flow: (T, 2, H, W) float, as written (float16 or float32).
        valid: (T, H, W) bool, as written.
        exact: the simulator's flow of the measured pairs only (P of them, in order), or None.
        every: measure pairs 0, every, 2 every, ... (1: all).
    """
    pairs = measured_pairs(len(flow), every)
    if exact is not None and len(exact.flow) != len(pairs):
        raise ValueError(
            f"exact flow of {len(exact.flow)} pairs given for the {len(pairs)} measured pairs "
            f"(every {every} of {len(flow)})"
        )
    valid_all = valid
    if every > 1:
        flow, valid = flow[pairs], valid[pairs]
    first, second = frames[pairs], frames[pairs + 1]
    mask = exact.valid if exact is not None else valid
    t_count, h, w = mask.shape
    hw = h * w
    where = np.flatnonzero(mask)  # the counted pixels, in (t, row, column) order as every selection here
    pair_of = where // hw
    pixel = where - pair_of * hw
    dx, dy = _vectors_at(flow, where, pair_of, hw)
    epe = epe_zero = photo = photo_zero = None
    if exact is not None:
        ex, ey = _vectors_at(exact.flow, where, pair_of, hw)
        epe = ErrorSample.of(
            end_point_error(np.stack([dx, dy])[..., None], np.stack([ex, ey])[..., None]).ravel(), THRESHOLD
        )
        epe_zero = ErrorSample.of(np.hypot(ex, ey), THRESHOLD)
    if len(flow):
        first_at = first.reshape(-1, 3)[where].astype(np.float32)
        # frame t+1 sampled at pixel + flow (warp_back's sampling), at the counted pixels only
        u, v = (g.ravel() for g in pixel_grid(h, w))
        map_u = u[pixel] + dx.astype(np.float32)
        map_v = v[pixel] + dy.astype(np.float32)
        bounds = np.searchsorted(where, np.arange(t_count + 1) * hw)
        warped = np.empty_like(first_at)
        for t in np.flatnonzero(np.diff(bounds)):
            image = second[t].astype(np.float32)
            for a in range(bounds[t], bounds[t + 1], _REMAP_ROWS):  # OpenCV maps hold < 32767 rows
                b = min(a + _REMAP_ROWS, bounds[t + 1])
                sampled = cv2.remap(
                    image,
                    map_u[a:b, None],
                    map_v[a:b, None],
                    interpolation=cv2.INTER_LINEAR,
                    borderMode=cv2.BORDER_REPLICATE,
                )
                warped[a:b] = sampled.reshape(-1, 3)
        photo = ErrorSample.of(_rgb_mean(np.abs(warped - first_at)), THRESHOLD)
        second_at = second.reshape(-1, 3)[where].astype(np.float32)
        photo_zero = ErrorSample.of(_rgb_mean(np.abs(second_at - first_at)), THRESHOLD)  # zero flow: frame t+1 itself
    return EpisodeQuality(
        pairs=len(valid_all),
        measured=len(pairs),
        valid=int(valid_all.sum()),
        pixels=int(valid_all.size),
        exact_valid=int(exact.valid.sum()) if exact is not None else 0,
        exact_pixels=int(exact.valid.size) if exact is not None else 0,
        epe=epe,
        epe_zero=epe_zero,
        photo=photo,
        photo_zero=photo_zero,
    )


def _vectors_at(flow: np.ndarray, where: np.ndarray, pair_of: np.ndarray, hw: int) -> tuple[np.ndarray, np.ndarray]:
    """``(dx, dy)`` of ``flow`` (T, 2, H, W) at the flat (T, H, W) pixel indices ``where``
    (``pair_of`` = ``where // hw``)."""
    flat = np.ascontiguousarray(flow).reshape(-1)
    at = where + pair_of * hw  # (t, 0, pixel) in the (T, 2, H*W) layout
    return flat[at], flat[at + hw]


def _rgb_mean(diff: np.ndarray) -> np.ndarray:
    """(..., 3) float32 -> (...) float32 mean over the channels."""
    return (diff[..., 0] + diff[..., 1] + diff[..., 2]) / np.float32(3)  # faster than a mean over the short axis


class TaskQuality:
    """The metrics of one task's flow: :class:`EpisodeQuality` values added in any order give the same summary."""

    def __init__(self) -> None:
        self.epe, self.epe_zero = ErrorStats(THRESHOLD), ErrorStats(THRESHOLD)
        self.photo, self.photo_zero = ErrorStats(THRESHOLD), ErrorStats(THRESHOLD)
        self.pairs = self.measured = self.valid = self.pixels = self.exact_valid = self.exact_pixels = 0

    def add(self, episode: EpisodeQuality) -> None:
        """Add one episode's reduced metrics."""
        self.pairs += episode.pairs
        self.measured += episode.measured
        self.valid += episode.valid
        self.pixels += episode.pixels
        self.exact_valid += episode.exact_valid
        self.exact_pixels += episode.exact_pixels
        for stats, sample in (
            (self.epe, episode.epe),
            (self.epe_zero, episode.epe_zero),
            (self.photo, episode.photo),
            (self.photo_zero, episode.photo_zero),
        ):
            if sample is not None:
                stats.add(sample)

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
            "measured_pairs": self.measured,
            "valid_fraction": fraction(self.valid, self.pixels),
            "exact_valid_fraction": fraction(self.exact_valid, self.exact_pixels) if has_exact else None,
            "epe": self.epe.summary() if has_exact else None,
            "epe_zero_flow": self.epe_zero.summary() if has_exact else None,
            "photometric": {"flow": self.photo.summary(), "zero_flow": self.photo_zero.summary()},
        }
