"""The annotate stage: one task's episodes -> backend (through the cache) -> episode JSON files, metrics.

Outputs (docs/ARCHITECTURE.md, annotate):

* ``<out>/episode_<i:06d>.json`` per episode, written atomically once all its
  annotated frames are done, in the format of :class:`pipeline.annotate.schema.AnnotationFile`;
* ``metrics`` (when given): frame and failure counts, and the accuracy against the
  simulator where the episodes have segmentation (:mod:`pipeline.annotate.accuracy`).

The work is a plain loop over episodes: :func:`prepare_episode` loads one episode
and looks its frames up in the cache, :func:`query_backend` sends the misses to the
backend (caching every answer as it arrives, so an interrupted run resumes where it
stopped), :func:`episode_file` builds the output file, and :class:`Tally` adds the
episode's counts to the run's.

Failures that say nothing about the frame (server unreachable, timeouts, HTTP
errors) are recorded in the episode files and then stop the run with an error
(exit 2) so that DVC does not record the outputs as done; a rerun queries only
those frames again.
"""
from __future__ import annotations

import contextlib
import logging
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipeline.annotate.accuracy import AccuracyCounts
from pipeline.annotate.base import BACKENDS, Backend, FrameItem, FrameResult, create_backend
from pipeline.annotate.cache import AnnotationCache, cache_key
from pipeline.annotate.schema import AnnotationFile, annotated_steps, output_filename
from pipeline.annotate.truth import TRUTH_FIELDS, SceneTruth, scene_truths
from pipeline.episodes import EpisodeMeta, list_episodes, load_episode, load_meta
from pipeline.errors import UserError
from pipeline.io import write_json_atomic
from pipeline.logs import progress
from pipeline.stage import StageSummary

if TYPE_CHECKING:
    from pipeline.config import AnnotateParams, WeightsParams

log = logging.getLogger(__name__)


class AnnotateIncomplete(UserError):
    """Some frames could not be annotated for reasons outside the frame (server down, timeouts)."""


@dataclass(frozen=True)
class AnnotateSummary(StageSummary):
    """What one annotate run did. :meth:`metrics` is the metrics file (without this run's cache counters)."""

    task: str
    backend: str
    model: str
    episodes: int
    every_k: int
    frames: int
    ok: int
    failed: int
    failed_invalid_answer: int
    failed_unreachable: int
    failure_rate: float | None
    accuracy: dict[str, Any] | None
    cache_hits: int
    backend_frames: int
    backend_calls: int

    #: Counters of this run only: a rerun from the cache changes them, so they stay out of the metrics file.
    RUN_COUNTERS: ClassVar[tuple[str, ...]] = ("cache_hits", "backend_frames", "backend_calls")

    def metrics(self) -> dict[str, Any]:
        return {k: v for k, v in super().metrics().items() if k not in self.RUN_COUNTERS}

    def line(self) -> str:
        return (
            f"annotate {self.task}: {self.frames} frames, {self.ok} ok, {self.failed} failed "
            f"({self.cache_hits} from the cache, {self.backend_frames} sent to {self.backend}) -> {self.out}"
        )


@dataclass
class EpisodeJob:
    """One episode's frames: those answered by the cache, and those the backend must answer.

    Attributes:
        meta: the episode's metadata; ``steps``: the annotated frame indices (sorted).
        scenes: step -> the simulator's view of that frame (empty without segmentation).
        cached: results read from the cache; ``todo``: frames to send to the backend.
    """

    meta: EpisodeMeta
    steps: list[int]
    scenes: dict[int, SceneTruth]
    cached: list[FrameResult]
    todo: list[FrameItem]


@dataclass
class Tally:
    """Counts over the episodes of a run (each :meth:`add` is one finished episode)."""

    frames: int = 0
    ok: int = 0
    failed_invalid: int = 0
    failed_transient: int = 0
    cache_hits: int = 0
    backend_frames: int = 0
    backend_calls: int = 0
    accuracy: AccuracyCounts = field(default_factory=AccuracyCounts)

    def add(self, job: EpisodeJob, answered: list[FrameResult], results: list[FrameResult]) -> None:
        """Count one episode: ``answered`` came from the backend, ``results`` are all its frames by step."""
        self.frames += len(results)
        self.cache_hits += len(job.cached)
        self.backend_frames += len(answered)
        self.backend_calls += sum(r.calls for r in answered)
        for result in results:
            if result.status == "ok":
                self.ok += 1
            elif result.final:
                self.failed_invalid += 1
            else:
                self.failed_transient += 1
            scene = job.scenes.get(result.item.step)
            if result.annotation is not None and scene is not None:
                self.accuracy.add(result.annotation, scene)

    @property
    def failed(self) -> int:
        return self.failed_invalid + self.failed_transient


def _has_member(path: Path, name: str) -> bool:
    with np.load(path, allow_pickle=False) as npz:
        return name in npz.files


def check_inputs(episodes_dir: Path, needs_scene: bool, backend_name: str) -> tuple[list[Path], list[EpisodeMeta], bool]:
    """The episode files of one task folder, their metadata, and whether all have segmentation.

    Raises:
        UserError: no episodes, an unreadable file, several tasks in one folder, or a
            backend that needs segmentation the episodes lack.
    """
    files = list_episodes(episodes_dir)
    if not files:
        raise UserError(
            f"{episodes_dir}: no episode_*.npz files.\n  Fix: run the collect stage first "
            f"(`semore collect --task <task> --out {episodes_dir}`), or pass --episodes data/episodes/<task>."
        )
    try:
        metas = [load_meta(f) for f in files]
        with_segmentation = [_has_member(f, "segmentation") for f in files]
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as exc:
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


def prepare_episode(
    path: Path, meta: EpisodeMeta, steps: list[int], backend: Backend, cache: AnnotationCache, prompt: str,
    with_truth: bool, min_visible_pixels: int,
) -> EpisodeJob:
    """Load one episode's annotated frames (and their simulator truth) and look each up in the cache."""
    fields_ = ["frames", *(TRUTH_FIELDS if with_truth else ())]
    try:
        episode = load_episode(path, fields_=fields_)
    except (ValueError, zipfile.BadZipFile) as exc:
        if isinstance(exc, UserError):
            raise
        raise UserError(f"{path}: unreadable episode file ({exc}).\n  Fix: rerun the collect stage.") from None
    scenes = scene_truths(episode, steps, min_visible_pixels) if with_truth else {}
    cached: list[FrameResult] = []
    todo: list[FrameItem] = []
    for t in steps:
        item = FrameItem(meta.task, meta.episode, t, np.ascontiguousarray(episode.frames[t]).copy(), prompt, scenes.get(t))
        if backend.uses_cache:
            item.key = cache_key(item.image, backend.name, backend.model_key, prompt)
            hit = cache.get(item)
            if hit is not None:
                cached.append(hit)
                continue
        todo.append(item)
    return EpisodeJob(meta, steps, scenes, cached, todo)


def query_backend(backend: Backend, items: list[FrameItem], cache: AnnotationCache, bar: Any) -> list[FrameResult]:
    """Annotate ``items`` with the backend, caching each result as it arrives; one result per item."""
    answered: list[FrameResult] = []
    if not items:
        return answered
    for result in backend.annotate(items):
        cache.put(result)
        answered.append(result)
        bar.update(1)
    if sorted(r.item.step for r in answered) != sorted(i.step for i in items):  # a backend bug, not a user error
        raise RuntimeError(f"annotate: backend {backend.name} did not return exactly one result per frame")
    return answered


def episode_file(job: EpisodeJob, results: list[FrameResult], header: dict[str, Any]) -> AnnotationFile:
    """The output file of one episode from its results (sorted by step)."""
    return AnnotationFile(**header, episode=job.meta.episode, records=[r.record() for r in results])


def run(
    episodes: str | Path,
    out: str | Path,
    section: "AnnotateParams",
    weights: "WeightsParams",
    *,
    metrics: str | Path | None = None,
    backend: Backend | None = None,
) -> AnnotateSummary:
    """Annotate every episode of one task folder; write the episode JSONs (and the metrics file).

    Args:
        episodes: ``data/episodes/<task>`` (output of the collect stage).
        out: ``data/annotations/<task>``.
        section: the ``annotate`` params; ``weights``: the ``weights`` params (VLM weights).
        metrics: ``data/metrics/annotate/<task>.json``, written before any error below is raised.
        backend: an already built backend (else one is built from the params and closed at the end).

    Raises:
        UserError: bad inputs or backend setup (before any work), or
            :class:`AnnotateIncomplete` after writing everything when frames failed for
            reasons outside the frame (rerun to complete them).
    """
    episodes_dir, out_dir = Path(episodes), Path(out)
    cls = type(backend) if backend is not None else BACKENDS.get(section.backend)
    files, metas, have_truth = check_inputs(episodes_dir, cls.needs_scene, section.backend)
    task = metas[0].task
    prompt = section.prompt.format(task=task)
    owned = contextlib.nullcontext(backend) if backend is not None else create_backend(section, weights)
    with owned as active:
        summary = _annotate_episodes(active, files, metas, have_truth, task, prompt, out_dir, section)
    if metrics is not None:
        summary.write_metrics(metrics)
    log.info(
        "annotate %s: %d frames (%d ok, %d failed), %d from the cache, %d sent to %s (%d calls)",
        task, summary.frames, summary.ok, summary.failed, summary.cache_hits, summary.backend_frames, summary.backend, summary.backend_calls,
    )
    if summary.failed_unreachable:
        raise AnnotateIncomplete(
            f"annotate {task}: {summary.failed_unreachable} of {summary.frames} frames failed for reasons outside the frame "
            f"(server unreachable, timeouts or HTTP errors; see 'error' in {out_dir}/episode_*.json).\n"
            f"  Fix: make the backend reachable and rerun; the {summary.ok + summary.failed_invalid_answer} finished frames are cached "
            f"in {section.cache_dir} and will not be queried again."
        )
    return summary


def _annotate_episodes(backend: Backend, files: list[Path], metas: list[EpisodeMeta], have_truth: bool, task: str,
                       prompt: str, out_dir: Path, section: "AnnotateParams") -> AnnotateSummary:
    """The loop over episodes: prepare, query, write, count; then remove stale files."""
    cache = AnnotationCache(section.cache_dir if backend.uses_cache else None)
    header = {"task": task, "backend": backend.name, "model": backend.model, "prompt": prompt, "every_k": section.every_k,
              "weights": backend.provenance()}
    steps = {m.episode: annotated_steps(m.length, section.every_k) for m in metas}
    tally = Tally()
    bar = progress(total=sum(len(s) for s in steps.values()), desc=f"annotate {task} ({backend.name})", unit="frame")
    try:
        for path, meta in zip(files, metas, strict=True):
            job = prepare_episode(path, meta, steps[meta.episode], backend, cache, prompt, have_truth, section.min_visible_pixels)
            bar.update(len(job.cached))
            answered = query_backend(backend, job.todo, cache, bar)
            results = sorted(job.cached + answered, key=lambda r: r.item.step)
            write_json_atomic(out_dir / output_filename(meta.episode), episode_file(job, results, header).to_json())
            tally.add(job, answered, results)
    finally:
        bar.close()

    known = {output_filename(m.episode) for m in metas}
    for stale in sorted(out_dir.glob("episode_*.json")):
        if stale.name not in known:
            log.info("annotate: removing %s (no such episode any more)", stale)
            stale.unlink()

    return AnnotateSummary(
        stage="annotate",
        out=str(out_dir),
        task=task,
        backend=backend.name,
        model=backend.model,
        episodes=len(metas),
        every_k=section.every_k,
        frames=tally.frames,
        ok=tally.ok,
        failed=tally.failed,
        failed_invalid_answer=tally.failed_invalid,
        failed_unreachable=tally.failed_transient,
        failure_rate=round(tally.failed / tally.frames, 6) if tally.frames else None,
        accuracy=tally.accuracy.to_json() if have_truth else None,
        cache_hits=tally.cache_hits,
        backend_frames=tally.backend_frames,
        backend_calls=tally.backend_calls,
    )

