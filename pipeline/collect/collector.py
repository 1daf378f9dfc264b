"""Record a task's episodes to disk: the work of the collect stage.

Layout of ``out_dir`` (see :mod:`pipeline.episodes` for the episode schema):

* ``episode_<i:06d>.npz`` for i in ``range(episodes_per_task)``, each written atomically;
* ``index.json``: one row per episode (file, length, return, seed, task, policy, flags);
* ``preview.gif``: the first ``preview_episodes`` episodes (RGB | depth | segmentation).

Determinism: episode ``i`` is reset with :func:`episode_seed` ``(seed, task, i)`` and its
policy draws from a generator seeded with that seed, so an episode depends only on the
params, the task and ``i``: not on the worker that ran it or on the episodes run before it
in the same process. The bytes are therefore identical for any ``workers``.

Resuming: an episode file that already exists, passes its zip CRC check and was recorded
with the same content fingerprint (the params that shape an episode, the policy and its
weights' hash, the schema and simulator versions) is kept, so a rerun after an interrupt
loses no finished episode. Episode files beyond ``episodes_per_task`` and temporaries left
by a killed run are removed.
"""
from __future__ import annotations

import atexit
import hashlib
import logging
import multiprocessing
import threading
import time
import zipfile
from collections import deque
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any, Iterator

import numpy as np

from pipeline.collect.envs import PixelEnv, make_env, resolve_task
from pipeline.collect.policies import Policy, make_policy
from pipeline.config.collect import CollectParams
from pipeline.episodes import SCHEMA_VERSION, Episode, EpisodeMeta, episode_filename, list_episodes, load_episode, load_meta, save_episode, write_index
from pipeline.errors import UserError
from pipeline.io import dumps_json
from pipeline.logs import progress

log = logging.getLogger(__name__)

INDEX_FILE = "index.json"
PREVIEW_FILE = "preview.gif"

#: Params that shape an episode's content (``tasks``, ``episodes_per_task``, ``workers`` and
#: ``preview_episodes`` do not).
CONTENT_PARAMS = ("episode_steps", "action_repeat", "image_size", "camera", "render_mode", "depth", "segmentation", "seed")


def episode_seed(base_seed: int, task: str, index: int) -> int:
    """Seed of episode ``index`` of ``task``: the first 31 bits of sha256("base_seed/task/index")."""
    digest = hashlib.sha256(f"{base_seed}/{task}/{index}".encode()).digest()
    return int.from_bytes(digest[:4], "little") & 0x7FFFFFFF


def simulator_versions() -> dict[str, str]:
    """Versions of the packages that produce the pixels and the physics (recorded in each episode)."""
    versions = {}
    for package in ("mujoco", "dm_control", "gymnasium"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = "absent"
    return versions


def _env_kwargs(params: CollectParams) -> dict[str, Any]:
    return {
        "image_size": params.image_size,
        "camera": params.camera,
        "action_repeat": params.action_repeat,
        "render_mode": params.render_mode,
        "depth": params.depth,
        "segmentation": params.segmentation,
        "episode_steps": params.episode_steps,
    }


def _make_policy(params: CollectParams, env: PixelEnv, task: str) -> Policy:
    return make_policy(
        params.policy, env.action_low, env.action_high,
        task=task, image_size=params.image_size, action_repeat=params.action_repeat, camera=params.camera, render_mode=params.render_mode,
    )


def record_episode(env: PixelEnv, policy: Policy, *, index: int, seed: int, extra: dict[str, Any] | None = None) -> Episode:
    """Run one episode of ``env`` under ``policy`` from ``seed``; return it in the episode schema.

    The episode ends at a true terminal or at ``env.episode_steps`` agent steps (truncation).
    """
    first = env.reset(seed=seed)
    policy.reset(np.random.default_rng(np.random.SeedSequence([seed, 1])), first)
    results = [first]
    actions = []
    result = first
    while not result.done:
        action = policy.act(result)
        actions.append(action)
        result = env.step(action)
        results.append(result)
    steps = results[1:]
    rewards = np.array([r.reward for r in steps], dtype=np.float32)
    meta = EpisodeMeta(
        task=env.task,
        suite=env.suite,
        episode=index,
        seed=seed,
        policy=policy.name,
        action_repeat=env.action_repeat,
        image_size=env.image_size,
        camera=env.camera,
        render_mode=env.render_mode,
        control_timestep=env.control_timestep,
        length=len(steps),
        episode_return=float(sum(r.reward for r in steps)),
        terminated=bool(result.terminated),
        truncated=bool(result.truncated),
        action_low=[float(x) for x in env.action_low],
        action_high=[float(x) for x in env.action_high],
        body_names=env.body_names,
        geom_names=env.geom_names,
        extra={"camera_name": env.camera_name, **(extra or {})},
    )
    return Episode(
        frames=np.stack([r.frame for r in results]),
        actions=np.stack(actions).astype(np.float32, copy=False),
        rewards=rewards,
        discounts=np.array([r.discount for r in steps], dtype=np.float32),
        terminated=np.array([r.terminated for r in steps], dtype=bool),
        truncated=np.array([r.truncated for r in steps], dtype=bool),
        qpos=np.stack([r.qpos for r in results]),
        qvel=np.stack([r.qvel for r in results]),
        body_pos=np.stack([r.body_pos for r in results]),
        body_quat=np.stack([r.body_quat for r in results]),
        camera_extrinsics=np.stack([r.camera_extrinsics for r in results]),
        camera_intrinsics=first.camera_intrinsics,
        geom_body=env.geom_body,
        meta=meta,
        depth=np.stack([r.depth for r in results]) if first.depth is not None else None,
        segmentation=np.stack([r.segmentation for r in results]) if first.segmentation is not None else None,
    )


@dataclass(frozen=True)
class _Job:
    task: str
    index: int
    seed: int
    params: CollectParams
    path: str
    extra: dict[str, Any]


class _Recorder:
    """One environment and policy, reused across the episodes a process records."""

    def __init__(self, task: str, params: CollectParams) -> None:
        self.key = (task, params)
        self.env = make_env(task, **_env_kwargs(params))
        try:
            self.policy = _make_policy(params, self.env, task)
        except BaseException:
            self.env.close()
            raise

    def run(self, job: _Job) -> EpisodeMeta:
        episode = record_episode(self.env, self.policy, index=job.index, seed=job.seed, extra=job.extra)
        save_episode(job.path, episode)
        return episode.meta

    def close(self) -> None:
        self.env.close()


_worker_recorder: _Recorder | None = None


def _close_worker_recorder() -> None:
    global _worker_recorder
    if _worker_recorder is not None:
        _worker_recorder.close()
        _worker_recorder = None


def _worker_warm_up(task: str, params: CollectParams) -> None:
    """Build the worker's env and policy before it is given episodes."""
    global _worker_recorder
    if _worker_recorder is None or _worker_recorder.key != (task, params):
        _close_worker_recorder()
        _worker_recorder = _Recorder(task, params)
        atexit.register(_close_worker_recorder)


def _worker_run(job: _Job) -> EpisodeMeta:
    """Entry point of a worker process: record ``job`` with the process's cached recorder."""
    _worker_warm_up(job.task, job.params)
    assert _worker_recorder is not None
    return _worker_recorder.run(job)


def _worker_init() -> None:
    from pipeline.rendering import setup_headless_rendering

    setup_headless_rendering()


def _reusable(path: Path, task: str, index: int, seed: int, fingerprint: str) -> EpisodeMeta | None:
    """The meta of an existing, intact episode file recorded with the same fingerprint, else None."""
    if not path.is_file():
        return None
    try:
        meta = load_meta(path)
        with zipfile.ZipFile(path) as zf:
            if zf.testzip() is not None:
                return None
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile):
        return None
    if (meta.task, meta.episode, meta.seed, meta.extra.get("fingerprint")) != (task, index, seed, fingerprint):
        return None
    return meta


def _remove_leftovers(out_dir: Path, count: int) -> None:
    """Delete episode files with an index >= ``count`` and temporaries of interrupted writes."""
    for path in list_episodes(out_dir):
        try:
            index = int(path.stem.split("_")[1])
        except (IndexError, ValueError):
            continue
        if index >= count:
            log.info("removing %s (beyond episodes_per_task = %d)", path.name, count)
            path.unlink()
    for tmp in out_dir.glob(".*.tmp"):
        if tmp.is_file():
            tmp.unlink()


def collect_task(task: str, params: CollectParams, out_dir: str | Path, workers: int | None = None) -> list[EpisodeMeta]:
    """Record ``params.episodes_per_task`` episodes of ``task`` into ``out_dir``; return their metas.

    Everything is validated before any episode is recorded: the task name, the camera, the
    policy (a checkpoint's action size and image size against the task). See the module
    docstring for the output layout, determinism and resuming.

    Args:
        task: a name from :func:`pipeline.collect.list_tasks`.
        params: the ``collect`` params section.
        out_dir: the task's episode folder (created if missing).
        workers: worker processes (default ``params.workers``); 1 records in this process.

    Raises:
        UserError: bad task, camera, policy or output folder (the message names the fix).
    """
    out_dir = Path(out_dir)
    workers = params.workers if workers is None else workers
    if workers < 1:
        raise UserError(f"workers = {workers}: use 1 or more worker processes")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a folder; remove it or choose another path")
    resolve_task(task)
    # Helpers start (and import, and build their env) while this process builds and checks its
    # own env and policy: process start-up takes seconds, as long as an episode on a loaded machine.
    helpers = _Helpers(task, params, min(workers, params.episodes_per_task) - 1)
    recorder = None
    try:
        recorder = _Recorder(task, params)  # validates the camera and the policy against the task
        description = recorder.policy.describe()
        versions = simulator_versions()
        content = {name: getattr(params, name) for name in CONTENT_PARAMS}
        fingerprint = hashlib.sha256(
            dumps_json({"schema_version": SCHEMA_VERSION, "params": content, "policy": description, "versions": versions}).encode()
        ).hexdigest()[:16]
        extra = {"fingerprint": fingerprint, "policy": description, "versions": versions}

        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out_dir, params.episodes_per_task)
        metas: dict[int, EpisodeMeta] = {}
        jobs: list[_Job] = []
        for index in range(params.episodes_per_task):
            seed = episode_seed(params.seed, task, index)
            path = out_dir / episode_filename(index)
            meta = _reusable(path, task, index, seed, fingerprint)
            if meta is not None:
                metas[index] = meta
            else:
                jobs.append(_Job(task, index, seed, params, str(path), extra))
        if metas:
            log.info("%s: keeping %d finished episode(s), recording %d", task, len(metas), len(jobs))

        with progress(desc=f"collect {task}", total=len(jobs), unit="episode") as bar:
            for meta in helpers.run(recorder, jobs):
                metas[meta.episode] = meta
                bar.update()
    except BaseException:
        helpers.close(block=False)
        raise
    finally:
        if recorder is not None:
            recorder.close()
    helpers.close(block=True)

    ordered = [metas[i] for i in range(params.episodes_per_task)]
    write_index(out_dir, ordered)
    preview = out_dir / PREVIEW_FILE
    if params.preview_episodes > 0:
        from pipeline.collect.preview import write_preview

        shown = [load_episode(out_dir / episode_filename(i)) for i in range(min(params.preview_episodes, len(ordered)))]
        write_preview(preview, shown, fps=1.0 / ordered[0].control_timestep)
    elif preview.exists():
        preview.unlink()
    frames = sum(m.length + 1 for m in ordered)
    log.info("%s: %d episodes, %d frames in %s", task, len(ordered), frames, out_dir)
    return ordered


#: Whether the calling process records episodes too, beside its spawned helpers (tests turn it
#: off to force every episode through a helper process).
MAIN_PROCESS_RECORDS = True


class _Helpers:
    """``count`` spawned worker processes that record episodes beside the calling process.

    Each helper first builds its env (a warm-up call, started at construction), then takes one
    job at a time, the next as soon as it finishes (from a done-callback); the calling process
    takes the next job after each of its own, so ``workers = N`` means N processes recording and
    short runs never wait for helpers still starting. Spawned, not forked: EGL contexts do not
    survive a fork.
    """

    def __init__(self, task: str, params: CollectParams, count: int) -> None:
        self.count = max(0, count)
        self._pool: ProcessPoolExecutor | None = None
        self._warm_ups: list[Future[None]] = []
        if self.count:
            self._pool = ProcessPoolExecutor(max_workers=self.count, mp_context=multiprocessing.get_context("spawn"), initializer=_worker_init)
            self._warm_ups = [self._pool.submit(_worker_warm_up, task, params) for _ in range(self.count)]
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._queue: deque[_Job] = deque()
        self._submitted: list[Future[EpisodeMeta]] = []

    def _feed(self, _: Future[Any] | None = None) -> None:
        with self._lock:
            if self._stopping.is_set() or not self._queue or self._pool is None:
                return
            future = self._pool.submit(_worker_run, self._queue.popleft())
            self._submitted.append(future)
        future.add_done_callback(self._feed)

    def run(self, recorder: _Recorder, jobs: list[_Job]) -> Iterator[EpisodeMeta]:
        """Record ``jobs`` here and on the helpers; yield each episode's meta as it finishes."""
        self._queue.extend(jobs)
        if self._pool is None:
            while self._queue:
                yield recorder.run(self._queue.popleft())
            return
        for warm_up in self._warm_ups:
            warm_up.add_done_callback(self._feed)  # runs at once if the helper is already warm
        reported: set[Future[EpisodeMeta]] = set()
        while True:
            with self._lock:
                pending = [f for f in self._submitted if f not in reported]
                job = self._queue.popleft() if self._queue and (MAIN_PROCESS_RECORDS or self._helpers_gone()) else None
            if job is not None:
                yield recorder.run(job)
            elif pending:
                done, _ = wait(pending, return_when=FIRST_COMPLETED)
                for future in done:
                    reported.add(future)
                    yield future.result()  # a helper's error surfaces here
                continue
            elif not self._queue:
                break
            else:
                time.sleep(0.05)  # helpers still starting: their warm-up callbacks take the queued jobs
            for future in [f for f in pending if f.done()]:
                reported.add(future)
                yield future.result()

    def _helpers_gone(self) -> bool:
        """Every warm-up has finished and nothing runs on the helpers: their pool cannot take jobs."""
        return all(w.done() for w in self._warm_ups) and all(f.done() for f in self._submitted)

    def close(self, block: bool) -> None:
        """Stop the helpers; ``block=False`` (errors, interrupts) does not wait for running calls."""
        self._stopping.set()
        if self._pool is not None:
            self._pool.shutdown(wait=block, cancel_futures=True)
            self._pool = None
