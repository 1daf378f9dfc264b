"""The flow stage for one task: episodes in, one flow file per episode, metrics and previews out.

``run(episodes, out, section, weights) -> FlowSummary``. Every episode is checked
(:func:`pipeline.sim.episodes.check_episodes`, and by the backend) before anything is written.
Then one loop: the backend computes the episodes in order (:meth:`FlowBackend.flows`);
each computed episode is converted to float16 and checked finite (:func:`to_float16`), then
written as its flow file (:mod:`pipeline.flow.files`, :func:`write_episode`) and measured,
previews drawn (:func:`measure_episode_flow`, which returns its metrics). One helper thread
overlaps that, and the loading of the next episodes, with the backend's computation; when the
helper falls behind (and once the backend is done) the main thread takes over work the helper
has not started (:class:`Task`), so both cores stay busy whichever side is slower.

A flow file whose ``meta.source`` (backend record, episode SHA-256, format version) and
pair count match this run's is kept (a rerun after an interrupt loses no finished episode);
one computed from another episode (another SHA-256) or another backend is recomputed.
Previews go to ``<out>/previews/``; flow files and previews this run did not produce are
removed.
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

import numpy as np

from pipeline.common.errors import UserError
from pipeline.common.io import remove_stale_temporaries_in, sha256_of
from pipeline.common.logs import progress
from pipeline.common.stage import StageSummary
from pipeline.config import FlowParams, WeightsParams
from pipeline.flow.base import FlowBackend, FlowResult
from pipeline.flow.files import FLOAT16_MAX, as_float16, flow_meta, flow_source, read_flow, read_flow_meta, write_flow
from pipeline.flow.metrics import EpisodeQuality, TaskQuality, measure_episode, measured_pairs
from pipeline.flow.registry import BACKENDS
from pipeline.flow.simulator import SIMULATOR_FIELDS, SimulatorBackend
from pipeline.flow.visualize import preview_image, write_png
from pipeline.sim.episodes import Episode, EpisodeHeader, check_episodes, load_episode

log = logging.getLogger(__name__)
T = TypeVar("T")

PREVIEW_DIR = "previews"
#: Episodes loaded ahead of the backend, and computed episodes waiting to be finished, at most (bounds memory).
AHEAD = 2
#: The exponent bits of a float16: all set for inf and NaN.
_FLOAT16_EXPONENT = 0x7C00


@dataclass(frozen=True)
class FlowSummary(StageSummary):
    """What the flow stage did for one task; :meth:`metrics` is the metrics JSON (docs/ARCHITECTURE.md, flow)."""

    backend: str | None
    model: str | None
    episodes: int
    pairs: int
    measured_pairs: int
    valid_fraction: float | None
    exact_valid_fraction: float | None
    epe: dict[str, Any] | None
    epe_zero_flow: dict[str, Any] | None
    photometric: dict[str, Any]


@dataclass(frozen=True)
class EpisodeJob:
    """One episode's work: where its flow goes, what it is computed from, which pairs are previewed."""

    header: EpisodeHeader
    out: Path
    source: dict[str, Any]
    previews: tuple[int, ...]
    #: episode members to decompress: the backend's, the frames, and the simulator truth when the file holds it
    fields: frozenset[str]

    @property
    def has_truth(self) -> bool:
        """Depth and segmentation recorded: the exact flow (and the end-point error) exists."""
        return self.header.has("depth", "segmentation")


@dataclass(frozen=True)
class Finished:
    """What a piece of an episode's finishing returns: its metrics (None for the write), the previews drawn,
    pairs done."""

    quality: EpisodeQuality | None
    previews: tuple[str, ...]
    pairs: int


def run(
    episodes: str | Path,
    out: str | Path,
    section: FlowParams,
    weights: WeightsParams,
    *,
    backend: FlowBackend | None = None,
) -> FlowSummary:
    """Flow for every episode of one task folder.

    Args:
        episodes: the task's episode folder (``data/episodes/<task>``).
        out: the output folder (``data/flow/<task>``).
        section: the ``flow`` params.
        weights: the ``weights`` params (ptlflow checkpoints).
        backend: an already built backend (default: the one ``section.backend`` names).

    Raises:
        UserError: no episodes, an unreadable or malformed episode, or episodes that lack what the
            backend needs (all checked before any work); a damaged episode found while reading it,
            or non-finite flow (the episode file named; its flow file is not written).
    """
    episodes, out = Path(episodes), Path(out)
    headers = check_episodes(episodes)
    backend_cls = type(backend) if backend is not None else BACKENDS.get(section.backend)
    for header in headers:
        backend_cls.check_episode(header)
    for stale in remove_stale_temporaries_in(out):  # left by a killed earlier run
        log.info("removed %s, left by an interrupted run", stale)
    if backend is None:
        backend = backend_cls.from_params(section, weights)
    record = backend.describe()
    reference = backend if isinstance(backend, SimulatorBackend) else SimulatorBackend(section.occlusion_tolerance)
    jobs = plan(headers, out, record, backend.fields, section.previews)
    if not all(job.has_truth for job in jobs):
        log.info(
            "%d of %d episodes have no depth/segmentation: no end-point error for them",
            sum(not j.has_truth for j in jobs),
            len(jobs),
        )
    up_to_date = [is_up_to_date(job) for job in jobs]
    kept = [job for job, ok in zip(jobs, up_to_date, strict=True) if ok]
    todo = [job for job, ok in zip(jobs, up_to_date, strict=True) if not ok]
    if kept:
        log.info("%d of %d episodes already have up-to-date flow in %s; keeping them", len(kept), len(jobs), out)

    out.mkdir(parents=True, exist_ok=True)
    quality, previews = TaskQuality(), set()
    bar = progress(desc=f"flow ({backend.name})", total=sum(job.header.length for job in jobs), unit="pair")
    with ThreadPoolExecutor(1, thread_name_prefix="flow-io") as pool, contextlib.closing(_loaded(pool, todo)) as loaded:
        every = section.metrics_every
        finishing = deque((job, Task(pool, finish_kept, job, backend, reference, out, every)) for job in kept)
        try:
            for job, episode, result in backend.flows(loaded):
                flow16 = to_float16(
                    result.flow, job.header.path
                )  # non-finite flow is refused before its file is written
                finishing.append((job, Task(pool, write_episode, job, flow16, result.valid, backend.compressible)))
                finishing.append(
                    (
                        job,
                        Task(pool, measure_episode_flow, job, episode, flow16, result, backend, reference, out, every),
                    )
                )
                if len(finishing) > 2 * AHEAD:
                    finishing[-1][1].run_here()  # the helper is behind: do this here rather than wait
                while finishing and finishing[0][1].done():
                    _add(finishing.popleft(), quality, previews, bar)
            for _, task in reversed(finishing):  # the backend is done: share what is left with the helper
                task.run_here()
            while finishing:
                _add(finishing.popleft(), quality, previews, bar)
        finally:
            bar.close()

    _remove_stale(out, {job.out.name for job in jobs}, previews)
    summary = FlowSummary(stage="flow", out=str(out), **quality.summary(record, len(jobs)))
    log.info(
        "flow: %d pairs of %d episodes -> %s; end-point error %s",
        summary.pairs,
        len(jobs),
        out,
        json.dumps(summary.epe),
    )
    return summary


def plan(
    headers: list[EpisodeHeader], out: Path, record: dict[str, Any], backend_fields: tuple[str, ...], previews: int
) -> list[EpisodeJob]:
    """One :class:`EpisodeJob` per episode; ``previews`` pairs spread evenly over all pairs of the task."""
    shown = _preview_pairs([h.length for h in headers], previews)
    jobs = []
    for index, header in enumerate(headers):
        truth = set(SIMULATOR_FIELDS) if header.has("depth", "segmentation") else set()
        jobs.append(
            EpisodeJob(
                header=header,
                out=out / header.path.name,
                source=flow_source(record, sha256_of(header.path)),
                previews=tuple(sorted(t for e, t in shown if e == index)),
                fields=frozenset({"frames", *backend_fields} | truth),
            )
        )
    return jobs


def is_up_to_date(job: EpisodeJob) -> bool:
    """True when ``job.out`` exists and records this run's source (backend, episode bytes, format) and pair count."""
    existing = read_flow_meta(job.out)
    if existing is None:
        return False
    source = existing.get("source") or {}
    if source.get("episode_sha256") != job.source["episode_sha256"]:
        log.info(
            "%s was computed from another episode than %s (episode sha256 %s, not %s); recomputing it",
            job.out,
            job.header.path,
            source.get("episode_sha256"),
            job.source["episode_sha256"],
        )
        return False
    return source == job.source and existing.get("pairs") == job.header.length


def load(job: EpisodeJob) -> Episode:
    """The members of the job's episode that the backend, the metrics and the previews read."""
    return load_episode(job.header.path, job.fields, header=job.header)


def write_episode(job: EpisodeJob, flow16: np.ndarray, valid: np.ndarray, deflate_flow: bool) -> Finished:
    """Write one computed episode's flow file (``flow16`` from :func:`to_float16`); its pairs count as done."""
    write_flow(job.out, flow16, valid, flow_meta(job.source, job.header.path.name, flow16, valid), deflate_flow)
    return Finished(None, (), job.header.length)


def measure_episode_flow(
    job: EpisodeJob,
    episode: Episode,
    flow16: np.ndarray,
    result: FlowResult,
    backend: FlowBackend,
    reference: SimulatorBackend,
    out: Path,
    every: int = 1,
) -> Finished:
    """Measure one computed episode's flow as written (``flow16``) on pairs 0, every, 2 every, ... and draw
    its previews.

    Args:
        reference: the simulator backend the metrics compare against (``backend`` itself when it is one).
    """
    is_exact = backend is reference
    return _measure(
        job, episode, flow16, result.valid, result if is_exact else None, reference, out, every, show_exact=not is_exact
    )


def finish_kept(
    job: EpisodeJob, backend: FlowBackend, reference: SimulatorBackend, out: Path, every: int = 1
) -> Finished:
    """Measure an up-to-date flow file (read back) and draw its previews."""
    episode = load(job)
    flow16, valid = read_flow(job.out)
    finished = _measure(job, episode, flow16, valid, None, reference, out, every, show_exact=backend is not reference)
    return Finished(finished.quality, finished.previews, job.header.length)


def to_float16(flow: np.ndarray, episode_path: Path) -> np.ndarray:
    """``flow`` as float16 (how it is stored), refused if any value is not finite there.

    Raises:
        UserError: a NaN or infinite value, or one beyond float16's range (+-65504 px), named with its pair
            and the episode file.
    """
    flow16 = as_float16(flow)  # overflow gives inf, refused below with the episode named
    if (flow16.view(np.uint16) & _FLOAT16_EXPONENT).max(
        initial=0
    ) == _FLOAT16_EXPONENT:  # inf or NaN (10x faster than np.isfinite on float16)
        pairs = np.flatnonzero(~np.isfinite(flow16).reshape(len(flow16), -1).all(axis=1))
        raise UserError(
            f"{episode_path}: the flow backend returned non-finite flow (NaN, inf or beyond +-{FLOAT16_MAX:g} px) "
            f"for pair(s) {', '.join(map(str, pairs[:5]))}{' ...' if len(pairs) > 5 else ''} of this episode; "
            "its flow file was not written.\n"
            f"  Fix: check the backend's settings and weights (flow.backend, flow.model, flow.weights, flow.min_size), "
            f"or use flow.backend: simulator or dis."
        )
    return flow16


def _measure(
    job: EpisodeJob,
    episode: Episode,
    flow16: np.ndarray,
    valid: np.ndarray,
    exact_all: FlowResult | None,
    reference: SimulatorBackend,
    out: Path,
    every: int,
    *,
    show_exact: bool,
) -> Finished:
    """Metrics of the written flow against the exact flow (``reference``'s, on the measured pairs only, when the episode
    has simulator truth), and previews.

    Args:
        exact_all: the exact flow of every pair when it is at hand (the simulator backend's own result), else None.
        show_exact: draw the exact flow beside the written one in the previews (not when it is the written one).
    """
    pairs = measured_pairs(len(flow16), every)
    exact = None
    if job.has_truth:
        exact = (
            reference.episode_flow(episode, pairs)
            if exact_all is None
            else FlowResult(exact_all.flow[pairs], exact_all.valid[pairs])
        )
    quality = measure_episode(episode.frames, flow16, valid, exact, every)
    shown = (
        reference.episode_flow(episode, np.array(job.previews, np.int64))
        if show_exact and job.has_truth and job.previews
        else None
    )
    names = []
    for row, t in enumerate(job.previews):
        flows = [(flow16[t].astype(np.float32), valid[t])]
        if shown is not None:
            flows.append((shown.flow[row], shown.valid[row]))
        name = f"{job.header.path.stem}_pair{t:05d}.png"
        write_png(out / PREVIEW_DIR / name, preview_image(episode.frames[t], episode.frames[t + 1], flows))
        names.append(name)
    return Finished(quality, tuple(names), 0)


class Task(Generic[T]):
    """A call handed to the helper thread; if it has not started when its result is needed, it runs in the caller.

    So the main thread, instead of waiting for a helper that is behind, does the work itself.
    """

    def __init__(self, pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> None:
        self._call = functools.partial(fn, *args)
        self._future: Future[T] = pool.submit(self._call)
        self._here: list[T] = []  # the result, when it ran in the caller

    def run_here(self) -> None:
        """Run the call now in this thread, unless the helper has started it (then it carries on there)."""
        if not self._here and self._future.cancel():
            self._here.append(self._call())

    def done(self) -> bool:
        return bool(self._here) or self._future.done()

    def cancel(self) -> None:
        self._future.cancel()

    def result(self) -> T:
        """The call's result (a failure re-raised here), running the call here if the helper has not started it."""
        self.run_here()
        return self._here[0] if self._here else self._future.result()


def _loaded(pool: ThreadPoolExecutor, jobs: list[EpisodeJob]) -> Iterator[tuple[EpisodeJob, Episode]]:
    """Each job with its episode, loaded in ``pool`` up to :data:`AHEAD` episodes ahead; closing it cancels
    pending loads."""
    pending: deque[tuple[EpisodeJob, Task[Episode]]] = deque()
    try:
        for job in jobs:
            pending.append((job, Task(pool, load, job)))
            if len(pending) > AHEAD:
                first, task = pending.popleft()
                yield first, task.result()
        while pending:
            first, task = pending.popleft()
            yield first, task.result()
    finally:
        for _, task in pending:
            task.cancel()


def _add(item: tuple[EpisodeJob, Task[Finished]], quality: TaskQuality, previews: set[str], bar: Any) -> None:
    _, task = item
    finished = task.result()  # re-raises a failure of the helper thread here
    if finished.quality is not None:
        quality.add(finished.quality)
    previews.update(finished.previews)
    bar.update(finished.pairs)


def _preview_pairs(lengths: list[int], count: int) -> set[tuple[int, int]]:
    """``count`` (episode index, pair index) spread evenly over all pairs of the task."""
    total = sum(lengths)
    if count == 0 or total == 0:
        return set()
    starts = np.cumsum([0, *lengths])
    out = set()
    for p in sorted({int(round(x)) for x in np.linspace(0, total - 1, min(count, total))}):
        e = int(np.searchsorted(starts, p, side="right") - 1)
        out.add((e, p - int(starts[e])))
    return out


def _remove_stale(out_dir: Path, episodes: set[str], previews: set[str]) -> None:
    """Delete flow files and previews of a previous run that this run did not produce."""
    for path in sorted(out_dir.glob("episode_*.npz")):
        if path.name not in episodes:
            log.info("removing stale %s (its episode is gone)", path)
            path.unlink()
    for path in sorted((out_dir / PREVIEW_DIR).glob("*.png")):
        if path.name not in previews:
            path.unlink()


def run_flow(
    episodes_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    params: FlowParams,
    weights: WeightsParams,
    backend: FlowBackend | None = None,
) -> dict[str, Any]:
    """:func:`run`, then its metrics written to ``metrics_path`` and returned (the stage's older signature)."""
    summary = run(episodes_dir, out_dir, params, weights, backend=backend)
    summary.write_metrics(metrics_path)
    return summary.metrics()
