"""Stream the encode stage's WebDataset shards as stacked-frame training samples.

Shards hold one sample per frame, in (task, episode, step) order, an episode's frames contiguous
(fields: ``rgb.png``, ``flow.npy``, ``flowvalid.npy``, ``clipimage.npy``, ``cliptext.npy``,
``json``; see docs/ARCHITECTURE.md, encode). Frames are stacked **at read time**: the sample for
frame t carries frames t-k+1 .. t of the same episode, oldest first. Where fewer than k-1
previous frames are available (episode start, or an episode continuing from another shard) the
oldest available frame is repeated.

Targets of the sample for frame t (the transition *into* the current frame, t-1 -> t, which is
what the stack can see):

* ``flow`` / ``flow_valid``: the flow stored on frame t-1 (``flow.npy`` of frame s is s -> s+1),
  i.e. the motion between the last two frames of the stack; all-invalid when frame t-1 is not
  available (episode start / shard boundary).
* ``reward`` / ``reward_valid``: the ``reward`` stored on frame t-1 (reward of transition t-1 -> t).
* ``clip_image`` (D,), ``clip_text`` (2, D) [caption, key objects], ``text_valid``: of frame t.

Splitting: the shard list (reshuffled each pass with the seed) is split over all consumers
(DDP ranks x loader workers). With fewer shards than consumers every consumer reads every shard
and keeps every n-th sample instead (decoding only what it keeps), so no worker or rank is ever
left without data: nothing hangs and nothing raises "no samples".
"""
from __future__ import annotations

import io
import json
import logging
import random
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline.errors import UserError

log = logging.getLogger(__name__)

SPLITS = ("train", "validation")
REQUIRED_FIELDS = ("rgb.png", "flow.npy", "flowvalid.npy", "clipimage.npy", "cliptext.npy", "json")


class DatasetError(UserError, ValueError):
    """The dataset folder or one of its shards is missing or not in the encode stage's format."""


@dataclass(frozen=True)
class DatasetInfo:
    """What the model needs to know about a dataset, read from its first sample."""

    image_size: int
    clip_dim: int
    train_shards: tuple[str, ...]
    validation_shards: tuple[str, ...]


def find_shards(dataset: str | Path, split: str) -> list[str]:
    """Sorted shard paths ``<dataset>/<split>/shard-*.tar``; raises :class:`DatasetError` if none."""
    folder = Path(dataset) / split
    shards = sorted(str(p) for p in folder.glob("shard-*.tar"))
    if not shards:
        raise DatasetError(f"{folder}: no shard-*.tar files; run the encode stage first (`semore encode ... --out {dataset}`)")
    return shards


def inspect_dataset(dataset: str | Path) -> DatasetInfo:
    """Check both splits exist and read image size and CLIP dimension from the first sample."""
    train, validation = find_shards(dataset, "train"), find_shards(dataset, "validation")
    first = next(iter(wds.DataPipeline(wds.SimpleShardList(train[:1]), wds.tarfile_to_samples())), None)
    if first is None:
        raise DatasetError(f"{train[0]}: empty shard; rerun the encode stage")
    _check_fields(first)
    rgb = _decode_rgb(first)
    clip = _npy(first, "clipimage.npy")
    if rgb.shape[0] != rgb.shape[1]:
        raise DatasetError(f"{train[0]}: frames are {rgb.shape[1]}x{rgb.shape[0]}; the backbone needs square frames (set collect.image_size)")
    return DatasetInfo(image_size=int(rgb.shape[0]), clip_dim=int(clip.shape[-1]), train_shards=tuple(train), validation_shards=tuple(validation))


def _check_fields(sample: dict[str, Any]) -> None:
    missing = [f for f in REQUIRED_FIELDS if f not in sample]
    if missing:
        raise DatasetError(
            f"{sample.get('__url__', '?')}: sample {sample.get('__key__', '?')!r} lacks {', '.join(missing)}; "
            "the dataset is not in the encode stage's format: rerun `semore encode`"
        )


def _npy(sample: dict[str, Any], field: str) -> np.ndarray:
    return np.load(io.BytesIO(sample[field]), allow_pickle=False)


def _decode_rgb(sample: dict[str, Any]) -> np.ndarray:
    with Image.open(io.BytesIO(sample["rgb.png"])) as image:
        return np.asarray(image.convert("RGB"))


@dataclass
class _Frame:
    """A raw (undecoded) frame record plus its metadata, kept in the stacking window."""

    raw: dict[str, Any]
    meta: dict[str, Any]
    rgb: np.ndarray | None = None

    def image(self) -> np.ndarray:
        if self.rgb is None:
            self.rgb = _decode_rgb(self.raw)
        return self.rgb


def stack_frames(raw_samples: Iterator[dict[str, Any]], frame_stack: int, keep: tuple[int, int] = (0, 1), with_state: bool = False) -> Iterator[dict[str, Any]]:
    """Turn per-frame raw samples (in episode order) into stacked samples; see the module docstring.

    Args:
        raw_samples: webdataset raw samples (bytes per field, ``__url__`` and ``__key__`` set).
        frame_stack: k.
        keep: ``(index, every)``: yield only samples whose running index ``i`` has ``i % every == index``
            (the others are still read for stacking, never decoded).
        with_state: also yield ``state`` (qpos then qvel of frame t, float32), ``task`` and ``episode``.

    Yields:
        dicts of numpy arrays: ``obs`` (3k, H, W) uint8, ``flow`` (2, H, W) float32 pixels,
        ``flow_valid`` (H, W) bool, ``clip_image`` (D,) float32, ``clip_text`` (2, D) float32,
        ``text_valid`` bool, ``reward`` float32, ``reward_valid`` bool, ``key`` str.
    """
    index, every = keep
    window: deque[_Frame] = deque(maxlen=frame_stack)
    previous_url: str | None = None
    for position, raw in enumerate(raw_samples):
        _check_fields(raw)
        meta = json.loads(raw["json"])
        frame = _Frame(raw=raw, meta=meta)
        if window:
            last = window[-1].meta
            same_episode = (
                raw.get("__url__") == previous_url
                and last.get("task") == meta.get("task")
                and last.get("episode") == meta.get("episode")
                and int(last.get("step", -2)) + 1 == int(meta.get("step", -1))
            )
            if not same_episode:
                window.clear()
        previous_url = raw.get("__url__")
        window.append(frame)
        if position % every != index:
            continue
        frames = [f.image() for f in window]
        frames = [frames[0]] * (frame_stack - len(frames)) + frames
        obs = np.concatenate([f.transpose(2, 0, 1) for f in frames], axis=0)
        h, w = obs.shape[1:]
        if len(window) >= 2:
            prev = window[-2]
            flow = _npy(prev.raw, "flow.npy").astype(np.float32)
            flow_valid = _npy(prev.raw, "flowvalid.npy").astype(bool)
            reward, reward_valid = float(prev.meta.get("reward", 0.0)), True
        else:
            flow = np.zeros((2, h, w), np.float32)
            flow_valid = np.zeros((h, w), bool)
            reward, reward_valid = 0.0, False
        out = {
            "obs": np.ascontiguousarray(obs),
            "flow": flow,
            "flow_valid": flow_valid,
            "clip_image": _npy(raw, "clipimage.npy").astype(np.float32),
            "clip_text": _npy(raw, "cliptext.npy").astype(np.float32),
            "text_valid": bool(meta.get("annotated", False)),
            "reward": np.float32(reward),
            "reward_valid": reward_valid,
            "key": raw["__key__"],
        }
        if with_state:
            out["state"] = np.concatenate([np.asarray(meta["qpos"], np.float32).ravel(), np.asarray(meta["qvel"], np.float32).ravel()])
            out["task"] = str(meta["task"])
            out["episode"] = int(meta["episode"])
        yield out


class StackedFrames(IterableDataset):
    """An iterable dataset of stacked-frame samples over shards; safe with any worker/rank count.

    Args:
        shards: shard paths (sorted).
        frame_stack: k.
        seed: shard-order and shuffle-buffer seed (with rank, worker and pass number).
        shuffle_buffer: samples in the shuffle buffer (0: stream order, no shuffling).
        repeat: loop over the shards forever (training) instead of one pass (evaluation).
        rank, world_size: this DDP process and the number of processes.
        with_state: yield physics ``state``, ``task`` and ``episode`` too (for the probe; iterate it directly).
    """

    def __init__(
        self,
        shards: list[str] | tuple[str, ...],
        frame_stack: int,
        *,
        seed: int = 0,
        shuffle_buffer: int = 0,
        repeat: bool = False,
        rank: int = 0,
        world_size: int = 1,
        with_state: bool = False,
    ) -> None:
        super().__init__()
        self.shards = list(shards)
        self.frame_stack = frame_stack
        self.seed = seed
        self.shuffle_buffer = shuffle_buffer
        self.repeat = repeat
        self.rank = rank
        self.world_size = world_size
        self.with_state = with_state

    def _one_pass(self, epoch: int, consumer: int, consumers: int) -> Iterator[dict[str, Any]]:
        shards = list(self.shards)
        if self.repeat:
            random.Random(f"{self.seed}-shards-{epoch}").shuffle(shards)
        if len(shards) >= consumers:
            mine, keep = shards[consumer::consumers], (0, 1)
        else:
            mine, keep = shards, (consumer, consumers)
        raw = iter(wds.DataPipeline(wds.SimpleShardList(mine), wds.tarfile_to_samples()))
        stream = stack_frames(raw, self.frame_stack, keep=keep, with_state=self.with_state)
        if self.shuffle_buffer > 1:
            rng = random.Random(f"{self.seed}-shuffle-{epoch}-{consumer}")
            stream = wds.filters._shuffle(stream, bufsize=self.shuffle_buffer, initial=self.shuffle_buffer, rng=rng)
        return stream

    def __iter__(self) -> Iterator[dict[str, Any]]:
        info = get_worker_info()
        workers, worker = (info.num_workers, info.id) if info is not None else (1, 0)
        consumers, consumer = self.world_size * workers, self.rank * workers + worker
        epoch = 0
        while True:
            produced = 0
            for sample in self._one_pass(epoch, consumer, consumers):
                produced += 1
                yield sample
            if not self.repeat:
                return
            if produced == 0:
                raise DatasetError(
                    f"{len(self.shards)} shard(s) hold fewer samples than the {consumers} data consumers "
                    "(processes x pretrain.workers); lower pretrain.workers or collect more frames"
                )
            epoch += 1


def make_loader(
    shards: list[str] | tuple[str, ...],
    frame_stack: int,
    batch_size: int,
    *,
    workers: int = 0,
    seed: int = 0,
    shuffle_buffer: int = 0,
    repeat: bool = True,
    rank: int = 0,
    world_size: int = 1,
) -> DataLoader:
    """A DataLoader of stacked-frame batches (tensors, see :func:`stack_frames` for fields).

    ``key`` comes back as a list of strings. Batches are built inside workers; with a finite
    stream (``repeat=False``) the last batch may be smaller.
    """
    dataset = StackedFrames(shards, frame_stack, seed=seed, shuffle_buffer=shuffle_buffer, repeat=repeat, rank=rank, world_size=world_size)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        num_workers=workers,
        persistent_workers=False,
        pin_memory=torch.cuda.is_available(),
        prefetch_factor=4 if workers > 0 else None,
    )
