"""The RL arms as independent jobs: one (arm, task, backbone, seed) run each, in a process pool.

Each job rebuilds what it needs from paths and seeds (the backbone from its checkpoint or its
random-init index), so jobs run in any order and on any worker with the same result.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch

from pipeline.config.evaluate import EvaluateParams
from pipeline.config.finetune import FinetuneParams
from pipeline.evaluate.cache import RunCache, job_key
from pipeline.evaluate.seeding import derive_seed
from pipeline.evaluate.workspace import FeatureObserver, Schedule, StateObserver, VectorWorkspace

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class RLJob:
    """One RL run.

    Attributes:
        arm: ``state``, ``frozen`` or ``finetune``.
        task: task name.
        action_repeat: simulator steps per agent step.
        seed_index: 0..seeds-1.
        backbone: the frozen backbone's label (``pretrained``, ``random-<i>``, ``checkpoint-<i>``); for
            ``finetune`` the encoder init (``pretrained``, ``scratch``); None for ``state``.
        backbone_path: checkpoint folder the backbone (or its architecture) comes from.
        image_size: rendered frame size.
        label: the arm's name in every table, whose runs are the seeds of one arm: ``state``,
            ``frozen:<backbone>``, ``frozen:random`` (``evaluate.frozen_random: paired``: seed s
            on random init s), ``finetune:<init>``. It also keys the run's seed.
    """

    arm: str
    task: str
    action_repeat: int
    seed_index: int
    backbone: str | None
    backbone_path: str | None
    image_size: int
    label: str


def _make_env(
    task: str, image_size: int, camera: int | str, action_repeat: int, render_mode: str, episode_steps: int, seed: int
) -> Any:
    from pipeline.collect import make_env

    return make_env(
        task,
        image_size=image_size,
        camera=camera,
        action_repeat=action_repeat,
        render_mode=render_mode,
        episode_steps=episode_steps,
        seed=seed,
    )


def _observer_factory(job: RLJob, section: EvaluateParams, device: torch.device) -> Any:
    if job.arm == "state":
        env = _make_env(job.task, job.image_size, section.camera, job.action_repeat, section.render_mode, 1, 0)
        try:
            env.reset(seed=0)
            dim = env.state_observation()[0].size
        finally:
            env.close()
        return partial(StateObserver, dim)
    from pipeline.evaluate.backbones import load_one

    backbone = load_one(job.backbone or "", job.backbone_path or "", seed=section.seed, device=device)
    return partial(FeatureObserver, backbone)


def _cache_key(job: RLJob, section: EvaluateParams, device: torch.device, group: list[str] | None = None) -> str:
    identity = None
    if job.backbone_path is not None:
        from pipeline.finetune.encoder import read_spec

        spec = read_spec(job.backbone_path)
        random_init = (job.backbone or "").startswith("random-")  # its label and the seed fix its weights
        identity = {"class": spec.class_path, "config": spec.config, "sha256": None if random_init else spec.sha256}
    return job_key(asdict(job), identity, section.model_dump(mode="json"), device.type, group)


def _schedule(job: RLJob, section: EvaluateParams) -> Schedule:
    return Schedule(
        section.frames,
        section.seed_frames,
        section.eval_every_frames,
        section.eval_episodes,
        section.episode_frames,
        job.action_repeat,
    )


def _env_factory(job: RLJob, section: EvaluateParams) -> Any:
    episode_steps = max(1, section.episode_frames // job.action_repeat)
    return partial(
        _make_env, job.task, job.image_size, section.camera, job.action_repeat, section.render_mode, episode_steps
    )


def _run_seed(job: RLJob, section: EvaluateParams) -> int:
    return derive_seed(section.seed, "agent", job.label, job.seed_index)


def _run_name(job: RLJob) -> str:
    return f"{job.label} on {job.task} seed {job.seed_index}"


def _record(result: Any) -> dict[str, Any]:
    return {"curve": result.curve, "final_return": result.final_return, "speed": result.speed()}


def run_job(job: RLJob, section: EvaluateParams, device_name: str = "cpu") -> dict[str, Any]:
    """Train one arm on one task for one seed; the evaluation curve and speed figures.

    A run finished before (same job, params, weights and code) is read from ``section.cache_dir``
    instead; a finished run is written there."""
    device = torch.device(device_name)
    cache = RunCache(section.cache_dir)
    key = _cache_key(job, section, device)
    if (cached := cache.get(key)) is not None:
        log.info("%s on %s seed %d: finished before, read from %s", job.label, job.task, job.seed_index, cache.folder)
        return {"job": job, **cached}
    schedule, make_env = _schedule(job, section), _env_factory(job, section)
    workspace = VectorWorkspace(
        job.task,
        make_env,
        _observer_factory(job, section, device),
        section.agent,
        schedule,
        _run_seed(job, section),
        device,
        name=_run_name(job),
    )
    try:
        result = workspace.train()
    finally:
        workspace.close()
    record = _record(result)
    cache.put(key, record)
    return {"job": job, **record}


def group_of(job: RLJob) -> tuple[str, str]:
    """The group a vector run trains in under ``evaluate.group_by: task``: its arm and task."""
    return job.arm, job.task


def run_group(jobs: list[RLJob], section: EvaluateParams, device_name: str = "cpu") -> list[dict[str, Any]]:
    """Train ``jobs`` (one arm and task, :func:`group_of`) as one lockstepped batched group
    (:class:`~pipeline.evaluate.group.GroupWorkspace`); results in the order of ``jobs``.

    The members of a group finish together, so each is cached with the group's composition in its key:
    a rerun reads a finished group back, and a group with any member missing trains again whole."""
    from pipeline.evaluate.group import GroupWorkspace, Member

    device = torch.device(device_name)
    cache = RunCache(section.cache_dir)
    members = [f"{j.label}/{j.seed_index}/{j.backbone}" for j in jobs]
    keys = [_cache_key(job, section, device, members) for job in jobs]
    cached = [cache.get(key) for key in keys]
    if all(c is not None for c in cached):
        log.info("%s on %s: %d runs finished before, read from %s", jobs[0].arm, jobs[0].task, len(jobs), cache.folder)
        return [{"job": job, **c} for job, c in zip(jobs, cached, strict=True)]
    factories: dict[tuple[str | None, str | None], Any] = {}  # runs of one backbone share it (and its forwards)
    for job in jobs:
        if (job.backbone, job.backbone_path) not in factories:
            factories[job.backbone, job.backbone_path] = _observer_factory(job, section, device)
    workspace = GroupWorkspace(
        jobs[0].task,
        _env_factory(jobs[0], section),
        [Member(_run_seed(j, section), factories[j.backbone, j.backbone_path], _run_name(j)) for j in jobs],
        section.agent,
        _schedule(jobs[0], section),
        device,
    )
    try:
        results = workspace.train()
    finally:
        workspace.close()
    records = [_record(r) for r in results]
    for key, record in zip(keys, records, strict=True):
        cache.put(key, record)
    return [{"job": job, **record} for job, record in zip(jobs, records, strict=True)]


def _init_worker(threads: int, log_level: int, parent_pid: int) -> None:
    from pipeline.common.logs import setup_logging
    from pipeline.common.processes import die_with_parent

    die_with_parent(parent_pid)  # a killed stage must not leave its workers training and writing the cache
    from pipeline.common.rendering import setup_headless_rendering

    setup_headless_rendering()
    setup_logging(logging.getLevelName(log_level))  # a spawned process starts unconfigured: its progress would be lost
    torch.set_num_threads(threads)


def job_pool(workers: int) -> ProcessPoolExecutor | None:
    """``workers`` spawned processes for :func:`run_jobs` (None: run in this process, when 1), each ending
    with this process (even a SIGKILL of it: :func:`~pipeline.common.processes.die_with_parent`).

    One pool serves every arm of an evaluation: each spawned process imports torch and MuJoCo
    once (about 8 s on 2 cores), not once per arm."""
    if workers <= 1:
        return None
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(1, logging.getLogger().getEffectiveLevel(), os.getpid()),
    )


def run_jobs(
    jobs: list[RLJob], section: EvaluateParams, *, pool: ProcessPoolExecutor | None, device_name: str
) -> list[dict[str, Any]]:
    """Every job, in ``pool``'s processes (in this process when None or one unit of work); results in the order
    of ``jobs``. A unit is one run, or with ``evaluate.group_by: task`` one group (:func:`run_group`)."""
    if section.group_by == "task":
        groups: dict[tuple[str, str], list[int]] = {}
        for i, job in enumerate(jobs):
            groups.setdefault(group_of(job), []).append(i)
        units = [(run_group, [jobs[i] for i in idx], idx) for idx in groups.values()]
    else:
        units = [(_run_one, [job], [i]) for i, job in enumerate(jobs)]
    results: dict[int, dict[str, Any]] = {}
    if pool is None or len(units) <= 1:
        done = ((idx, fn(members, section, device_name)) for fn, members, idx in units)
    else:
        futures = {pool.submit(fn, members, section, device_name): idx for fn, members, idx in units}
        done = ((futures[f], f.result()) for f in as_completed(futures))
    for idx, unit_results in done:
        for i, result in zip(idx, unit_results, strict=True):
            results[i] = result
            log.info(
                "%s on %s seed %d: final return %.1f",
                jobs[i].label,
                jobs[i].task,
                jobs[i].seed_index,
                result["final_return"],
            )
    return [results[i] for i in range(len(jobs))]


def _run_one(jobs: list[RLJob], section: EvaluateParams, device_name: str) -> list[dict[str, Any]]:
    return [run_job(jobs[0], section, device_name)]


def finetune_params(finetune: FinetuneParams, section: EvaluateParams, task: str, action_repeat: int) -> FinetuneParams:
    """The finetune params of the pixel arm on ``task``: the evaluation's observation (action
    repeat, camera, render mode) and ``allow_mismatch`` over the given ``FinetuneParams``."""
    update = {
        "task": task,
        "action_repeat": action_repeat,
        "camera": section.camera,
        "render_mode": section.render_mode,
        "allow_mismatch": section.allow_mismatch,
    }
    return finetune.model_copy(update=update)


def run_finetune_arm(
    backbone: str | Path, section: EvaluateParams, finetune: Any, repeats: dict[str, int], scratch_dir: Path
) -> list[dict[str, Any]]:
    """The pixel SAC arm (``pipeline.finetune``, DrQ-style with augmentation) from the pretrained
    backbone and from scratch, ``seeds`` runs per task, on evaluate's schedule and observation
    (action repeat, camera, render mode); curves in the same layout as :func:`run_job`'s.
    GPU-scale: off by default."""
    from pipeline.finetune.run import run as finetune_run

    results = []
    for task in section.tasks:
        for init in ("pretrained", "scratch"):
            for s in range(section.seeds):
                params = finetune_params(finetune, section, task, repeats[task]).model_copy(
                    update={
                        "frames": section.frames,
                        "seed_frames": section.seed_frames,
                        "eval_every_frames": section.eval_every_frames,
                        "eval_episodes": section.eval_episodes,
                        "episode_frames": section.episode_frames,
                        "encoder_init": init,
                        "seed": derive_seed(section.seed, "agent", f"finetune:{init}", s),
                        "video": False,
                        "checkpoint_dir": str(scratch_dir / "checkpoints"),
                    }
                )
                summary = finetune_run(backbone, scratch_dir / f"{task}-{init}-{s}", params)
                job = RLJob("finetune", task, repeats[task], s, init, str(backbone), 0, f"finetune:{init}")
                curve = [{k: e[k] for k in ("frames", "return_mean", "return_std")} for e in summary.evals]
                results.append(
                    {
                        "job": job,
                        "curve": curve,
                        "final_return": curve[-1]["return_mean"],
                        "speed": {"updates_per_s": float("nan"), "acting_frames_per_s": float("nan")},
                    }
                )
    return results
