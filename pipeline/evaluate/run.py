"""The evaluate stage: ``run(backbone, out, section) -> EvaluateSummary``.

Does the backbone help control? Answered on held-out data with seeds and confidence intervals:

1. **Preflight** (before any work): every task exists; every backbone (pretrained, random
   initialisations of its architecture, extra checkpoints) matches each task's image size, frame
   stack, and the action repeat, camera and render mode its checkpoint records; with the
   ``finetune`` arm, the pixel agent's runs pass the finetune stage's own check.
2. **probe**: held-out episodes per task (:mod:`pipeline.evaluate.heldout`); ridge (or MLP: ``probe.model``) probe from
   each backbone's frozen features to the observation vector, episode-grouped k-fold, pooled R^2
   with bootstrap CIs; pretrained vs each other backbone, paired (:mod:`pipeline.common.probe`).
3. **state** then **frozen**: SAC on the observation vector, then on each backbone's frozen
   features (:mod:`pipeline.evaluate.workspace`), ``seeds`` runs per task. The state arm runs
   first: if it does not reach ``min_final_return`` on a task the stage stops there, since a
   non-learning agent makes every frozen-arm number meaningless.
4. Aggregates across tasks x seeds with rliable (:mod:`pipeline.evaluate.stats`); the report,
   plots and DVCLive logs (:mod:`pipeline.evaluate.report`).
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.common import probe as probes
from pipeline.common.device import select_device
from pipeline.common.errors import UserError
from pipeline.common.io import check_replaceable
from pipeline.common.stage import StageSummary
from pipeline.config.evaluate import EvaluateParams
from pipeline.config.finetune import FinetuneParams
from pipeline.evaluate.arms import RLJob, finetune_params, job_pool, run_finetune_arm, run_jobs
from pipeline.evaluate.backbones import Backbone, check_backbone, load_backbones
from pipeline.evaluate.heldout import collect_heldout
from pipeline.evaluate.seeding import derive_seed
from pipeline.evaluate.stats import aggregate
from pipeline.sim.benchmark import action_repeat_for

log = logging.getLogger(__name__)


class NotLearningError(UserError):
    """The state arm did not reach ``evaluate.min_final_return``: the agent, not the backbone, is broken."""


@dataclass(frozen=True)
class EvaluateSummary(StageSummary):
    """Headline figures of one evaluation (the full tables are in ``<out>/report.md``).

    Attributes:
        tasks: tasks evaluated.
        probe_gap: task -> pretrained minus best random init pooled R^2 (all dims), with CI.
        final_return: arm label -> IQM of final returns across tasks x seeds, with CI.
        warnings: allowed mismatches (``evaluate.allow_mismatch``).
    """

    tasks: list[str]
    probe_gap: dict[str, dict[str, float]]
    final_return: dict[str, dict[str, float]]
    warnings: list[str]

    def line(self) -> str:
        gaps = (
            ", ".join(
                f"{t} {g['value']:+.3f} [{g['ci_low']:+.3f}, {g['ci_high']:+.3f}]" for t, g in self.probe_gap.items()
            )
            or "-"
        )
        arms = (
            ", ".join(
                f"{a} {v['iqm']:.1f} [{v['iqm_ci_low']:.1f}, {v['iqm_ci_high']:.1f}]"
                for a, v in self.final_return.items()
            )
            or "-"
        )
        return (
            f"evaluate {', '.join(self.tasks)}: probe R^2 pretrained - best random: {gaps}; "
            f"final return IQM: {arms} -> {self.out}"
        )


def _preflight(
    backbone: str | Path,
    section: EvaluateParams,
    device: torch.device,
    finetune: FinetuneParams | None = None,
) -> tuple[list[Backbone], dict[str, int], int, int]:
    from pipeline.collect.envs import resolve_task

    for task in section.tasks:
        resolve_task(task)  # UnknownTaskError names close matches
    backbones = load_backbones(
        backbone,
        random_inits=section.random_inits,
        checkpoints=list(section.checkpoints),
        seed=section.seed,
        device=device,
    )
    image_size = section.image_size or backbones[0].spec.image_size
    frame_stack = section.frame_stack or backbones[0].spec.frame_stack
    repeats = {task: action_repeat_for(task, section.action_repeat) for task in section.tasks}
    for b in backbones:
        for task in section.tasks:
            check_backbone(
                b,
                task,
                image_size=image_size,
                frame_stack=frame_stack,
                action_repeat=repeats[task],
                camera=section.camera,
                render_mode=section.render_mode,
                allow_mismatch=section.allow_mismatch,
            )
    if "finetune" in section.arms:
        from pipeline.finetune.encoder import read_spec
        from pipeline.finetune.run import check_observation

        # The arm runs the finetune stage per task with these params (pipeline.evaluate.arms), which
        # checks them itself: refuse here, not after the probe and the other arms have run.
        spec = read_spec(backbone)
        for task in section.tasks:
            check_observation(spec, finetune_params(finetune or FinetuneParams(), section, task, repeats[task]))
    return backbones, repeats, image_size, frame_stack


def _probe_task(
    task: str, backbones: list[Backbone], section: EvaluateParams, action_repeat: int, image_size: int
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Held-out episodes of ``task`` and every backbone's probe on them, with paired CIs: the
    record for ``results.json``, and the probe file's arrays (:func:`pipeline.common.probe.probe_arrays`)."""
    p = section.probe
    heldout = collect_heldout(
        task,
        episodes=section.heldout_episodes,
        frames_per_episode=section.heldout_frames,
        action_repeat=action_repeat,
        image_size=image_size,
        camera=section.camera,
        render_mode=section.render_mode,
        noise=section.heldout_policy_noise,
        seed=section.seed,
    )
    episode = np.concatenate([np.full(len(o), i) for i, o in enumerate(heldout.observations)])
    targets = np.concatenate(heldout.observations)
    stride = max(1, int(np.ceil(len(targets) / p.max_frames_per_task)))
    keep = np.arange(0, len(targets), stride)
    weights = probes.bootstrap_weights(episode[keep], p.bootstrap, derive_seed(section.seed, "bootstrap", task))
    oofs = {}
    for b in backbones:
        features = np.concatenate([b.episode_features(f, section.feature_batch) for f in heldout.frames])
        oofs[b.name] = probes.out_of_fold(
            features[keep],
            targets[keep],
            episode[keep],
            heldout.kinds,
            alphas=list(p.alphas),
            folds=p.folds,
            model=p.model,
        )
    r2 = {name: {g: probes.r2_with_ci(o, g, weights).as_dict() for g in probes.GROUPS} for name, o in oofs.items()}
    diff = {
        name: {g: probes.paired_difference(oofs["pretrained"], o, g, weights).as_dict() for g in probes.GROUPS}
        for name, o in oofs.items()
        if name != "pretrained"
    }
    randoms = [n for n in oofs if n.startswith("random-")]
    best_random = max(randoms, key=lambda n: probes.pooled_r2(oofs[n])) if randoms else None
    record = {
        "model": p.model,
        "episodes": heldout.episodes,
        "frames": int(len(keep)),
        "dims": {k: heldout.kinds.count(k) for k in sorted(set(heldout.kinds))},
        "r2": r2,
        "pretrained_minus": diff,
        "best_random": best_random,
        "alphas": {n: list(o.alphas) for n, o in oofs.items()},
    }
    return record, probes.probe_arrays(oofs, weights)


def _rl_jobs(
    arm: str, section: EvaluateParams, backbones: list[Backbone], repeats: dict[str, int], image_size: int
) -> list[RLJob]:
    """The runs of one arm, seed-major (every task and backbone at seed 0 first), so that a
    stopped study has whole seeds done; ``frozen_random: paired`` makes the random inits one arm."""
    folder = {b.name: str(b.spec.folder) for b in backbones}
    randoms = [b.name for b in backbones if b.kind == "random"]
    jobs = []
    for s in range(section.seeds):
        for task in section.tasks:
            if arm == "state":
                jobs.append(RLJob(arm, task, repeats[task], s, None, None, image_size, "state"))
                continue
            for b in backbones:
                if b.kind == "random" and section.frozen_random == "paired":
                    if b.name == randoms[0]:
                        name = randoms[s % len(randoms)]
                        jobs.append(RLJob(arm, task, repeats[task], s, name, folder[name], image_size, f"{arm}:random"))
                    continue
                jobs.append(RLJob(arm, task, repeats[task], s, b.name, folder[b.name], image_size, f"{arm}:{b.name}"))
    return jobs


def _check_learning(results: list[dict[str, Any]], threshold: float) -> None:
    if threshold < 0:
        return
    for task in sorted({r["job"].task for r in results}):
        finals = [r["final_return"] for r in results if r["job"].task == task]
        if float(np.mean(finals)) < threshold:
            raise NotLearningError(
                f"the state arm on {task} reached a mean final return of {np.mean(finals):.1f} "
                f"over {len(finals)} seed(s), below "
                f"evaluate.min_final_return = {threshold}: the agent is not learning, "
                "so the frozen arms would measure nothing. "
                "Check evaluate.agent and evaluate.frames (or lower min_final_return for a smoke run)"
            )


def _final_scores(results: list[dict[str, Any]], tasks: list[str], seeds: int) -> dict[str, np.ndarray]:
    """arm label -> (seeds, tasks) final returns."""
    scores: dict[str, np.ndarray] = {}
    for r in results:
        job = r["job"]
        scores.setdefault(job.label, np.full((seeds, len(tasks)), np.nan))[job.seed_index, tasks.index(job.task)] = r[
            "final_return"
        ]
    return scores


def run(
    backbone: str | Path, out: str | Path, section: EvaluateParams, *, finetune: FinetuneParams | None = None
) -> EvaluateSummary:
    """Evaluate the backbone under ``backbone`` (the pretrain stage's output folder or a checkpoint
    folder) and write ``out``: ``report.md``, ``results.json``, ``probe/<task>.npz`` (the probe arm's
    out-of-fold predictions: :func:`pipeline.common.probe.read_probe_file`), ``plots/`` and ``dvclive/``.

    ``finetune`` supplies the pixel agent's hyperparameters when ``section.arms`` has ``finetune``."""
    from pipeline.evaluate.report import write_outputs

    check_replaceable(out, "evaluate")  # before any work: never a user's folder
    if section.threads:
        torch.set_num_threads(section.threads)
    device = select_device(section.device, param_key="evaluate.device")
    backbones, repeats, image_size, frame_stack = _preflight(backbone, section, device, finetune)
    start = time.perf_counter()

    probed = (
        {task: _probe_task(task, backbones, section, repeats[task], image_size) for task in section.tasks}
        if "probe" in section.arms
        else {}
    )
    probe = {task: record for task, (record, _) in probed.items()}
    results: list[dict[str, Any]] = []
    if {"state", "frozen"} & set(section.arms):
        # workers on a GPU too: one MLP-sized SAC process leaves it mostly idle
        pool = job_pool(section.workers)
        with pool if pool is not None else contextlib.nullcontext():
            if "state" in section.arms:
                state = run_jobs(
                    _rl_jobs("state", section, backbones, repeats, image_size),
                    section,
                    pool=pool,
                    device_name=str(device),
                )
                _check_learning(state, section.min_final_return)
                results += state
            if "frozen" in section.arms:
                results += run_jobs(
                    _rl_jobs("frozen", section, backbones, repeats, image_size),
                    section,
                    pool=pool,
                    device_name=str(device),
                )
    if "finetune" in section.arms:
        with tempfile.TemporaryDirectory(prefix="evaluate-finetune-") as scratch:
            results += run_finetune_arm(backbone, section, finetune or FinetuneParams(), repeats, Path(scratch))
    scores = _final_scores(results, list(section.tasks), section.seeds)
    aggregates = aggregate(scores, seed=derive_seed(section.seed, "bootstrap")) if scores else {}
    for r in results:
        log.info(
            "%s %s seed %d: %.1f updates/s, %.1f acting frames/s",
            r["job"].label,
            r["job"].task,
            r["job"].seed_index,
            r["speed"]["updates_per_s"],
            r["speed"]["acting_frames_per_s"],
        )
    warnings = sorted({w for b in backbones for w in b.warnings})
    write_outputs(
        out,
        section,
        repeats=repeats,
        image_size=image_size,
        frame_stack=frame_stack,
        backbones=backbones,
        probe=probe,
        probe_files={task: arrays for task, (_, arrays) in probed.items()},
        results=results,
        aggregates=aggregates,
        warnings=warnings,
    )
    log.info("evaluate: %.1f s", time.perf_counter() - start)
    gap = {
        task: pr["pretrained_minus"][pr["best_random"]]["all"]
        for task, pr in probe.items()
        if pr["best_random"] is not None
    }
    return EvaluateSummary(
        stage="evaluate",
        out=str(out),
        tasks=list(section.tasks),
        probe_gap=gap,
        final_return={
            arm: {k: round(float(v), 3) for k, v in a.items() if k.startswith("iqm")} for arm, a in aggregates.items()
        },
        warnings=warnings,
    )
