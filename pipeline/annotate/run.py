"""The annotate stage: one task's episodes -> backend (through the cache) -> episode JSON files, metrics.

Outputs (docs/ARCHITECTURE.md, annotate):

* ``<out>/episode_<i:06d>.json`` per episode, written atomically once all its
  annotated frames are done, in the format of :class:`pipeline.annotate.schema.AnnotationFile`;
* ``metrics`` (when given): frame and failure counts, and, where the episodes have
  segmentation, the accuracy against the simulator (:mod:`pipeline.annotate.accuracy`) and
  how much of the state the texts carry (``text_information``: distinct texts and a
  cross-validated probe, :mod:`pipeline.annotate.information`).

The work is a plain loop over episodes: :func:`load_frames` loads one episode (the next one
on a helper thread while the backend answers this one), :func:`prepare_episode` looks its
frames up in the cache, :func:`query_backend` sends the misses to the
backend (caching every answer as it arrives, so an interrupted run resumes where it
stopped), :func:`episode_file` builds the output file, and :class:`Tally` adds the
episode's counts to the run's.

Two kinds of failure stop the run with an error (exit 2) after every file is
written, so that DVC records nothing and the next stage never sees the outputs
as done:

* failures that say nothing about the frame (server unreachable, timeouts, HTTP
  errors; :class:`AnnotateIncomplete`): not cached, a rerun asks only those frames;
* more invalid answers than ``annotate.max_failure_rate`` allows
  (:class:`AnnotateFailed`; the message gives the rate, a sample raw answer and
  the fix). Invalid answers are cached as failures with the number of runs that
  got one: a rerun asks those frames again (sampling past the earlier runs'
  seeds) until ``annotate.max_invalid_runs`` runs have, so a fixed server or
  model completes the dataset without deleting anything.
"""

from __future__ import annotations

import contextlib
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from pipeline.annotate.accuracy import AccuracyCounts
from pipeline.annotate.base import BACKENDS, Backend, FrameItem, FrameResult, create_backend
from pipeline.annotate.cache import AnnotationCache, cache_key
from pipeline.annotate.information import TextSamples
from pipeline.annotate.schema import AnnotationFile, AnnotationSource, annotated_steps, output_filename
from pipeline.annotate.truth import TRUTH_FIELDS, SceneTruth, scene_truths
from pipeline.common.errors import UserError
from pipeline.common.io import remove_stale_temporaries_in, sha256_of, write_json_atomic
from pipeline.common.logs import progress
from pipeline.common.stage import StageSummary
from pipeline.sim.episodes import Episode, EpisodeHeader, EpisodeMeta, check_episodes, load_episode
from pipeline.sim.task_physics import prefetch_task_physics

if TYPE_CHECKING:
    from pipeline.config import AnnotateParams, WeightsParams

log = logging.getLogger(__name__)


class AnnotateIncomplete(UserError):
    """Some frames could not be annotated for reasons outside the frame (server down, timeouts)."""


class AnnotateFailed(UserError):
    """More frames than ``annotate.max_failure_rate`` allows have invalid answers."""


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
    failed_retries_exhausted: int
    failure_rate: float | None
    accuracy: dict[str, Any] | None
    text_information: dict[str, Any] | None
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
        source: the episode file's name and SHA-256 (the output file's ``source``).
        scenes: step -> the simulator's view of that frame (empty without segmentation).
        cached: results read from the cache (answers, and invalid answers whose runs are
            used up); ``todo``: frames to send to the backend (new, or invalid with runs left).
    """

    meta: EpisodeMeta
    steps: list[int]
    source: AnnotationSource
    scenes: dict[int, SceneTruth]
    cached: list[FrameResult]
    todo: list[FrameItem]


@dataclass(frozen=True)
class FailureSample:
    """One invalid answer, shown when a run is refused: where it is, the model's text and why it is invalid."""

    episode: int
    step: int
    raw: str | None
    error: str | None


@dataclass
class Tally:
    """Counts over the episodes of a run (each :meth:`add` is one finished episode)."""

    frames: int = 0
    ok: int = 0
    failed_invalid: int = 0
    failed_transient: int = 0
    retries_exhausted: int = 0
    cache_hits: int = 0
    backend_frames: int = 0
    backend_calls: int = 0
    accuracy: AccuracyCounts = field(default_factory=AccuracyCounts)
    texts: TextSamples = field(default_factory=TextSamples)
    #: The first invalid answer of the run (episode order, then step): shown when the run is refused.
    sample: FailureSample | None = None

    def add(
        self, job: EpisodeJob, answered: list[FrameResult], results: list[FrameResult], max_invalid_runs: int
    ) -> None:
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
                self.retries_exhausted += int(result.runs >= max_invalid_runs)
                if self.sample is None:
                    self.sample = FailureSample(result.item.episode, result.item.step, result.raw, result.error)
            else:
                self.failed_transient += 1
            scene = job.scenes.get(result.item.step)
            if result.annotation is not None and scene is not None:
                self.accuracy.add(result.annotation, scene)
                self.texts.add(result.item.episode, result.annotation, scene)

    @property
    def failed(self) -> int:
        return self.failed_invalid + self.failed_transient


def check_inputs(episodes_dir: Path, needs_scene: bool, backend_name: str) -> tuple[list[EpisodeHeader], bool]:
    """The episode files of one task folder, checked from their headers, and whether all have segmentation.

    Raises:
        UserError: no episodes, a damaged or malformed file, several tasks in one folder
            (:func:`pipeline.sim.episodes.check_episodes`), or a backend that needs segmentation
            the episodes lack.
    """
    headers = check_episodes(episodes_dir)
    with_segmentation = [h.has("segmentation") for h in headers]
    if needs_scene and not all(with_segmentation):
        missing = [h.path.name for h, s in zip(headers, with_segmentation, strict=True) if not s]
        raise UserError(
            f"annotate.backend = {backend_name!r} needs segmentation, which {', '.join(missing[:3])}"
            f"{' ...' if len(missing) > 3 else ''} in {episodes_dir} lack.\n"
            "  Fix: set collect.segmentation: true and rerun the collect stage, "
            "or use annotate.backend: transformers or openai."
        )
    return headers, all(with_segmentation)


@dataclass(frozen=True)
class LoadedEpisode:
    """What :func:`load_frames` reads of one episode: its frames, the SHA-256 of its file and each annotated
    step's truth."""

    episode: Episode
    sha256: str
    scenes: dict[int, SceneTruth]


def load_frames(header: EpisodeHeader, steps: list[int], with_truth: bool, min_visible_pixels: int) -> LoadedEpisode:
    """Load one episode's frames (and, ``with_truth``, each of ``steps``' simulator truth): a pure
    function of the file, so the stage runs it for the next episode on a helper thread."""
    episode = load_episode(header.path, fields_=["frames", *(TRUTH_FIELDS if with_truth else ())], header=header)
    scenes = scene_truths(episode, steps, min_visible_pixels) if with_truth else {}
    return LoadedEpisode(episode, sha256_of(header.path), scenes)


def prepare_episode(
    header: EpisodeHeader,
    loaded: LoadedEpisode,
    steps: list[int],
    backend: Backend,
    cache: AnnotationCache,
    prompt: str,
    max_invalid_runs: int,
) -> EpisodeJob:
    """Look each annotated frame of one loaded episode up in the cache.

    Runs in episode order on the stage's thread, after the previous episode's answers are cached,
    so a frame that recurs across episodes is asked once. A cached invalid answer is asked again
    (with ``rerun`` set) while fewer than ``max_invalid_runs`` runs have got one; then it is served
    as the final failure.
    """
    path, meta, episode, scenes = header.path, header.meta, loaded.episode, loaded.scenes
    cached: list[FrameResult] = []
    todo: list[FrameItem] = []
    for t in steps:
        item = FrameItem(
            meta.task, meta.episode, t, np.ascontiguousarray(episode.frames[t]).copy(), prompt, scenes.get(t)
        )
        if backend.uses_cache:
            item.key = cache_key(item.image, backend.name, backend.model_key, prompt)
            hit = cache.get(item)
            if hit is not None and (hit.status == "ok" or hit.runs >= max_invalid_runs):
                cached.append(hit)
                continue
            if hit is not None:
                item.rerun = hit.runs
        todo.append(item)
    source = AnnotationSource(episode=path.name, episode_sha256=loaded.sha256)
    return EpisodeJob(meta, steps, source, scenes, cached, todo)


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


def episode_file(job: EpisodeJob, results: list[FrameResult], run_fields: dict[str, Any]) -> AnnotationFile:
    """The output file of one episode from its results (sorted by step) and the fields every file of the run shares."""
    return AnnotationFile(
        **run_fields, episode=job.meta.episode, source=job.source, records=[r.record() for r in results]
    )


def run(
    episodes: str | Path,
    out: str | Path,
    section: AnnotateParams,
    weights: WeightsParams,
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
        UserError: bad inputs or backend setup (before any work); after writing
            everything, :class:`AnnotateIncomplete` when frames failed for reasons
            outside the frame (rerun to complete them), or :class:`AnnotateFailed`
            when the share of invalid answers exceeds ``section.max_failure_rate``.
    """
    episodes_dir, out_dir = Path(episodes), Path(out)
    cls = type(backend) if backend is not None else BACKENDS.get(section.backend)
    headers, have_truth = check_inputs(episodes_dir, cls.needs_scene, section.backend)
    task = headers[0].meta.task
    if (
        have_truth
    ):  # the physics reader and the text probe need the task's model: compile it beside the first episode's loading
        prefetch_task_physics(task, headers[0].meta.suite)
    prompt = section.prompt.format(task=task)
    for stale in remove_stale_temporaries_in(out_dir):  # left by a killed earlier run
        log.info("removed %s, left by an interrupted run", stale)
    owned = contextlib.nullcontext(backend) if backend is not None else create_backend(section, weights)
    with owned as active:
        summary, sample = _annotate_episodes(active, headers, have_truth, task, prompt, out_dir, section)
    if metrics is not None:
        summary.write_metrics(metrics)
    log.info(
        "annotate %s: %d frames (%d ok, %d failed), %d from the cache, %d sent to %s (%d calls)",
        task,
        summary.frames,
        summary.ok,
        summary.failed,
        summary.cache_hits,
        summary.backend_frames,
        summary.backend,
        summary.backend_calls,
    )
    if summary.failed_unreachable:
        raise AnnotateIncomplete(
            f"annotate {task}: {summary.failed_unreachable} of {summary.frames} frames failed "
            "for reasons outside the frame "
            f"(server unreachable, timeouts or HTTP errors; see 'error' in {out_dir}/episode_*.json).\n"
            f"  Fix: make the backend reachable and rerun; the {summary.ok} answered frames are cached "
            f"in {section.cache_dir} and will not be queried again."
        )
    if summary.failure_rate is not None and summary.failure_rate > section.max_failure_rate:
        raise AnnotateFailed(failure_message(summary, sample, section, out_dir))
    return summary


def failure_message(
    summary: AnnotateSummary, sample: FailureSample | None, section: AnnotateParams, out_dir: Path
) -> str:
    """Why a run with too many invalid answers is refused: the rate, a sample raw answer, and the fix."""
    lines = [
        f"annotate {summary.task}: {summary.failed} of {summary.frames} frames ({summary.failure_rate:.1%}) "
        f"have no valid annotation, above annotate.max_failure_rate = {section.max_failure_rate:g} "
        f"({summary.backend} backend, model {summary.model!r})."
    ]
    if sample is not None:
        raw = sample.raw if sample.raw is not None else "(no answer text)"
        raw = raw if len(raw) <= 300 else raw[:300] + " ..."
        lines.append(f"  A sample raw answer (episode {sample.episode}, step {sample.step}): {raw!r}")
        lines.append(f"  Why it is invalid: {sample.error}")
    retry_left = summary.failed - summary.failed_retries_exhausted
    lines.append(
        "  Fix: make the model answer the prompt with the JSON object it asks for "
        "(a chat VLM that follows instructions, annotate.prompt, annotate.max_new_tokens), then rerun: "
        + (
            f"the {retry_left} failed frames are asked again "
            f"(up to annotate.max_invalid_runs = {section.max_invalid_runs} runs each), "
            if retry_left
            else ""
        )
        + (
            f"{summary.failed_retries_exhausted} frames have used all {section.max_invalid_runs} runs "
            "(raise annotate.max_invalid_runs to ask them again), "
            if summary.failed_retries_exhausted
            else ""
        )
        + f"answered frames come from the cache ({section.cache_dir}). "
        "Or, if this rate is acceptable, raise annotate.max_failure_rate. "
        f"The failed records are in {out_dir}/episode_*.json."
    )
    return "\n".join(lines)


def _annotate_episodes(
    backend: Backend,
    headers: list[EpisodeHeader],
    have_truth: bool,
    task: str,
    prompt: str,
    out_dir: Path,
    section: AnnotateParams,
) -> tuple[AnnotateSummary, FailureSample | None]:
    """The loop over episodes: prepare, query, write, count; then remove stale files. Returns the summary and a
    sample failure."""
    cache = AnnotationCache(section.cache_dir if backend.uses_cache else None)
    run_fields = {
        "task": task,
        "backend": backend.name,
        "model": backend.model,
        "prompt": prompt,
        "every_k": section.every_k,
        "weights": backend.provenance(),
    }
    steps = {h.meta.episode: annotated_steps(h.length, section.every_k) for h in headers}
    tally = Tally()

    def load(header: EpisodeHeader) -> LoadedEpisode:
        return load_frames(header, steps[header.meta.episode], have_truth, section.min_visible_pixels)

    bar = progress(total=sum(len(s) for s in steps.values()), desc=f"annotate {task} ({backend.name})", unit="frame")
    try:
        # The next episode is loaded (decompressed, hashed, its scene truth computed) on a helper
        # thread while the backend answers this one.
        with ThreadPoolExecutor(1, thread_name_prefix="annotate-load") as pool:
            upcoming = pool.submit(load, headers[0])
            for i, header in enumerate(headers):
                loaded = upcoming.result()  # a loading error is raised here, in episode order
                if i + 1 < len(headers):
                    upcoming = pool.submit(load, headers[i + 1])
                job = prepare_episode(
                    header, loaded, steps[header.meta.episode], backend, cache, prompt, section.max_invalid_runs
                )
                bar.update(len(job.cached))
                answered = query_backend(backend, job.todo, cache, bar)
                results = sorted(job.cached + answered, key=lambda r: r.item.step)
                write_json_atomic(
                    out_dir / output_filename(header.meta.episode),
                    episode_file(job, results, run_fields).to_json(),
                    items="records",
                )
                tally.add(job, answered, results, section.max_invalid_runs)
    finally:
        bar.close()

    known = {output_filename(h.meta.episode) for h in headers}
    for stale in sorted(out_dir.glob("episode_*.json")):
        if stale.name not in known:
            log.info("annotate: removing %s (no such episode any more)", stale)
            stale.unlink()

    summary = AnnotateSummary(
        stage="annotate",
        out=str(out_dir),
        task=task,
        backend=backend.name,
        model=backend.model,
        episodes=len(headers),
        every_k=section.every_k,
        frames=tally.frames,
        ok=tally.ok,
        failed=tally.failed,
        failed_invalid_answer=tally.failed_invalid,
        failed_unreachable=tally.failed_transient,
        failed_retries_exhausted=tally.retries_exhausted,
        failure_rate=round(tally.failed / tally.frames, 6) if tally.frames else None,
        accuracy=tally.accuracy.to_json() if have_truth else None,
        text_information=tally.texts.report() if have_truth else None,
        cache_hits=tally.cache_hits,
        backend_frames=tally.backend_frames,
        backend_calls=tally.backend_calls,
    )
    return summary, tally.sample
