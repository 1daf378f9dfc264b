"""The encode stage: episodes + flow + annotations -> a dataset folder (shards, ``stats.json``, card).

:func:`run` is the library entry point (the ``semore encode`` stage, tests and benchmarks call
it). It checks every input first, then encodes one episode at a time in a plain loop
(:func:`embed_episode` reads an episode and computes its CLIP targets; its samples are encoded to
bytes, written through :mod:`pipeline.dataset.writer` and counted in the statistics on a second
thread, in order, while the next episode is embedded). The whole output folder is written next
to its target and renamed into place at the end, so an interrupted run leaves the previous
dataset (or nothing) behind, never a half-written one; temporaries left by a killed run are
removed by the next one.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.io import atomic_path, check_replaceable
from pipeline.common.logs import progress
from pipeline.common.stage import StageSummary
from pipeline.config import EncodeParams, WeightsParams
from pipeline.dataset.codec import dequantize_flow, quantize_flow
from pipeline.dataset.schema import SCHEMA_VERSION, SPLITS, TEXT_ROWS, text_targets
from pipeline.dataset.writer import ShardInfo, ShardSink, write_metadata
from pipeline.encode.card import build_card
from pipeline.encode.clip import ClipEncoder, load_clip
from pipeline.encode.inputs import (
    EncodeInputError,
    EpisodeInputs,
    FrameAnnotation,
    assign_splits,
    check_inputs,
    discover,
    load_annotations,
    load_flow,
)
from pipeline.encode.samples import episode_samples
from pipeline.encode.stats import SplitStats
from pipeline.sim.episodes import Episode, load_episode

log = logging.getLogger(__name__)

_EPISODE_FIELDS = ("frames", "actions", "rewards", "discounts", "terminated", "truncated", "qpos", "qvel")
#: Distinct texts whose embeddings are kept between episodes (captions repeat a lot).
_TEXT_CACHE_SIZE = 50_000


@dataclasses.dataclass(frozen=True)
class EncodeSummary(StageSummary):
    """What :func:`run` wrote: samples / episodes / shards per split, the CLIP embedding size."""

    splits: dict[str, dict[str, Any]]
    embed_dim: int
    annotated_frames: int
    failed_annotations: int

    @property
    def samples(self) -> int:
        return sum(s["samples"] for s in self.splits.values())

    def line(self) -> str:
        parts = ", ".join(
            f"{split}: {info['samples']} samples / {len(info['shards'])} shards" for split, info in self.splits.items()
        )
        return f"{self.out}: {parts}; CLIP dim {self.embed_dim}"


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
            for text, vec in zip(todo, self.encoder.encode_texts(todo), strict=True):
                self.cache[text] = vec
        return {t: self.cache[t] for t in texts if t}


@dataclass
class EncodedEpisode:
    """One episode with its CLIP targets: what its samples, the statistics and the provenance need."""

    task: str
    index: int
    episode: Episode
    flow: np.ndarray  # (T, 2, H, W) float32 pixels, as stored (1/64 px steps)
    valid: np.ndarray  # (T, H, W) bool
    clip_image: np.ndarray  # (T+1, D) float16
    clip_text: np.ndarray  # (T+1, R, D) float16, R = len(TEXT_ROWS)
    text_present: np.ndarray  # (T+1, 2) bool
    statuses: list[str]  # per frame: ok | failed | none
    annotations: dict[int, FrameAnnotation]
    flow_meta: dict[str, Any]
    annotate_header: dict[str, Any]

    def samples(self) -> list[dict[str, Any]]:
        """The episode's T+1 samples as bytes (PNG, npy, JSON encoding: the stage's own CPU work)."""
        return episode_samples(
            self.episode,
            self.task,
            self.index,
            self.flow,
            self.valid,
            self.annotations,
            self.clip_image,
            self.clip_text,
        )


def _check_finite(ep: Episode, path: Path) -> None:
    """JSON cannot hold NaN / inf: refuse them in what goes into the per-frame records."""
    for name in ("actions", "rewards", "discounts", "qpos", "qvel"):
        bad = ~np.isfinite(getattr(ep, name))
        if bad.any():
            step = int(np.argwhere(bad)[0][0])
            raise EncodeInputError(
                f"{path}: {name} is not finite at step {step} (NaN/inf cannot be stored as JSON); "
                "rerun the collect stage for this task"
            )


def embed_episode(item: EpisodeInputs, encoder: ClipEncoder, texts: _TextEmbedder) -> EncodedEpisode:
    """Read one episode's three input files and compute its CLIP targets.

    Raises:
        EncodeInputError, EpisodeFileError: an input file is unreadable or does not fit its episode
            (named, with the fix).
    """
    ep = load_episode(item.episode_path, _EPISODE_FIELDS, header=item.header)  # EpisodeFileError names the file
    _check_finite(ep, item.episode_path)
    t, h, w = ep.length, ep.frames.shape[1], ep.frames.shape[2]
    flow, valid, flow_meta = load_flow(item.flow_path, t, h, w)
    notes = load_annotations(item.annotation_path, t)

    clip_image = encoder.encode_images(ep.frames)
    text_of = {step: text_targets(a.record) for step, a in notes.frames.items() if a.status == "ok"}
    embedded = texts([s for pair in text_of.values() for s in pair])
    clip_text = np.zeros((t + 1, len(TEXT_ROWS), encoder.dim), np.float32)
    for step, pair in text_of.items():
        for row, text in enumerate(pair):
            if text:
                clip_text[step, row] = embedded[text]
    stored_image, stored_text = clip_image.astype(np.float16), clip_text.astype(np.float16)
    stored_flow = dequantize_flow(quantize_flow(flow))  # what flow.png holds (range checked by load_flow)
    return EncodedEpisode(
        task=item.task,
        index=item.episode,
        episode=ep,
        flow=stored_flow,
        valid=valid,
        clip_image=stored_image,
        clip_text=stored_text,
        text_present=np.abs(clip_text).sum(axis=2) > 0,
        statuses=[notes.frames[s].status if s in notes.frames else "none" for s in range(t + 1)],
        annotations=notes.frames,
        flow_meta=flow_meta,
        annotate_header={k: v for k, v in notes.header.items() if k not in ("episode", "task", "source")},
    )


def _write_episode(
    encoded: EncodedEpisode,
    sink: ShardSink,
    stats: SplitStats,
    tasks: dict[str, dict[str, Any]],
    shapes: dict[str, set[str]],
    split: str,
) -> None:
    """Encode one episode's samples (PNG, npy, JSON), write them to ``sink`` and add the episode to the
    split's ``stats``, the per-task provenance ``tasks`` and the frame/action ``shapes`` seen."""
    for sample in encoded.samples():
        sink.write(sample)
    ep = encoded.episode
    stats.add_episode(
        encoded.task,
        ep.frames,
        encoded.flow,
        encoded.valid,
        encoded.clip_image,
        encoded.clip_text,
        encoded.text_present,
        encoded.statuses,
        ep.actions,
        ep.rewards,
        ep.discounts,
        ep.qpos,
        ep.qvel,
    )
    for name, value in (("H", ep.frames.shape[1]), ("W", ep.frames.shape[2]), ("A", ep.actions.shape[1])):
        shapes[name].add(str(value))
    info = tasks.setdefault(
        encoded.task,
        {
            "episodes": [],
            "splits": {},
            "collect": _collect_provenance(ep),
            "flow": encoded.flow_meta,
            "annotate": encoded.annotate_header,
        },
    )
    info["episodes"].append(
        {
            "episode": encoded.index,
            "seed": ep.meta.seed,
            "length": ep.length,
            "return": ep.meta.episode_return,
            "split": split,
        }
    )
    info["splits"].setdefault(split, []).append(encoded.index)


def _collect_provenance(ep: Episode) -> dict[str, Any]:
    meta = asdict(ep.meta)
    for per_episode in (
        "episode",
        "seed",
        "length",
        "episode_return",
        "terminated",
        "truncated",
        "body_names",
        "geom_names",
    ):
        meta.pop(per_episode, None)
    return meta


def run(
    episodes_dir: str | Path,
    flow_dir: str | Path,
    annotations_dir: str | Path,
    out: str | Path,
    section: EncodeParams,
    weights: WeightsParams,
    *,
    encoder: ClipEncoder | None = None,
) -> EncodeSummary:
    """Encode every episode of every task into the dataset folder ``out`` (format: :mod:`pipeline.dataset`).

    Args:
        episodes_dir, flow_dir, annotations_dir: folders with one subfolder per task (collect, flow, annotate outputs).
        out: the dataset folder: ``train/`` and ``validation/`` shards, ``README.md``, ``stats.json``.
        section: the ``encode`` params; weights: the ``weights`` policy.
        encoder: a ready CLIP encoder (tests, benchmarks); built from ``section`` when omitted.

    Raises:
        EncodeInputError: missing or malformed inputs (named, with the fix), before the folder is replaced.
    """
    out = Path(out)
    check_replaceable(out, "encode")  # before any work: never a user's folder
    inputs = discover(episodes_dir, flow_dir, annotations_dir)
    check_inputs(inputs)
    split_of = assign_splits(inputs, section.val_fraction, section.seed)
    log.info(
        "encode: %d episodes of %d task(s): %s",
        len(inputs),
        len({e.task for e in inputs}),
        ", ".join(f"{s} {sum(v == s for v in split_of.values())}" for s in SPLITS),
    )
    if encoder is None:
        encoder = load_clip(section, weights)
    texts = _TextEmbedder(encoder)
    tasks: dict[str, dict[str, Any]] = {}
    stats = {s: SplitStats() for s in SPLITS}
    shapes: dict[str, set[str]] = {"H": set(), "W": set(), "A": set()}
    shards: dict[str, list[ShardInfo]] = {}
    bar = progress(total=len(inputs), desc="encode", unit="episode")
    with (
        atomic_path(out, clean_stale=True, owner="encode") as tmp,
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="encode-samples") as pool,
    ):
        tmp.mkdir()
        for split in SPLITS:
            sink = ShardSink(tmp / split, maxcount=section.shard_maxcount, maxsize_bytes=section.shard_maxsize_mb * 1e6)
            # Episode i is encoded (PNG, npy, JSON), written and counted on the helper thread (the second core)
            # while episode i+1 is read and embedded here. The helper is the only writer of the sink and the
            # statistics and runs episodes in submission order, so the bytes do not depend on the overlap.
            pending: deque[Future[None]] = deque()
            for item in (i for i in inputs if split_of[(i.task, i.episode)] == split):
                encoded = embed_episode(item, encoder, texts)
                pending.append(pool.submit(_write_episode, encoded, sink, stats[split], tasks, shapes, split))
                while len(pending) > 1 or (pending and pending[0].done()):  # at most one episode waits (memory)
                    pending.popleft().result()  # re-raises the helper's error here
                    bar.update(1)
            while pending:
                pending.popleft().result()
                bar.update(1)
            shards[split] = sink.close()
        bar.close()
        splits = {
            s: {"samples": stats[s].samples, "episodes": stats[s].episodes, "shards": [x.to_json() for x in shards[s]]}
            for s in SPLITS
        }
        provenance = {
            "schema_version": SCHEMA_VERSION,
            "made_by": "semore encode",
            "encode_params": section.model_dump(mode="json"),
            "weights_params": weights.model_dump(mode="json"),
            "clip": encoder.provenance(),
            "tasks": {
                task: {**tasks[task], "episodes": sorted(tasks[task]["episodes"], key=lambda e: e["episode"])}
                for task in sorted(tasks)
            },
            "libraries": _library_versions(),
        }
        sizes = {k: "/".join(sorted(v, key=int)) for k, v in shapes.items()}
        sizes["D"] = str(encoder.dim)
        card = build_card(section.dataset_name, section.license, splits, sizes, provenance)
        write_metadata(tmp, splits, {s: stats[s].to_json() for s in SPLITS if stats[s].samples}, provenance, str(card))
    log.info(
        "encode: wrote %s (%s)",
        out,
        ", ".join(f"{s}: {v['samples']} samples in {len(v['shards'])} shard(s)" for s, v in splits.items()),
    )
    return EncodeSummary(
        stage="encode",
        out=str(out),
        splits=splits,
        embed_dim=encoder.dim,
        annotated_frames=sum(s.annotated for s in stats.values()),
        failed_annotations=sum(s.failed for s in stats.values()),
    )


def _library_versions() -> dict[str, str]:
    import cv2
    import PIL
    import webdataset

    return {
        "numpy": np.__version__,
        "opencv": cv2.__version__,
        "pillow": PIL.__version__,
        "webdataset": webdataset.__version__,
    }
