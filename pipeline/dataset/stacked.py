"""The PyTorch-facing reader: a dataset's shards as a stream of stacked-frame training samples.

Shards hold one sample per frame, in (task, episode, step) order, an episode's frames contiguous
(fields: ``rgb.png``, ``flow.png``, ``clip.npy``,
``json``; see docs/ARCHITECTURE.md, encode). Frames are stacked **at read time**: the sample for
frame t carries frames t-k+1 .. t of the same episode, oldest first. Where fewer than k-1
previous frames are available (episode start, or an episode continuing from another shard) the
oldest available frame is repeated (:func:`pipeline.collect.envs.wrappers.stack_frames`, the
stacking the replay buffer and the environments use too).

Targets of the sample for frame t (the transition *into* the current frame, t-1 -> t, which is
what the stack can see):

* ``flow`` / ``flow_valid``: the flow stored on frame t-1 (``flow.png`` of frame s is s -> s+1),
  i.e. the motion between the last two frames of the stack; all-invalid when frame t-1 is not
  available (episode start / shard boundary).
* ``reward`` / ``reward_valid``: the ``reward`` stored on frame t-1 (reward of transition t-1 -> t).
* ``clip_image`` (D,), ``clip_text`` (R, D) [caption, key objects, motion: ``TEXT_ROWS``], ``text_valid``: of frame t.

Splitting: the shard list (reshuffled each pass with the seed) is split over all consumers
(DDP ranks x loader workers). With fewer shards than consumers every consumer reads every shard
and keeps every n-th sample instead (decoding only what it keeps), so no worker or rank is ever
left without data: nothing hangs and nothing raises "no samples".

Annotated frames per batch (training): with ``annotated_per_batch`` m > 0 each consumer also reads
a second, endless, separately shuffled stream of its annotated frames only, and tops every batch
of its main stream up to m annotated frames from it (:func:`mix_annotated`).

Shards are read with :func:`pipeline.dataset.shards.iter_tar_samples` and fields decoded with
:mod:`pipeline.dataset.codec`: a truncated shard or a field that does not decode raises
:class:`DatasetError` naming the shard and the sample key. Open a dataset with
:func:`pipeline.dataset.open_dataset` (which validates it) and take its shard lists from there.
"""

from __future__ import annotations

import logging
import random
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.dataset.codec import decode_clip, decode_flow, decode_json, decode_rgb
from pipeline.dataset.schema import FIELDS, DatasetError
from pipeline.dataset.shards import iter_tar_samples

log = logging.getLogger(__name__)

_FIX = "rebuild the dataset (semore encode) or pull it again (semore pull)"


def _decode(frame: _Frame, what: str, decoder: Any, *args: Any) -> Any:
    """Run a codec decoder on ``frame``'s raw fields; a failure becomes a DatasetError naming shard and key."""
    try:
        return decoder(frame.raw, *args)
    except (OSError, ValueError, SyntaxError, KeyError) as exc:  # PIL raises SyntaxError on some corrupt PNGs
        raise DatasetError(
            f"{frame.shard}: sample {frame.key!r}: {what} does not decode ({type(exc).__name__}: {exc}); {_FIX}"
        ) from exc


@dataclass
class _Frame:
    """A raw (undecoded) frame record plus its metadata, kept in the stacking window."""

    shard: str
    key: str
    raw: dict[str, bytes]
    meta: dict[str, Any]
    rgb: np.ndarray | None = None

    def image(self) -> np.ndarray:
        if self.rgb is None:
            self.rgb = _decode(self, "rgb.png", decode_rgb)
        return self.rgb


def _raw_frames(shards: Sequence[str | Path]) -> Iterator[tuple[str, str, dict[str, bytes]]]:
    """(shard, key, raw fields) of every sample of ``shards``, in order; fields checked present."""
    for shard in shards:
        for key, fields in iter_tar_samples(Path(shard)):
            missing = [f for f in FIELDS if f not in fields]
            if missing:
                raise DatasetError(
                    f"{shard}: sample {key!r} lacks {', '.join(missing)}; "
                    f"the dataset is not in the encode stage's format: {_FIX}"
                )
            yield str(shard), key, fields


def _stack(window: deque[_Frame], frame_stack: int) -> np.ndarray:
    """(3k, H, W) uint8: the window's frames, oldest first, the oldest repeated where fewer than k."""
    from pipeline.collect.envs.wrappers import stack_frames

    frames = np.stack([f.image() for f in window])
    return stack_frames(
        frames, np.array([len(window) - 1]), frame_stack, np.array([len(window) - 1]), channels_last=True
    )[0]


def stacked_samples(
    shards: Sequence[str | Path],
    frame_stack: int,
    keep: tuple[int, int] = (0, 1),
    with_state: bool = False,
    only_annotated: bool = False,
) -> Iterator[dict[str, Any]]:
    """Stacked samples of ``shards`` (per-frame samples in episode order); see the module docstring.

    Args:
        shards: shard paths, read in this order.
        frame_stack: k.
        keep: ``(index, every)``: yield only samples whose running index ``i`` has ``i % every == index``
            (the others are still read for stacking, never decoded).
        with_state: also yield ``qpos`` (nq,) and ``qvel`` (nv,) of frame t (float64, as recorded),
            ``task`` and ``episode``.
        only_annotated: yield only frames with a valid annotation (``text_valid``); ``keep`` then
            counts annotated frames only, so every consumer gets its share of them.

    Yields:
        dicts of numpy arrays: ``obs`` (3k, H, W) uint8, ``flow`` (2, H, W) float32 pixels,
        ``flow_valid`` (H, W) bool, ``clip_image`` (D,) float32, ``clip_text`` (R, D) float32,
        ``text_valid`` bool, ``reward`` float32, ``reward_valid`` bool, ``key`` str.

    Raises:
        DatasetError: a truncated shard or a field that does not decode (shard and key named).
    """
    index, every = keep
    window: deque[_Frame] = deque(maxlen=frame_stack)
    position = -1
    for shard, key, raw in _raw_frames(shards):
        frame = _Frame(shard=shard, key=key, raw=raw, meta={})
        frame.meta = _decode(frame, "json", decode_json)
        meta = frame.meta
        if window:
            last = window[-1]
            same_episode = (
                last.shard == shard
                and last.meta.get("task") == meta.get("task")
                and last.meta.get("episode") == meta.get("episode")
                and int(last.meta.get("step", -2)) + 1 == int(meta.get("step", -1))
            )
            if not same_episode:
                window.clear()
        window.append(frame)
        if only_annotated and not meta.get("annotated", False):
            continue
        position += 1
        if position % every != index:
            continue
        obs = _stack(window, frame_stack)
        h, w = obs.shape[1:]
        if len(window) >= 2:
            prev = window[-2]
            flow, flow_valid = _decode(prev, "flow.png", decode_flow)
            reward, reward_valid = float(prev.meta.get("reward", 0.0)), True
        else:
            flow = np.zeros((2, h, w), np.float32)
            flow_valid = np.zeros((h, w), bool)
            reward, reward_valid = 0.0, False
        clip_image, clip_text = _decode(frame, "clip.npy", decode_clip)
        out = {
            "obs": np.ascontiguousarray(obs),
            "flow": flow,
            "flow_valid": flow_valid,
            "clip_image": clip_image.astype(np.float32),
            "clip_text": clip_text.astype(np.float32),
            "text_valid": bool(meta.get("annotated", False)),
            "reward": np.float32(reward),
            "reward_valid": reward_valid,
            "key": key,
        }
        if with_state:
            out["qpos"] = np.asarray(meta["qpos"], np.float64).ravel()
            out["qvel"] = np.asarray(meta["qvel"], np.float64).ravel()
            out["task"] = str(meta["task"])
            out["episode"] = int(meta["episode"])
        yield out


class StackedFrames(IterableDataset):
    """An iterable dataset of stacked-frame samples over shards; safe with any worker/rank count.

    Args:
        shards: shard paths in order (``Dataset.shards[split]`` of :func:`pipeline.dataset.open_dataset`).
        frame_stack: k.
        seed: shard-order and shuffle-buffer seed (with rank, worker and pass number).
        shuffle_buffer: samples in the shuffle buffer (0: stream order, no shuffling).
        repeat: loop over the shards forever (training) instead of one pass (evaluation).
        rank, world_size: this DDP process and the number of processes.
        with_state: yield the physics state (``qpos``, ``qvel``), ``task`` and ``episode`` too
            (for the probe; iterate it directly).
        batch_size, annotated_per_batch: with ``annotated_per_batch`` m > 0, every consecutive group
            of ``batch_size`` samples (a batch, when the loader batches by the same size) holds at
            least m annotated frames (``text_valid``); see :func:`mix_annotated`. 0: the plain stream.
    """

    def __init__(
        self,
        shards: Sequence[str | Path],
        frame_stack: int,
        *,
        seed: int = 0,
        shuffle_buffer: int = 0,
        repeat: bool = False,
        rank: int = 0,
        world_size: int = 1,
        with_state: bool = False,
        batch_size: int = 1,
        annotated_per_batch: int = 0,
    ) -> None:
        super().__init__()
        if not 0 <= annotated_per_batch <= batch_size:
            raise ValueError(
                f"annotated_per_batch = {annotated_per_batch} must be between 0 and batch_size = {batch_size}"
            )
        self.shards = [str(s) for s in shards]
        self.frame_stack = frame_stack
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.repeat = repeat
        self.rank = rank
        self.world_size = world_size
        self.with_state = with_state
        self.batch_size = batch_size
        self.annotated_per_batch = annotated_per_batch

    def _one_pass(
        self, epoch: int, consumer: int, consumers: int, only_annotated: bool = False
    ) -> Iterator[dict[str, Any]]:
        shards = list(self.shards)
        tag = "annotated-" if only_annotated else ""  # the plain stream keeps its historical seeds
        if self.repeat:
            random.Random(f"{self.seed}-{tag}shards-{epoch}").shuffle(shards)
        if len(shards) >= consumers:
            mine, keep = shards[consumer::consumers], (0, 1)
        else:
            mine, keep = shards, (consumer, consumers)
        stream = stacked_samples(
            mine, self.frame_stack, keep=keep, with_state=self.with_state, only_annotated=only_annotated
        )
        if self.shuffle_buffer > 1:
            import webdataset as wds

            rng = random.Random(f"{self.seed}-{tag}shuffle-{epoch}-{consumer}")
            stream = wds.filters._shuffle(stream, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
        return stream

    def _stream(
        self, consumer: int, consumers: int, only_annotated: bool = False, repeat: bool | None = None
    ) -> Iterator[dict[str, Any]]:
        repeat = self.repeat if repeat is None else repeat
        epoch = 0
        while True:
            produced = 0
            for sample in self._one_pass(epoch, consumer, consumers, only_annotated):
                produced += 1
                yield sample
            if not repeat:
                return
            if produced == 0:
                if only_annotated:
                    raise DatasetError(
                        f"the share of {len(self.shards)} shard(s) read by data consumer {consumer} of {consumers} "
                        "(processes x pretrain.workers) holds no annotated frame, "
                        "so pretrain.annotated_per_batch cannot be met; "
                        "lower pretrain.workers, set pretrain.annotated_per_batch: 0, "
                        "or annotate more frames (annotate.every_k)"
                    )
                raise DatasetError(
                    f"{len(self.shards)} shard(s) hold fewer samples than the {consumers} data consumers "
                    "(processes x pretrain.workers); lower pretrain.workers or collect more frames"
                )
            epoch += 1

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        consumers, consumer = self.world_size * workers, self.rank * workers + worker
        stream = self._stream(consumer, consumers)
        if self.annotated_per_batch == 0:
            return stream
        # The annotated stream is endless even for a single pass of the plain one: it only tops batches up.
        annotated = self._stream(consumer, consumers, only_annotated=True, repeat=True)
        return mix_annotated(stream, annotated, self.batch_size, self.annotated_per_batch)


def mix_annotated(
    stream: Iterator[dict[str, Any]], annotated: Iterator[dict[str, Any]], group: int, need: int
) -> Iterator[dict[str, Any]]:
    """``stream`` regrouped so that every full group of ``group`` consecutive samples holds at least
    ``need`` annotated ones (``text_valid``).

    Each group takes the next ``group`` samples of ``stream``; when fewer than ``need`` of them are
    annotated, its last unannotated samples give their places to samples of ``annotated`` (an
    endless stream of annotated frames only) and open the next group instead, so no sample of
    ``stream`` is dropped and nothing is read that is not yielded. Deterministic given the two
    streams. The last group of a finite ``stream`` may be short; it is yielded as it is.

    Why a sampler and not an expected-count normaliser: with ``annotate.every_k: 10`` a batch of 16
    holds 1.6 annotated frames on average and none in 17% of batches; a normaliser would make
    those batches' text terms finite (zero) but leaves the text losses computed from one or two
    frames (an InfoNCE with one candidate is 0 whatever the prediction), so the text heads see few,
    noisy gradients. Topping batches up gives every step a text term over ``need`` frames. The
    price: annotated frames are seen more often than the rest (they are ordinary frames of the same
    episodes, every k-th step, so the frame distribution the other terms see barely changes).
    """
    carry: deque[dict[str, Any]] = deque()
    while True:
        batch: list[dict[str, Any]] = []
        while len(batch) < group:
            if carry:
                batch.append(carry.popleft())
                continue
            sample = next(stream, None)
            if sample is None:
                break
            batch.append(sample)
        if not batch:
            return
        short = need - sum(bool(s["text_valid"]) for s in batch)
        if short > 0 and len(batch) == group:
            moved: list[dict[str, Any]] = []
            kept: list[dict[str, Any]] = []
            for sample in reversed(batch):
                if len(moved) < short and not sample["text_valid"]:
                    moved.append(sample)
                else:
                    kept.append(sample)
            carry.extendleft(moved)  # reversed twice: they open the next group in stream order
            batch = kept[::-1] + [next(annotated) for _ in range(short)]
        yield from batch


def make_loader(
    shards: Sequence[str | Path],
    frame_stack: int,
    batch_size: int,
    *,
    workers: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 0,
    repeat: bool = True,
    rank: int = 0,
    world_size: int = 1,
    annotated_per_batch: int = 0,
) -> DataLoader:
    """A DataLoader of stacked-frame batches (tensors, see :func:`stacked_samples` for fields).

    ``key`` comes back as a list of strings. Batches are built inside workers (each worker's
    stream is grouped by ``batch_size``, so ``annotated_per_batch`` holds per batch: see
    :class:`StackedFrames`); with a finite stream (``repeat=False``) the last batch may be smaller.
    """
    dataset = StackedFrames(
        shards,
        frame_stack,
        seed=seed,
        shuffle_buffer=shuffle_buffer,
        repeat=repeat,
        rank=rank,
        world_size=world_size,
        batch_size=batch_size,
        annotated_per_batch=annotated_per_batch,
    )
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
    )
