"""The flow backend interface shared by every optical-flow backend.

Conventions (every backend, every output):

* ``flow`` is forward flow from frame ``t`` to frame ``t + 1`` in pixels, shape
  ``(T, 2, H, W)``; channel 0 is ``dx`` (towards +u, right), channel 1 is ``dy``
  (towards +v, down): the content at pixel ``(u, v)`` of frame ``t`` is at
  ``(u + dx, v + dy)`` in frame ``t + 1``. Pixel centres sit at integer
  coordinates, so the image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.
* ``valid`` ``(T, H, W)`` bool is true where the flow is defined: the pixel's
  content is still inside frame ``t + 1`` (all backends) and, for the simulator,
  not hidden behind another surface there and not background.
"""
from __future__ import annotations

import abc
import functools
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np

from pipeline.config import FlowParams, WeightsParams
from pipeline.episodes import Episode


@dataclass
class FlowResult:
    """Flow of one episode.

    Attributes:
        flow: (T, 2, H, W) float32, pixels, forward t -> t+1 (channel 0 dx right, channel 1 dy down).
        valid: (T, H, W) bool, where ``flow`` is defined.
    """

    flow: np.ndarray
    valid: np.ndarray

    def __post_init__(self) -> None:
        if self.flow.ndim != 4 or self.flow.shape[1] != 2:
            raise ValueError(f"flow must be (T, 2, H, W), got {self.flow.shape}")
        t, _, h, w = self.flow.shape
        if self.valid.shape != (t, h, w) or self.valid.dtype != np.bool_:
            raise ValueError(f"valid must be bool (T, H, W) = {(t, h, w)}, got {self.valid.dtype} {self.valid.shape}")


class FlowBackend(abc.ABC):
    """Computes the flow of whole episodes.

    Subclasses set :attr:`name` and :attr:`fields` (the episode members they
    read, so only those are decompressed) and implement :meth:`episode_flow`.
    """

    name: ClassVar[str]
    #: Episode members (see :mod:`pipeline.episodes`) this backend reads.
    fields: ClassVar[tuple[str, ...]] = ("frames",)

    @classmethod
    @abc.abstractmethod
    def from_params(cls, params: FlowParams, weights: WeightsParams) -> "FlowBackend":
        """Build the backend from the ``flow`` and ``weights`` params sections."""

    @classmethod
    def check_members(cls, members: set[str], path: str) -> None:
        """Raise :class:`~pipeline.errors.UserError` if an episode file with these members lacks what this backend needs.

        Called for every episode before any work; the message names the param to change.
        """

    @abc.abstractmethod
    def episode_flow(self, episode: Episode) -> FlowResult:
        """Flow for every consecutive frame pair of ``episode`` (T pairs)."""

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the backend and its settings, stored in every output's ``meta``."""
        return {"backend": self.name}


class PairBackend(FlowBackend):
    """A backend that estimates flow from the two RGB images alone, in batches.

    The stage feeds it pairs from several episodes at once (:attr:`batch_size`
    pairs per :meth:`pairs_flow` call) so the last batch of an episode is not
    left half empty. Its validity mask is :func:`inside_mask` of the estimate:
    image backends do no occlusion reasoning.
    """

    fields: ClassVar[tuple[str, ...]] = ("frames",)

    def __init__(self, batch_size: int = 32) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = batch_size

    @abc.abstractmethod
    def pairs_flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Flow from ``first`` to ``second``.

        Args:
            first, second: (N, H, W, 3) uint8 RGB, N <= :attr:`batch_size`.

        Returns:
            (N, 2, H, W) float32 flow in pixels (channel 0 dx, channel 1 dy).
        """

    def episode_flow(self, episode: Episode) -> FlowResult:
        frames = episode.frames
        pairs = len(frames) - 1
        chunks = [
            self.pairs_flow(frames[i : min(i + self.batch_size, pairs)], frames[i + 1 : min(i + self.batch_size, pairs) + 1])
            for i in range(0, pairs, self.batch_size)
        ]
        flow = np.concatenate(chunks) if chunks else np.zeros((0, 2, *frames.shape[1:3]), np.float32)
        return FlowResult(flow, inside_mask(flow))


@functools.lru_cache(maxsize=8)
def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(H, W) float32 arrays (read-only, cached) of pixel-centre coordinates u (column) and v (row)."""
    v, u = np.mgrid[0:height, 0:width].astype(np.float32)
    u.flags.writeable = v.flags.writeable = False
    return u, v


def inside_mask(flow: np.ndarray) -> np.ndarray:
    """(..., H, W) bool: where ``flow`` (..., 2, H, W) lands inside the image (pixel centres at integers)."""
    h, w = flow.shape[-2:]
    u, v = pixel_grid(h, w)
    tu = u + flow[..., 0, :, :]
    tv = v + flow[..., 1, :, :]
    return (tu >= -0.5) & (tu <= w - 0.5) & (tv >= -0.5) & (tv <= h - 0.5)
