"""The RL arms as independent jobs: one (arm, task, backbone, seed) run each, in a process pool.

Each job rebuilds what it needs from paths and seeds (the backbone from its checkpoint or its
random-init index), so jobs run in any order and on any worker with the same result.
"""

from __future__ import annotations

import logging
import multiprocessing
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


def _cache_key(job: RLJob, section: EvaluateParams, device: torch.device) -> str:
    identity = None
    if job.backbone_path is not None:
        from pipeline.finetune.encoder import read_spec

        spec = read_spec(job.backbone_path)
        random_init = (job.backbone or "").startswith("random-")  # its label and the seed fix its weights
        identity = {"class": spec.class_path, "config": spec.config, "sha256": None if random_init else spec.sha256}
    return job_key(asdict(job), identity, section.model_dump(mode="json"), device.type)


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
    schedule = Schedule(
        section.frames,
        section.seed_frames,
        section.eval_every_frames,
        section.eval_episodes,
        section.episode_frames,
        job.action_repeat,
    )
    make_env = partial(
        _make_env,
        job.task,
        job.image_size,
        section.camera,
        job.action_repeat,
        section.render_mode,
        max(1, section.episode_frames // job.action_repeat),
    )
    seed = derive_seed(section.seed, "agent", job.label, job.seed_index)
    workspace = VectorWorkspace(
        job.task,
        make_env,
        _observer_factory(job, section, device),
        section.agent,
        schedule,
        seed,
        device,
        name=f"{job.label} on {job.task} seed {job.seed_index}",
    )
    try:
        result = workspace.train()
    finally:
        workspace.close()
    record = {"curve": result.curve, "final_return": result.final_return, "speed": result.speed()}
    cache.put(key, record)
    return {"job": job, **record}


def _init_worker(threads: int, log_level: int) -> None:
    from pipeline.common.logs import setup_logging
    from pipeline.common.rendering import setup_headless_rendering

    setup_headless_rendering()
    setup_logging(logging.getLevelName(log_level))  # a spawned process starts unconfigured: its progress would be lost
    torch.set_num_threads(threads)


def job_pool(workers: int) -> ProcessPoolExecutor | None:
    """``workers`` spawned processes for :func:`run_jobs` (None: run in this process, when 1).

    One pool serves every arm of an evaluation: each spawned process imports torch and MuJoCo
    once (about 8 s on 2 cores), not once per arm."""
    if workers <= 1:
        return None
    context = multiprocessing.get_context("spawn")
    return ProcessPoolExecutor(
        max_workers=workers,
        mp_context=context,
        initializer=_init_worker,
        initargs=(1, logging.getLogger().getEffectiveLevel()),
    )


def run_jobs(
    jobs: list[RLJob], section: EvaluateParams, *, pool: ProcessPoolExecutor | None, device_name: str
) -> list[dict[str, Any]]:
    """Every job, in ``pool``'s processes (in this process when None or one job); results in the order of ``jobs``."""
    if pool is None or len(jobs) <= 1:
        return [run_job(job, section, device_name) for job in jobs]
    results: dict[int, dict[str, Any]] = {}
    futures = {pool.submit(run_job, job, section, device_name): i for i, job in enumerate(jobs)}
    for future in as_completed(futures):
        i = futures[future]
        results[i] = future.result()
        log.info(
            "%s on %s seed %d: final return %.1f",
            jobs[i].label,
            jobs[i].task,
            jobs[i].seed_index,
            results[i]["final_return"],
        )
    return [results[i] for i in range(len(jobs))]


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
