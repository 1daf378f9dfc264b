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

A backend computes whole episodes (:meth:`FlowBackend.episode_flow`); the stage feeds it
through :meth:`FlowBackend.flows`, a stream of episodes, which a :class:`PairBackend`
overrides to batch frame pairs across episode boundaries (its only batching path:
``episode_flow`` is ``flows`` of one episode).
"""

from __future__ import annotations

import abc
import functools
from collections import deque
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

import numpy as np

from pipeline.config import FlowParams, WeightsParams
from pipeline.sim.episodes import Episode, EpisodeHeader

K = TypeVar("K")


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
    #: Episode members (see :mod:`pipeline.sim.episodes`) this backend reads.
    fields: ClassVar[tuple[str, ...]] = ("frames",)
    #: Whether its float16 flow is worth deflating in the flow file (exact flow: zeros off the mask, smooth).
    compressible: ClassVar[bool] = True

    @classmethod
    @abc.abstractmethod
    def from_params(cls, params: FlowParams, weights: WeightsParams) -> FlowBackend:
        """Build the backend from the ``flow`` and ``weights`` params sections."""

    @classmethod  # noqa: B027 - optional hook, a no-op unless a backend needs it
    def check_episode(cls, header: EpisodeHeader) -> None:
        """Raise :class:`~pipeline.common.errors.UserError` if this (schema-valid) episode lacks what the backend needs.

        Called for every episode before any work; the message names the file and the param to change.
        """

    @abc.abstractmethod
    def episode_flow(self, episode: Episode) -> FlowResult:
        """Flow for every consecutive frame pair of ``episode`` (T pairs)."""

    def flows(self, episodes: Iterable[tuple[K, Episode]]) -> Iterator[tuple[K, Episode, FlowResult]]:
        """``(key, episode, flow)`` for each ``(key, episode)``, in input order, each as soon as it is complete."""
        for key, episode in episodes:
            yield key, episode, self.episode_flow(episode)

    def describe(self) -> dict[str, Any]:
        """JSON-ready record of the backend and its settings, stored in every output's ``meta``."""
        return {"backend": self.name}


@dataclass
class _Pairs:
    """One episode's frame pairs on their way through :meth:`PairBackend.flows`."""

    key: Any
    episode: Episode
    chunks: list[np.ndarray] = field(default_factory=list)  # computed flow, in pair order
    sent: int = 0  # pairs handed to the backend so far

    @property
    def pairs(self) -> int:
        return len(self.episode.frames) - 1

    @property
    def queued(self) -> int:
        return self.pairs - self.sent

    def result(self) -> FlowResult:
        h, w = self.episode.frames.shape[1:3]
        flow = np.concatenate(self.chunks) if self.chunks else np.zeros((0, 2, h, w), np.float32)
        return FlowResult(flow, inside_mask(flow))


class PairBackend(FlowBackend):
    """A backend that estimates flow from the two RGB images alone, in batches.

    :meth:`flows` gives it :attr:`batch_size` pairs per :meth:`pairs_flow` call, taken across
    episode boundaries, so the last batch of an episode is not left half empty (a batch never
    mixes frame sizes). Its validity mask is :func:`inside_mask` of the estimate: image
    backends do no occlusion reasoning.
    """

    fields: ClassVar[tuple[str, ...]] = ("frames",)
    #: Estimates are dense and noisy in float16's last bits: deflate (level 1) keeps ~88% of DIS's
    #: flow at ~1.3x the cost of computing it, so the flow file stores them as they are.
    compressible: ClassVar[bool] = False

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
        ((_, _, result),) = self.flows([(None, episode)])
        return result

    def flows(self, episodes: Iterable[tuple[K, Episode]]) -> Iterator[tuple[K, Episode, FlowResult]]:
        waiting: deque[_Pairs] = deque()  # episodes not complete yet, in input order
        for key, episode in episodes:
            if waiting and episode.frames.shape[1:] != waiting[-1].episode.frames.shape[1:]:
                while any(p.queued for p in waiting):  # a batch holds one frame size: finish the previous ones
                    self._run_batch(waiting)
            waiting.append(_Pairs(key, episode))
            while sum(p.queued for p in waiting) >= self.batch_size:
                self._run_batch(waiting)
            while waiting and waiting[0].queued == 0:
                done = waiting.popleft()
                yield done.key, done.episode, done.result()
        while any(p.queued for p in waiting):
            self._run_batch(waiting)
        for done in waiting:
            yield done.key, done.episode, done.result()

    def _run_batch(self, waiting: deque[_Pairs]) -> None:
        """Compute the next (at most :attr:`batch_size`) queued pairs, oldest episode first, and file each
        slice with its episode."""
        firsts, seconds, owners = [], [], []
        room = self.batch_size
        for item in waiting:
            take = min(room, item.queued)
            if take == 0:
                continue
            frames, start = item.episode.frames, item.sent
            firsts.append(frames[start : start + take])
            seconds.append(frames[start + 1 : start + 1 + take])
            owners.append((item, take))
            item.sent += take
            room -= take
            if room == 0:
                break
        flow = self.pairs_flow(np.concatenate(firsts), np.concatenate(seconds))
        offset = 0
        for item, take in owners:
            item.chunks.append(flow[offset : offset + take])
            offset += take


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
