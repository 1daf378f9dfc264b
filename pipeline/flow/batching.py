"""Feeding a backend: whole episodes, or batches of frame pairs that span episode boundaries."""
from __future__ import annotations

from collections import deque
from typing import Iterable, Iterator, TypeVar

import numpy as np

from pipeline.episodes import Episode
from pipeline.flow.base import FlowBackend, FlowResult, PairBackend, inside_mask

K = TypeVar("K")


def stream_flows(backend: FlowBackend, items: Iterable[tuple[K, Episode]]) -> Iterator[tuple[K, FlowResult]]:
    """Flow of each ``(key, episode)``, yielded in input order as soon as it is complete.

    A :class:`PairBackend` gets full batches of ``batch_size`` pairs taken across episode
    boundaries (so an episode's last, short batch does not cost a full forward pass); only
    the episodes that a pending batch touches are held in memory.
    """
    if not isinstance(backend, PairBackend):
        for key, episode in items:
            yield key, backend.episode_flow(episode)
        return
    yield from _stream_pairs(backend, items)


def _stream_pairs(backend: PairBackend, items: Iterable[tuple[K, Episode]]) -> Iterator[tuple[K, FlowResult]]:
    size = backend.batch_size
    waiting: deque[tuple[K, int, tuple[int, int], list[np.ndarray]]] = deque()  # key, pairs, (H, W), computed chunks
    pieces: deque[tuple[list[np.ndarray], np.ndarray, int]] = deque()  # chunk list, frames, next pair index
    buffered = 0

    def run_batch(n: int) -> None:
        nonlocal buffered
        firsts, seconds, owners = [], [], []
        while n > 0:
            chunks, frames, start = pieces[0]
            take = min(n, len(frames) - 1 - start)
            firsts.append(frames[start : start + take])
            seconds.append(frames[start + 1 : start + 1 + take])
            owners.append((chunks, take))
            n -= take
            buffered -= take
            if start + take == len(frames) - 1:
                pieces.popleft()
            else:
                pieces[0] = (chunks, frames, start + take)
        flow = backend.pairs_flow(np.concatenate(firsts), np.concatenate(seconds))
        offset = 0
        for chunks, take in owners:
            chunks.append(flow[offset : offset + take])
            offset += take

    def finished() -> Iterator[tuple[K, FlowResult]]:
        while waiting and sum(len(c) for c in waiting[0][3]) == waiting[0][1]:
            key, _, (h, w), chunks = waiting.popleft()
            flow = np.concatenate(chunks) if chunks else np.zeros((0, 2, h, w), np.float32)
            yield key, FlowResult(flow, inside_mask(flow))

    def flush() -> None:
        while buffered:
            run_batch(min(size, buffered))

    shape: tuple[int, ...] | None = None
    for key, episode in items:
        frames = episode.frames
        if shape is not None and frames.shape[1:] != shape:  # pairs of one batch must share a size
            flush()
            yield from finished()
        shape = frames.shape[1:]
        chunks: list[np.ndarray] = []
        waiting.append((key, len(frames) - 1, frames.shape[1:3], chunks))
        if len(frames) > 1:
            pieces.append((chunks, frames, 0))
            buffered += len(frames) - 1
        while buffered >= size:
            run_batch(size)
        yield from finished()
    flush()
    yield from finished()
