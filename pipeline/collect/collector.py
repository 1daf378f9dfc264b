"""Record a task's episodes to disk: the work of the collect stage.

Layout of ``out_dir`` (see :mod:`pipeline.sim.episodes` for the episode schema):

* ``episode_<i:06d>.npz`` for i in ``range(episodes_per_task)``, each written atomically;
* ``index.json``: one row per episode (file, length, return, seed, task, policy, flags);
* ``preview.gif``: the first ``preview_episodes`` episodes (RGB | depth | segmentation).

Action repeat: each task's episodes use its own (``collect.action_repeat``'s override for the
task, else the PlaNet/DrQ benchmark value of :mod:`pipeline.sim.benchmark`, the one finetune and
evaluate act with), so the frame gap the backbone learns is the one it sees online; each
episode's header records it (``meta.action_repeat``). ``episode_steps`` counts agent steps: an
episode stores ``episode_steps + 1`` frames spanning ``episode_steps x action_repeat``
environment frames.

Determinism: episode ``i`` is reset with :func:`episode_seed` ``(seed, task, i)`` and its
policy draws from a generator seeded with that seed, so an episode depends only on the
params, the task and ``i``: not on the worker that ran it or on the episodes run before it
in the same process. The bytes are therefore identical for any ``workers``.

Scheduling: ``workers: N`` means N processes record (never more than there are episodes to
record): the calling process and a spawned ``ProcessPoolExecutor`` of N - 1 workers (none for
N = 1). The pool's initializer builds each worker's env and policy once; every episode is one
submitted job, taken by the pool from the first on, while the calling process records the jobs
the pool has not started yet from the last one back (cancelling them in the pool); the pool's
results come through ``as_completed``. When the calling process has no episode left to take, it
writes the preview beside the pool's last episodes (if the episodes shown are done by then). Bad
input (task, camera, policy checkpoint, disk space) is found in the calling process before any
worker starts. A worker dies with the calling process, even when that is SIGKILLed (see
:func:`die_with_parent`).

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
import os
import zipfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

import numpy as np

from pipeline.collect.disk import FrameLayout, check_disk_space
from pipeline.collect.envs import PixelEnv, make_env, resolve_task
from pipeline.collect.policies import Policy, make_policy
from pipeline.common.errors import UserError
from pipeline.common.io import dumps_json
from pipeline.common.processes import die_with_parent
from pipeline.sim.episodes import (
    SCHEMA_VERSION,
    Episode,
    EpisodeMeta,
    episode_filename,
    list_episodes,
    load_episode,
    load_meta,
    save_episode,
    write_index,
)

if TYPE_CHECKING:
    from pipeline.config.collect import CollectParams, PolicyParams

log = logging.getLogger(__name__)

PREVIEW_FILE = "preview.gif"

#: Params that shape an episode's content (``tasks``, ``episodes_per_task``, ``workers`` and
#: ``preview_episodes`` do not); ``action_repeat`` as the task's resolved value.
CONTENT_PARAMS = (
    "episode_steps",
    "action_repeat",
    "image_size",
    "camera",
    "render_mode",
    "depth",
    "segmentation",
    "seed",
)


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


def _env_kwargs(params: CollectParams, task: str) -> dict[str, Any]:
    """``make_env``'s keyword arguments for ``task``'s episodes (its action repeat resolved:
    ``collect.action_repeat``'s override, else the benchmark value)."""
    return {
        "image_size": params.image_size,
        "camera": params.camera,
        "action_repeat": params.action_repeat_for(task),
        "render_mode": params.render_mode,
        "depth": params.depth,
        "segmentation": params.segmentation,
        "episode_steps": params.episode_steps,
    }


def _make_policy(policy: PolicyParams, env: PixelEnv, task: str, env_kwargs: dict[str, Any]) -> Policy:
    return make_policy(
        policy,
        env.action_low,
        env.action_high,
        task=task,
        image_size=env_kwargs["image_size"],
        action_repeat=env_kwargs["action_repeat"],
        camera=env_kwargs["camera"],
        render_mode=env_kwargs["render_mode"],
    )


def record_episode(
    env: PixelEnv, policy: Policy, *, index: int, seed: int, extra: dict[str, Any] | None = None
) -> Episode:
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
    """One episode to record: its index, its seed and the file it goes to."""

    index: int
    seed: int
    path: str


class _Recorder:
    """One environment and policy, reused across the episodes a process records."""

    def __init__(
        self, task: str, env_kwargs: dict[str, Any], policy: PolicyParams, extra: dict[str, Any] | None = None
    ) -> None:
        self.extra = extra or {}
        self.env = make_env(task, **env_kwargs)
        try:
            self.policy = _make_policy(policy, self.env, task, env_kwargs)
        except BaseException:
            self.env.close()
            raise

    def run(self, job: _Job) -> EpisodeMeta:
        episode = record_episode(self.env, self.policy, index=job.index, seed=job.seed, extra=self.extra)
        save_episode(job.path, episode)
        return episode.meta

    def close(self) -> None:
        self.env.close()


# --- worker processes -------------------------------------------------------------------------
# Spawned, not forked (EGL contexts do not survive a fork). Each worker builds its env and policy
# once, in the pool's initializer, and records the episodes it is given with them. The pool is
# created and fed from the calling thread: prctl's parent-death signal follows the thread that
# spawned the worker, and this thread lives until the pool is shut down.

_worker_recorder: _Recorder | None = None
_worker_error: BaseException | None = None


def _close_worker_recorder() -> None:
    global _worker_recorder
    if _worker_recorder is not None:
        _worker_recorder.close()
        _worker_recorder = None


def _worker_init(
    task: str, env_kwargs: dict[str, Any], policy: dict[str, Any], extra: dict[str, Any], parent_pid: int
) -> None:
    """Pool initializer: tie the worker's life to the parent's, build its env and policy.

    The policy params arrive as a plain dict (read as attributes, like the validated
    ``PolicyParams`` they were dumped from): unpickling the pydantic params would import the whole
    params package, about 1 s of every worker's start-up. A failure is kept and raised by the
    first :func:`_worker_run`, so it reaches the caller as itself (an initializer's exception
    would only break the pool).
    """
    global _worker_recorder, _worker_error
    die_with_parent(parent_pid)
    try:
        _worker_recorder = _Recorder(task, env_kwargs, SimpleNamespace(**policy), extra)  # type: ignore[arg-type]
        # The GL context first: mujoco's EGL clean-up, registered with it, must run after ours.
        _worker_recorder.env.start_rendering()
        atexit.register(_close_worker_recorder)
    except Exception as exc:  # noqa: BLE001 - re-raised by _worker_run
        _worker_error = exc


def _worker_run(job: _Job) -> EpisodeMeta:
    """Record ``job`` with the worker's recorder."""
    if _worker_error is not None:
        raise _worker_error
    assert _worker_recorder is not None, "_worker_init did not run"
    return _worker_recorder.run(job)


def _record_in_pool(
    recorder: _Recorder,
    task: str,
    params: CollectParams,
    jobs: list[_Job],
    workers: int,
    when_idle: Callable[[set[int]], None] | None = None,
) -> Iterator[EpisodeMeta]:
    """Record ``jobs`` on ``workers`` processes: this one (with ``recorder``) and ``workers - 1``
    spawned ones; yield each episode's meta as it finishes.

    The pool takes the episodes from the first one on; this process takes those the pool has not
    started yet, from the last one back. It starts at once, so the seconds a spawned worker needs
    to start (an interpreter, imports, an env and a GL context) are not lost. When no episode is
    left for this process to take, ``when_idle`` is called with the indices of the jobs finished
    so far (on disk, whether yielded yet or not), so this process can do other work while the
    pool records its last episodes.
    """
    pool = ProcessPoolExecutor(
        max_workers=workers - 1,
        mp_context=multiprocessing.get_context("spawn"),
        initializer=_worker_init,
        initargs=(task, _env_kwargs(params, task), params.policy.model_dump(), recorder.extra, os.getpid()),
    )
    finished = False
    try:
        futures = [pool.submit(_worker_run, job) for job in jobs]
        here: set[int] = set()
        for future, job in zip(reversed(futures), reversed(jobs), strict=True):
            if not future.cancel():  # the pool has started it (and, first in first out, all before it)
                break
            yield recorder.run(job)
            here.add(job.index)
        if when_idle is not None:
            when_idle(
                here
                | {
                    job.index
                    for future, job in zip(futures, jobs, strict=True)
                    if future.done() and not future.cancelled() and future.exception() is None
                }
            )
        for future in as_completed([f for f in futures if not f.cancelled()]):
            yield future.result()  # a worker's error surfaces here
        finished = True
    finally:
        # On an error or an interrupt, queued episodes are cancelled and nothing waits for the
        # running ones (their workers end with this process at the latest).
        pool.shutdown(wait=finished, cancel_futures=True)


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


def collect_task(
    task: str, params: CollectParams, out_dir: str | Path, workers: int | None = None
) -> list[EpisodeMeta]:
    """Record ``params.episodes_per_task`` episodes of ``task`` into ``out_dir``; return their metas.

    Everything is validated in this process before any worker starts or any episode is recorded:
    the task name, the camera, the policy (a checkpoint's action size and image size against the
    task) and the free disk space. See the module docstring for the output layout, determinism
    and resuming.

    Args:
        task: a name from :func:`pipeline.collect.list_tasks`.
        params: the ``collect`` params section.
        out_dir: the task's episode folder (created if missing).
        workers: processes that record, this one included (default ``params.workers``); 1
            records in this process only.

    Raises:
        UserError: bad task, camera, policy or output folder, or a disk too small (the message
            names the fix).
    """
    out_dir = Path(out_dir)
    workers = params.workers if workers is None else workers
    if workers < 1:
        raise UserError(f"workers = {workers}: use 1 or more worker processes")
    if out_dir.exists() and not out_dir.is_dir():
        raise UserError(f"--out {out_dir}: exists and is not a folder; remove it or choose another path")
    resolve_task(task)
    from pipeline.common.logs import progress

    env_kwargs = _env_kwargs(params, task)
    recorder = _Recorder(task, env_kwargs, params.policy)  # validates the camera and the policy against the task
    try:
        description = recorder.policy.describe()
        versions = simulator_versions()
        # This task's values: another task's action repeat override does not touch its episodes.
        content = {name: env_kwargs[name] if name in env_kwargs else getattr(params, name) for name in CONTENT_PARAMS}
        fingerprint = hashlib.sha256(
            dumps_json(
                {"schema_version": SCHEMA_VERSION, "params": content, "policy": description, "versions": versions}
            ).encode()
        ).hexdigest()[:16]
        recorder.extra = {"fingerprint": fingerprint, "policy": description, "versions": versions}

        jobs: list[_Job] = []
        metas: dict[int, EpisodeMeta] = {}
        for index in range(params.episodes_per_task):
            seed = episode_seed(params.seed, task, index)
            path = out_dir / episode_filename(index)
            meta = _reusable(path, task, index, seed, fingerprint)
            if meta is not None:
                metas[index] = meta
            else:
                jobs.append(_Job(index, seed, str(path)))
        workers = min(workers, len(jobs)) or 1
        env = recorder.env
        layout = FrameLayout(
            params.image_size,
            params.depth,
            params.segmentation,
            env.model.nq,
            env.model.nv,
            env.model.nbody,
            env.action_dim,
        )
        needed = check_disk_space(
            out_dir, layout, task=task, episodes=len(jobs), frames_per_episode=params.episode_steps + 1, workers=workers
        )
        if metas:
            log.info("%s: keeping %d finished episode(s), recording %d", task, len(metas), len(jobs))
        if jobs:
            log.info(
                "%s: recording %d episode(s) on %d process(es), about %.1f MB on disk",
                task,
                len(jobs),
                workers,
                needed / 1e6,
            )

        out_dir.mkdir(parents=True, exist_ok=True)
        _remove_leftovers(out_dir, params.episodes_per_task)
        shown = range(min(params.preview_episodes, params.episodes_per_task))
        control_timestep, previewed = recorder.env.control_timestep, False

        def preview_while_idle(finished: set[int]) -> None:
            # This process has nothing left to record: write the preview now, beside the pool's
            # last episodes, when the episodes it shows are all on disk.
            nonlocal previewed
            if all(i in metas or i in finished for i in shown):
                _write_preview(out_dir, shown, control_timestep)
                previewed = True

        if workers > 1:
            recorded = _record_in_pool(recorder, task, params, jobs, workers, preview_while_idle if shown else None)
        else:
            recorded = (recorder.run(job) for job in jobs)
        with progress(desc=f"collect {task}", total=len(jobs), unit="episode") as bar:
            for meta in recorded:
                metas[meta.episode] = meta
                bar.update()
    finally:
        if recorder is not None:
            recorder.close()

    ordered = [metas[i] for i in range(params.episodes_per_task)]
    write_index(out_dir, ordered)
    if shown and not previewed:
        _write_preview(out_dir, shown, control_timestep)
    elif not shown:
        (out_dir / PREVIEW_FILE).unlink(missing_ok=True)
    frames = sum(m.length + 1 for m in ordered)
    log.info("%s: %d episodes, %d frames in %s", task, len(ordered), frames, out_dir)
    return ordered


def _write_preview(out_dir: Path, shown: range, control_timestep: float) -> None:
    """``preview.gif`` of the episodes ``shown`` (their files in ``out_dir``), at the control rate."""
    from pipeline.collect.preview import write_preview

    write_preview(
        out_dir / PREVIEW_FILE, [load_episode(out_dir / episode_filename(i)) for i in shown], fps=1.0 / control_timestep
    )
