"""Annotate one task's episodes: frames -> backend (through the cache) -> episode JSON files + metrics.

Outputs (docs/ARCHITECTURE.md, annotate):

* ``<out>/episode_<i:06d>.json`` per episode, written atomically once all its
  annotated frames are done: ``{"task", "episode", "backend", "model", "prompt",
  "every_k", "weights", "records": [{"step", "status", "annotation", "raw",
  "error"}, ...]}``, records sorted by step (0, k, 2k, ... <= T);
* ``<metrics>``: frame and failure counts, and the accuracy against the simulator
  where the episodes have segmentation (:mod:`pipeline.annotate.accuracy`).

Every finished answer is cached as soon as it arrives, so an interrupted run
resumes where it stopped. Failures that say nothing about the frame (server
unreachable, timeouts, HTTP errors) are recorded in the episode files and then
stop the run with an error (exit 2) so that DVC does not record the outputs as
done; a rerun queries only those frames again.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Iterator

import numpy as np

from pipeline.annotate.accuracy import AccuracyCounts
from pipeline.annotate.base import Backend, FrameItem, FrameResult, backend_class, create_backend
from pipeline.annotate.cache import AnnotationCache, cache_key
from pipeline.annotate.truth import TRUTH_FIELDS, SceneTruth, scene_truths
from pipeline.episodes import EpisodeMeta, list_episodes, load_episode, load_meta
from pipeline.errors import UserError
from pipeline.io import write_json_atomic
from pipeline.logs import progress

if TYPE_CHECKING:
    from pipeline.config import AnnotateParams, Params

log = logging.getLogger(__name__)


class AnnotateIncomplete(UserError):
    """Some frames could not be annotated for reasons outside the frame (server down, timeouts)."""


def output_filename(episode: int) -> str:
    return f"episode_{episode:06d}.json"


def annotated_steps(length: int, every_k: int) -> list[int]:
    """Frames annotated in an episode of ``length`` agent steps (``length + 1`` frames): 0, k, 2k, ... <= length."""
    return list(range(0, length + 1, every_k))


@dataclass
class _EpisodeState:
    meta: EpisodeMeta
    steps: list[int]
    scenes: dict[int, SceneTruth] = field(default_factory=dict)
    results: dict[int, FrameResult] = field(default_factory=dict)
    enumerated: bool = False

    @property
    def complete(self) -> bool:
        return self.enumerated and len(self.results) == len(self.steps)


@dataclass
class TaskSummary:
    """Counts of one run (``metrics`` is what the metrics file holds)."""

    metrics: dict[str, Any]
    cache_hits: int
    backend_frames: int
    backend_calls: int
    transient_failures: int


def _has_member(path: Path, name: str) -> bool:
    with np.load(path, allow_pickle=False) as npz:
        return name in npz.files


def _check_inputs(episodes_dir: Path, needs_scene: bool, backend_name: str) -> tuple[list[Path], list[EpisodeMeta], bool]:
    files = list_episodes(episodes_dir)
    if not files:
        raise UserError(
            f"{episodes_dir}: no episode_*.npz files.\n  Fix: run the collect stage first "
            f"(`semore collect --task <task> --out {episodes_dir}`), or pass --episodes data/episodes/<task>."
        )
    try:
        metas = [load_meta(f) for f in files]
        with_segmentation = [_has_member(f, "segmentation") for f in files]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UserError(f"{episodes_dir}: unreadable episode file ({exc}).\n  Fix: rerun the collect stage.") from None
    tasks = sorted({m.task for m in metas})
    if len(tasks) != 1:
        raise UserError(f"{episodes_dir}: episodes of several tasks ({', '.join(tasks)}); one folder must hold one task's episodes")
    if needs_scene and not all(with_segmentation):
        missing = [f.name for f, s in zip(files, with_segmentation, strict=True) if not s]
        raise UserError(
            f"annotate.backend = {backend_name!r} needs segmentation, which {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} in {episodes_dir} lack.\n"
            "  Fix: set collect.segmentation: true and rerun the collect stage, or use annotate.backend: transformers or openai."
        )
    return files, metas, all(with_segmentation)


def annotate_task(
    episodes_dir: str | Path, out_dir: str | Path, metrics_path: str | Path, params: "Params", backend: Backend | None = None
) -> TaskSummary:
    """Annotate every episode of one task folder; write the episode JSONs and the metrics file.

    Args:
        episodes_dir: ``data/episodes/<task>`` (output of the collect stage).
        out_dir: ``data/annotations/<task>``.
        metrics_path: ``data/metrics/annotate/<task>.json``.
        params: the whole validated :class:`pipeline.config.Params` (``annotate`` and ``weights`` are read).
        backend: an already built backend (else one is built from params and closed at the end).

    Raises:
        UserError: bad inputs or backend setup (before any work), or
            :class:`AnnotateIncomplete` after writing everything when frames failed for
            reasons outside the frame (rerun to complete them).
    """
    ap = params.annotate
    episodes_dir, out_dir, metrics_path = Path(episodes_dir), Path(out_dir), Path(metrics_path)
    cls = type(backend) if backend is not None else backend_class(ap.backend)
    files, metas, have_truth = _check_inputs(episodes_dir, cls.needs_scene, ap.backend)
    task = metas[0].task
    prompt = ap.prompt.format(task=task)
    owned = backend is None
    if backend is None:
        backend = create_backend(ap, params.weights)
    try:
        return _run(backend, files, metas, have_truth, task, prompt, out_dir, metrics_path, ap)
    finally:
        if owned:
            backend.close()


def _run(backend: Backend, files: list[Path], metas: list[EpisodeMeta], have_truth: bool, task: str, prompt: str,
         out_dir: Path, metrics_path: Path, ap: "AnnotateParams") -> TaskSummary:
    cache = AnnotationCache(ap.cache_dir if backend.uses_cache else None)
    states = {m.episode: _EpisodeState(m, annotated_steps(m.length, ap.every_k)) for m in metas}
    total = sum(len(s.steps) for s in states.values())
    header = {"task": task, "backend": backend.name, "model": backend.model, "prompt": prompt, "every_k": ap.every_k, "weights": backend.provenance()}
    accuracy = AccuracyCounts()
    counts = {"ok": 0, "failed": 0, "failed_invalid": 0, "failed_transient": 0}
    calls = {"frames": 0, "calls": 0}
    fields_ = ["frames", *(TRUTH_FIELDS if have_truth else ())]
    bar = progress(total=total, desc=f"annotate {task} ({backend.name})", unit="frame")

    def finish(state: _EpisodeState) -> None:
        records = [state.results[t].record() for t in state.steps]
        for t in state.steps:
            result = state.results[t]
            if result.annotation is not None and t in state.scenes:
                accuracy.add(result.annotation, state.scenes[t])
        write_json_atomic(out_dir / output_filename(state.meta.episode), {**header, "episode": state.meta.episode, "records": records})
        del states[state.meta.episode]

    def add(result: FrameResult, state: _EpisodeState) -> None:
        state.results[result.item.step] = result
        counts[result.status] += 1
        if result.status == "failed":
            counts["failed_invalid" if result.final else "failed_transient"] += 1
        bar.update(1)

    def items() -> Iterator[FrameItem]:
        for path, meta in zip(files, metas, strict=True):
            state = states[meta.episode]
            try:
                episode = load_episode(path, fields_=fields_)
            except ValueError as exc:
                raise UserError(f"{exc}") from None
            if have_truth:
                state.scenes = scene_truths(episode, state.steps, ap.min_visible_pixels)
            for t in state.steps:
                item = FrameItem(task, meta.episode, t, np.ascontiguousarray(episode.frames[t]).copy(), prompt, state.scenes.get(t))
                if backend.uses_cache:
                    item.key = cache_key(item.image, backend.name, backend.model_key, prompt)
                    cached = cache.get(item)
                    if cached is not None:
                        add(cached, state)
                        continue
                yield item
            del episode
            state.enumerated = True
            if state.complete:
                finish(state)

    try:
        for result in backend.annotate(items()):
            state = states[result.item.episode]
            cache.put(result)
            calls["frames"] += 1
            calls["calls"] += result.calls
            add(result, state)
            if state.complete:
                finish(state)
    finally:
        bar.close()
    if states:  # a backend that lost frames is a bug, not a user error
        raise RuntimeError(f"annotate: backend {backend.name} returned no result for some frames of episodes {sorted(states)}")

    known = {output_filename(m.episode) for m in metas}
    for stale in sorted(out_dir.glob("episode_*.json")):
        if stale.name not in known:
            log.info("annotate: removing %s (no such episode any more)", stale)
            stale.unlink()

    metrics = {
        "task": task,
        "backend": backend.name,
        "model": backend.model,
        "episodes": len(metas),
        "every_k": ap.every_k,
        "frames": total,
        "ok": counts["ok"],
        "failed": counts["failed"],
        "failed_invalid_answer": counts["failed_invalid"],
        "failed_unreachable": counts["failed_transient"],
        "failure_rate": round(counts["failed"] / total, 6) if total else None,
        "accuracy": accuracy.to_json() if have_truth else None,
    }
    write_json_atomic(metrics_path, metrics)
    summary = TaskSummary(metrics, cache.hits, calls["frames"], calls["calls"], counts["failed_transient"])
    log.info(
        "annotate %s: %d frames (%d ok, %d failed), %d from the cache, %d sent to %s (%d calls)",
        task, total, counts["ok"], counts["failed"], cache.hits, calls["frames"], backend.name, calls["calls"],
    )
    if counts["failed_transient"]:
        raise AnnotateIncomplete(
            f"annotate {task}: {counts['failed_transient']} of {total} frames failed for reasons outside the frame "
            f"(server unreachable, timeouts or HTTP errors; see 'error' in {out_dir}/episode_*.json).\n"
            f"  Fix: make the backend reachable and rerun; the {counts['ok'] + counts['failed_invalid']} finished frames are cached "
            f"in {ap.cache_dir} and will not be queried again."
        )
    return summary
