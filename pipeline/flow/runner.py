"""The flow stage for one task: episodes in, one flow file per episode, metrics and previews out.

Output ``<out>/episode_<i:06d>.npz`` (same name as its episode), written atomically
with deterministic bytes:

* ``flow`` (T, 2, H, W) float16: forward flow t -> t+1 in pixels, channel 0 dx (right), channel 1 dy (down);
* ``valid`` (T, H, W) bool: where the flow is defined (see :mod:`pipeline.flow.base`);
* ``meta`` () str: JSON with the backend record (name, model, weights provenance),
  the episode file's SHA-256, T, H, W and the valid fraction.

An output whose ``meta`` already records the same backend record and episode
hash is kept (a rerun after an interrupt loses no finished episode). Previews
go to ``<out>/previews/``; the metrics JSON (DVC metrics) to ``metrics_path``.

Loading the next episode and finishing the last one (float16 conversion, metrics,
previews, writing) run in two helper threads while the backend computes, so a
slow backend is not slowed down further by the bookkeeping around it.
"""
from __future__ import annotations

import json
import logging
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, TypeVar

import numpy as np

from pipeline.config import FlowParams, WeightsParams
from pipeline.episodes import Episode, list_episodes, load_episode, load_meta
from pipeline.errors import UserError
from pipeline.flow.base import FlowBackend, FlowResult
from pipeline.flow.batching import stream_flows
from pipeline.flow.metrics import TaskQuality
from pipeline.flow.registry import BACKENDS, make_backend
from pipeline.flow.simulator import SIMULATOR_FIELDS, SimulatorBackend
from pipeline.flow.visualize import preview_image, write_png
from pipeline.io import dumps_json, write_json_atomic, write_npz_atomic
from pipeline.logs import progress
from pipeline.io import sha256_of

log = logging.getLogger(__name__)

FORMAT = (
    "flow (T, 2, H, W) float16: forward flow from frame t to t+1 in pixels, channel 0 = dx (right, +u), "
    "channel 1 = dy (down, +v); valid (T, H, W) bool: the pixel's content is inside frame t+1 "
    "(and, for the simulator backend, not background and not occluded there)"
)
PREVIEW_DIR = "previews"
#: Bumped when the meaning or computation of the output changes, so older outputs are recomputed.
FORMAT_VERSION = 1
#: Episodes finished or loaded ahead of the backend at most (bounds memory).
AHEAD = 2

T = TypeVar("T")


@dataclass
class _Job:
    """One episode on its way through the stage."""

    index: int
    path: Path
    out: Path
    length: int
    has_truth: bool  # depth and segmentation recorded: exact flow exists
    source: dict[str, Any]


def _members(path: Path) -> set[str]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return set(npz.files)
    except (OSError, ValueError) as exc:
        raise UserError(f"{path}: unreadable episode file ({type(exc).__name__}: {exc}); rerun the collect stage") from exc


def _existing_meta(path: Path) -> dict[str, Any] | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            return json.loads(npz["meta"].item())
    except (OSError, ValueError, KeyError) as exc:
        log.warning("%s: unreadable (%s); recomputing it", path, exc)
        return None


def _check(paths: list[Path], backend_cls: type[FlowBackend]) -> list[tuple[int, bool]]:
    """Check every episode before any work; ``(T, has depth and segmentation)`` of each."""
    checked = []
    for path in paths:
        members = _members(path)
        backend_cls.check_members(members, str(path))
        try:
            length = load_meta(path).length
        except (KeyError, TypeError, ValueError) as exc:
            raise UserError(f"{path}: unreadable episode meta ({exc}); rerun the collect stage") from exc
        checked.append((length, {"depth", "segmentation"} <= members))
    return checked


def _is_done(job: _Job) -> bool:
    existing = _existing_meta(job.out) or {}
    return existing.get("source") == job.source and existing.get("pairs") == job.length


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


def _prefetch(pool: ThreadPoolExecutor, items: Iterable[T], load: Callable[[T], Any]) -> Iterator[tuple[T, Any]]:
    """``(item, load(item))`` with up to :data:`AHEAD` loads running ahead in ``pool``."""
    pending: deque[tuple[T, Future]] = deque()
    for item in items:
        pending.append((item, pool.submit(load, item)))
        if len(pending) > AHEAD:
            first, future = pending.popleft()
            yield first, future.result()
    while pending:
        first, future = pending.popleft()
        yield first, future.result()


class _Finisher:
    """Turns a computed (or kept) episode flow into the output file, metrics and previews."""

    def __init__(self, backend: FlowBackend, reference: SimulatorBackend, out_dir: Path, previews: set[tuple[int, int]], quality: TaskQuality) -> None:
        self.backend, self.reference, self.out_dir = backend, reference, out_dir
        self.previews, self.quality = previews, quality
        self.preview_names: set[str] = set()

    def __call__(self, job: _Job, episode: Episode, result: FlowResult | None) -> None:
        """``result`` None: the output file is up to date; read it back for the metrics."""
        if result is not None:
            flow16, valid = result.flow.astype(np.float16), result.valid
            meta = {
                "format": FORMAT,
                "source": job.source,
                "episode": job.path.name,
                "pairs": int(len(flow16)),
                "height": int(flow16.shape[2]),
                "width": int(flow16.shape[3]),
                "valid_fraction": round(float(valid.mean()), 6) if valid.size else None,
            }
            write_npz_atomic(job.out, {"flow": flow16, "valid": valid, "meta": np.array(dumps_json(meta))})
        else:
            with np.load(job.out, allow_pickle=False) as npz:
                flow16, valid = npz["flow"], npz["valid"]
        flow = flow16.astype(np.float32)  # metrics describe what was written
        exact = None
        if job.has_truth:
            exact = result if (result is not None and self.backend is self.reference) else self.reference.episode_flow(episode)
        self.quality.add(episode.frames, flow, valid, exact)
        for e, t in sorted(self.previews):
            if e == job.index:
                flows = [(flow[t], valid[t])]
                if exact is not None and self.backend is not self.reference:
                    flows.append((exact.flow[t], exact.valid[t]))
                name = f"{job.path.stem}_pair{t:05d}.png"
                self.preview_names.add(name)
                write_png(self.out_dir / PREVIEW_DIR / name, preview_image(episode.frames[t], episode.frames[t + 1], flows))


def run_flow(
    episodes_dir: str | Path,
    out_dir: str | Path,
    metrics_path: str | Path,
    params: FlowParams,
    weights: WeightsParams,
    backend: FlowBackend | None = None,
) -> dict[str, Any]:
    """Flow for every episode of one task folder; returns the metrics written to ``metrics_path``.

    Args:
        backend: an already built backend (default: :func:`make_backend` of ``params``).

    Raises:
        UserError: no episodes, an unreadable episode, or episodes that lack what the backend needs
            (checked for every episode before any work).
    """
    episodes_dir, out_dir = Path(episodes_dir), Path(out_dir)
    paths = list_episodes(episodes_dir)
    if not paths:
        raise UserError(f"{episodes_dir}: no episode_*.npz files; run the collect stage first (semore collect --task <task> --out {episodes_dir})")
    checked = _check(paths, type(backend) if backend is not None else BACKENDS[params.backend])  # before building a model
    if backend is None:
        backend = make_backend(params, weights)
    record = backend.describe()
    jobs = [
        _Job(i, path, out_dir / path.name, length, truth, {"backend": record, "episode_sha256": sha256_of(path), "format_version": FORMAT_VERSION})
        for i, (path, (length, truth)) in enumerate(zip(paths, checked))
    ]
    if not all(job.has_truth for job in jobs):
        log.info("%d of %d episodes have no depth/segmentation: no end-point error for them", sum(not j.has_truth for j in jobs), len(jobs))
    done = [_is_done(job) for job in jobs]
    if any(done):
        log.info("%d of %d episodes already have up-to-date flow in %s; keeping them", sum(done), len(jobs), out_dir)

    reference = backend if isinstance(backend, SimulatorBackend) else SimulatorBackend(params.occlusion_tolerance)
    quality = TaskQuality()
    finish = _Finisher(backend, reference, out_dir, _preview_pairs([j.length for j in jobs], params.previews), quality)
    fields = {"frames", *backend.fields}

    def load(job: _Job) -> Episode:
        try:
            return load_episode(job.path, fields_=fields | (set(SIMULATOR_FIELDS) if job.has_truth else set()))
        except ValueError as exc:
            raise UserError(str(exc)) from exc

    out_dir.mkdir(parents=True, exist_ok=True)
    bar = progress(desc=f"flow ({backend.name})", total=sum(j.length for j in jobs), unit="pair")
    finishing: deque[Future] = deque()
    with ThreadPoolExecutor(1, thread_name_prefix="flow-load") as loader, ThreadPoolExecutor(1, thread_name_prefix="flow-finish") as finisher:
        try:

            def submit(job: _Job, episode: Episode, result: FlowResult | None) -> None:
                finishing.append(finisher.submit(finish, job, episode, result))
                while finishing and (len(finishing) > AHEAD or finishing[0].done()):
                    finishing.popleft().result()  # re-raises a failure here
                bar.update(job.length)

            kept = (job for job, ok in zip(jobs, done) if ok)
            for job, episode in _prefetch(loader, kept, load):
                submit(job, episode, None)
            todo = (job for job, ok in zip(jobs, done) if not ok)
            loaded = ((job, episode) for job, episode in _prefetch(loader, todo, load))
            computed = stream_flows(backend, (((job, episode), episode) for job, episode in loaded))
            for (job, episode), result in computed:
                submit(job, episode, result)
            while finishing:
                finishing.popleft().result()
        except BaseException:
            for future in finishing:
                future.cancel()
            raise
        finally:
            bar.close()

    _remove_stale(out_dir, {p.name for p in paths}, finish.preview_names)
    metrics = quality.summary(record, len(paths))
    write_json_atomic(metrics_path, metrics)
    log.info("flow: %d pairs of %d episodes -> %s; end-point error %s", metrics["pairs"], len(paths), out_dir, json.dumps(metrics["epe"]))
    return metrics


def _remove_stale(out_dir: Path, episodes: set[str], previews: set[str]) -> None:
    """Delete flow files and previews of a previous run that this run did not produce."""
    for path in sorted(out_dir.glob("episode_*.npz")):
        if path.name not in episodes:
            log.info("removing stale %s (its episode is gone)", path)
            path.unlink()
    for path in sorted((out_dir / PREVIEW_DIR).glob("*.png")):
        if path.name not in previews:
            path.unlink()
