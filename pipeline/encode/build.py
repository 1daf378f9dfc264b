"""Build the dataset folder: shards per split, ``stats.json`` and the card ``README.md``.

:func:`build_dataset` is the library entry point (the ``semore encode`` stage
and tests call it). The whole output folder is written next to its target and
renamed into place at the end, so an interrupted run leaves the previous
dataset (or nothing) behind, never a half-written one.
"""
from __future__ import annotations

import hashlib
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.config import EncodeParams, WeightsParams
from pipeline.encode.card import build_card
from pipeline.encode.clip import ClipEncoder, load_clip
from pipeline.encode.inputs import EncodeInputError, EpisodeInputs, check_inputs, discover, load_annotations, load_flow
from pipeline.encode.samples import episode_samples
from pipeline.encode.schema import SPLITS, TEXT_ROWS, objects_text
from pipeline.encode.shards import ShardInfo, write_shards
from pipeline.encode.stats import SplitStats
from pipeline.episodes import Episode, load_episode
from pipeline.io import atomic_path, write_json_atomic
from pipeline.logs import progress

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
_EPISODE_FIELDS = ("frames", "actions", "rewards", "discounts", "terminated", "truncated", "qpos", "qvel")
#: Distinct texts whose embeddings are kept between episodes (captions repeat a lot).
_TEXT_CACHE_SIZE = 50_000


@dataclass
class DatasetSummary:
    """What :func:`build_dataset` wrote: the folder, samples/episodes/shards per split, embedding size."""

    out_dir: Path
    splits: dict[str, dict[str, Any]]
    embed_dim: int
    provenance: dict[str, Any] = field(repr=False)

    @property
    def samples(self) -> int:
        return sum(s["samples"] for s in self.splits.values())


def assign_splits(episodes: list[EpisodeInputs], val_fraction: float, seed: int) -> dict[tuple[str, int], str]:
    """(task, episode) -> "train" | "validation", by episode, per task, deterministic.

    Episodes of a task are ranked by a hash of (seed, task, episode); the first
    ``round(n * val_fraction)`` go to validation, at least one when
    ``val_fraction > 0`` and the task has two or more episodes, never all of them.
    """
    by_task: dict[str, list[int]] = {}
    for e in episodes:
        by_task.setdefault(e.task, []).append(e.episode)
    split: dict[tuple[str, int], str] = {}
    for task, indices in by_task.items():
        n = len(indices)
        n_val = math.floor(n * val_fraction + 0.5)
        if val_fraction > 0 and n >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, n - 1)
        ranked = sorted(indices, key=lambda i: hashlib.sha256(f"{seed}/{task}/{i}".encode()).hexdigest())
        val = set(ranked[:n_val])
        for i in indices:
            split[(task, i)] = "validation" if i in val else "train"
    return split


def _check_episode(ep: Episode, path: Path) -> None:
    t = ep.length
    fix = "rerun the collect stage for this task"
    if ep.frames.ndim != 4 or ep.frames.shape[0] != t + 1 or ep.frames.shape[3] != 3 or ep.frames.dtype != np.uint8:
        raise EncodeInputError(f"{path}: frames {ep.frames.shape} {ep.frames.dtype}, expected (T+1, H, W, 3) uint8 with T = {t}; {fix}")
    for name in ("rewards", "discounts", "terminated", "truncated"):
        if getattr(ep, name).shape != (t,):
            raise EncodeInputError(f"{path}: {name} has shape {getattr(ep, name).shape}, expected ({t},); {fix}")
    for name in ("qpos", "qvel"):
        if getattr(ep, name).ndim != 2 or getattr(ep, name).shape[0] != t + 1:
            raise EncodeInputError(f"{path}: {name} has shape {getattr(ep, name).shape}, expected ({t + 1}, n); {fix}")
    for name in ("actions", "rewards", "discounts", "qpos", "qvel"):
        bad = ~np.isfinite(getattr(ep, name))
        if bad.any():
            step = int(np.argwhere(bad)[0][0])
            raise EncodeInputError(f"{path}: {name} is not finite at step {step} (NaN/inf cannot be stored as JSON); {fix}")


class _TextEmbedder:
    """Text embeddings with a bounded cache (the same caption is embedded once)."""

    def __init__(self, encoder: ClipEncoder) -> None:
        self.encoder = encoder
        self.cache: dict[str, np.ndarray] = {}

    def __call__(self, texts: list[str]) -> dict[str, np.ndarray]:
        todo = sorted({t for t in texts if t and t not in self.cache})
        if len(self.cache) + len(todo) > _TEXT_CACHE_SIZE:
            self.cache.clear()
            todo = sorted({t for t in texts if t})
        if todo:
            for text, vec in zip(todo, self.encoder.encode_texts(todo)):
                self.cache[text] = vec
        return {t: self.cache[t] for t in texts if t}


def _collect_provenance(ep: Episode) -> dict[str, Any]:
    meta = asdict(ep.meta)
    for per_episode in ("episode", "seed", "length", "episode_return", "terminated", "truncated", "body_names", "geom_names"):
        meta.pop(per_episode, None)
    return meta


def build_dataset(
    episodes_dir: str | Path,
    flow_dir: str | Path,
    annotations_dir: str | Path,
    out_dir: str | Path,
    params: EncodeParams,
    weights: WeightsParams,
    *,
    encoder: ClipEncoder | None = None,
) -> DatasetSummary:
    """Encode every episode of every task into ``out_dir`` (see ``pipeline.encode.schema`` for the format).

    Args:
        episodes_dir, flow_dir, annotations_dir: folders with one subfolder per task (collect, flow, annotate outputs).
        out_dir: the dataset folder: ``train/`` and ``validation/`` shards, ``README.md``, ``stats.json``.
        params: the ``encode`` params; weights: the ``weights`` policy.
        encoder: a ready CLIP encoder (tests, benchmarks); built from ``params`` when omitted.

    Raises:
        EncodeInputError: missing or malformed inputs (named, with the fix), before the folder is replaced.
    """
    out_dir = Path(out_dir)
    inputs = discover(episodes_dir, flow_dir, annotations_dir)
    check_inputs(inputs)
    split_of = assign_splits(inputs, params.val_fraction, params.seed)
    log.info("encode: %d episodes of %d task(s): %s", len(inputs), len({e.task for e in inputs}),
             ", ".join(f"{s} {sum(v == s for v in split_of.values())}" for s in SPLITS))
    if encoder is None:
        encoder = load_clip(params, weights)
    texts = _TextEmbedder(encoder)
    tasks: dict[str, dict[str, Any]] = {}
    stats = {s: SplitStats() for s in SPLITS}
    shapes: dict[str, set[str]] = {"H": set(), "W": set(), "A": set()}
    bar = progress(total=len(inputs), desc="encode", unit="episode")

    def samples_of(split: str) -> Iterator[dict[str, Any]]:
        for item in inputs:
            if split_of[(item.task, item.episode)] != split:
                continue
            yield from _episode(item, split)
            bar.update(1)

    def _episode(item: EpisodeInputs, split: str) -> Iterator[dict[str, Any]]:
        try:
            ep = load_episode(item.episode_path, _EPISODE_FIELDS)
        except ValueError as exc:
            raise EncodeInputError(f"{exc}") from exc
        _check_episode(ep, item.episode_path)
        t, h, w = ep.length, ep.frames.shape[1], ep.frames.shape[2]
        flow, valid, flow_meta = load_flow(item.flow_path, t, h, w)
        notes = load_annotations(item.annotation_path, t)
        for name, value in (("H", h), ("W", w), ("A", ep.actions.shape[1])):
            shapes[name].add(str(value))

        clip_image = encoder.encode_images(ep.frames)
        text_of = {step: (a.record["caption"].strip(), objects_text(a.record["objects"])) for step, a in notes.frames.items() if a.status == "ok"}
        embedded = texts([s for pair in text_of.values() for s in pair])
        clip_text = np.zeros((t + 1, len(TEXT_ROWS), encoder.dim), np.float32)
        for step, pair in text_of.items():
            for row, text in enumerate(pair):
                if text:
                    clip_text[step, row] = embedded[text]
        stored_image, stored_text = clip_image.astype(np.float16), clip_text.astype(np.float16)
        statuses = [notes.frames[s].status if s in notes.frames else "none" for s in range(t + 1)]
        stats[split].add_episode(
            item.task, ep.frames, flow, valid, stored_image, stored_text, np.abs(clip_text).sum(axis=2) > 0, statuses,
            ep.actions, ep.rewards, ep.discounts, ep.qpos, ep.qvel,
        )
        info = tasks.setdefault(item.task, {"episodes": [], "splits": {}, "collect": _collect_provenance(ep), "flow": flow_meta,
                                            "annotate": {k: v for k, v in notes.header.items() if k not in ("episode", "task")}})
        info["episodes"].append({"episode": item.episode, "seed": ep.meta.seed, "length": t, "return": ep.meta.episode_return, "split": split})
        info["splits"].setdefault(split, []).append(item.episode)
        yield from episode_samples(ep, item.task, item.episode, flow, valid, notes.frames, stored_image, stored_text)

    maxsize = params.shard_maxsize_mb * 1e6
    with atomic_path(out_dir) as tmp:
        tmp.mkdir()
        shards: dict[str, list[ShardInfo]] = {}
        for split in SPLITS:
            shards[split] = write_shards(samples_of(split), tmp / split, maxcount=params.shard_maxcount, maxsize_bytes=maxsize)
        bar.close()
        splits = {
            s: {"samples": stats[s].samples, "episodes": stats[s].episodes, "shards": [x.to_json() for x in shards[s]]}
            for s in SPLITS
        }
        provenance = {
            "schema_version": SCHEMA_VERSION,
            "made_by": "semore encode",
            "encode_params": params.model_dump(mode="json"),
            "weights_params": weights.model_dump(mode="json"),
            "clip": encoder.provenance(),
            "tasks": {task: {**tasks[task], "episodes": sorted(tasks[task]["episodes"], key=lambda e: e["episode"])} for task in sorted(tasks)},
            "libraries": _library_versions(),
        }
        write_json_atomic(tmp / "stats.json", {
            "schema_version": SCHEMA_VERSION,
            "splits": splits,
            "stats": {s: stats[s].to_json() for s in SPLITS if stats[s].samples},
            "provenance": provenance,
        })
        sizes = {k: "/".join(sorted(v, key=int)) for k, v in shapes.items()}
        sizes["D"] = str(encoder.dim)
        build_card(params.dataset_name, params.license, splits, sizes, provenance).save(tmp / "README.md")
    log.info("encode: wrote %s (%s)", out_dir, ", ".join(f"{s}: {v['samples']} samples in {len(v['shards'])} shard(s)" for s, v in splits.items()))
    return DatasetSummary(out_dir, splits, encoder.dim, provenance)


def _library_versions() -> dict[str, str]:
    import PIL
    import webdataset

    return {"numpy": np.__version__, "pillow": PIL.__version__, "webdataset": webdataset.__version__}
