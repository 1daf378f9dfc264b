"""The finetune stage: ``run(backbone, out, section, *, metrics, plots) -> FinetuneSummary``.

Checks, before any work, that the backbone was pretrained on the observations this run gives it
(:func:`check_observation`); builds a :class:`~pipeline.finetune.workspace.Workspace`, resumes it
from its checkpoint if one exists, trains, evaluates, exports the actor and the video, and logs
the curves with DVCLive.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.common.device import select_device
from pipeline.common.errors import UserError
from pipeline.common.io import check_replaceable
from pipeline.common.stage import StageSummary
from pipeline.config.finetune import FinetuneParams
from pipeline.finetune.encoder import EncoderSpec, read_spec
from pipeline.finetune.workspace import Workspace
from pipeline.sim.observation import ObservationMeta

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FinetuneSummary(StageSummary):
    """What a finetune run produced.

    Attributes:
        task, encoder_init: what was trained.
        frames, episodes, updates: how far (frames after action repeat).
        eval: the final evaluation: return mean/std/min/max and the episodes it averaged.
        best_eval_return_mean: the best evaluation on the curve.
        last_train_episode_return: the last training episode's return (None before any ended).
        replay_buffer_mib: the replay buffer's memory at this run's size.
        warnings: observation mismatches allowed by ``finetune.allow_mismatch`` (empty when the backbone fits).
        evals, episodes: the curves (not in :meth:`metrics`); timing: wall-clock seconds (neither).
    """

    task: str
    encoder_init: str
    frames: int
    episodes: int
    updates: int
    eval: dict[str, Any]
    best_eval_return_mean: float
    last_train_episode_return: float | None
    replay_buffer_mib: float
    warnings: list[str]
    evals: list[dict[str, Any]]
    train_episodes: list[dict[str, Any]]
    timing: dict[str, float]

    def metrics(self) -> dict[str, Any]:
        return {k: v for k, v in super().metrics().items() if k not in ("evals", "train_episodes", "timing")}

    def line(self) -> str:
        return (
            f"finetune {self.task} ({self.encoder_init}): {self.frames} frames, "
            f"eval return {self.eval['return_mean']:.1f} +- {self.eval['return_std']:.1f} -> {self.out}"
        )


class ObservationMismatchError(UserError):
    """The backbone was pretrained on other observations than this run gives it."""


def check_observation(spec: EncoderSpec, params: FinetuneParams) -> list[str]:
    """Compare the observation facts the backbone's checkpoint records (its pretraining data's:
    :class:`pipeline.sim.observation.ObservationMeta`) with this run's: the action repeat of
    ``params.task``, the camera and render mode, the image size and frame stack it renders at
    (the backbone's config). Facts the checkpoint does not record are not checked.

    Returns:
        The allowed mismatch (one message, or none) when ``params.allow_mismatch`` is true.

    Raises:
        ObservationMismatchError: a mismatch, naming both values and the fix, unless allowed.
    """
    recorded = ObservationMeta.read(spec.folder)
    if recorded is None:
        return []
    problems = recorded.mismatches(
        params.task,
        who="finetune",
        action_repeat=params.action_repeat,
        image_size=spec.image_size,
        camera=params.camera,
        render_mode=params.render_mode,
        frame_stack=spec.frame_stack,
    )
    if not problems:
        return []
    message = f"backbone {spec.folder} does not match the finetune run on {params.task}: " + "; ".join(problems)
    if not params.allow_mismatch:
        raise ObservationMismatchError(
            message + ". Set finetune.action_repeat / finetune.camera / finetune.render_mode to the backbone's values, "
            "or pretrain on data collected like this run (collect.action_repeat, collect.camera, collect.render_mode), "
            "or set finetune.allow_mismatch: true to train anyway (recorded in the outputs)"
        )
    log.warning(
        "!!! %s (allowed by finetune.allow_mismatch; recorded in the metrics and the actor's metadata)", message
    )
    return [message]


def log_curves(folder: str | Path, evals: list[dict[str, Any]], episodes: list[dict[str, Any]]) -> None:
    """The learning curves as DVCLive logs in ``folder`` (step = environment frames after action repeat):
    ``eval/return_mean`` (and std) per evaluation, ``train/episode_return`` per training episode."""
    from pipeline.common.curves import open_live
    from pipeline.common.io import atomic_path

    with atomic_path(folder, owner="finetune plots") as tmp, open_live(tmp) as live:
        for e in evals:
            live.step = int(e["frames"])
            live.log_metric("eval/return_mean", round(float(e["return_mean"]), 4))
            live.log_metric("eval/return_std", round(float(e["return_std"]), 4))
        for e in episodes:
            live.step = int(e["frames"])
            live.log_metric("train/episode_return", round(float(e["episode_return"]), 4))


def _speed(timing: dict[str, float]) -> None:
    ups = timing["updates"] / timing["update_s"] if timing["update_s"] else float("nan")
    fps = timing["env_frames"] / timing["env_s"] if timing["env_s"] else float("nan")
    log.info("speed: %.2f updates/s, %.1f env frames/s while acting, %.1f s in evaluation", ups, fps, timing["eval_s"])


def run(
    backbone: str | Path,
    out: str | Path,
    section: FinetuneParams,
    *,
    metrics: str | Path | None = None,
    plots: str | Path | None = None,
) -> FinetuneSummary:
    """Train SAC online from the backbone under ``backbone``; write ``out/actor/``, ``out/eval_video.gif``,
    the metrics JSON (``metrics``) and the DVCLive curves (``plots``)."""
    p = section
    check_replaceable(out, "finetune")  # before any work: never a user's folder
    if plots is not None:
        check_replaceable(plots, "finetune plots")
    if p.threads:
        torch.set_num_threads(p.threads)
    spec = read_spec(backbone)
    warnings = check_observation(spec, p)
    workspace = Workspace(p, spec, select_device(p.device, param_key="finetune.device"))
    try:
        workspace.resume()
        workspace.train()
        evals = workspace.final_evaluation()
        final = evals[-1]
        workspace.export(out, final, warnings=warnings)
    finally:
        workspace.close()
    _speed(workspace.timing)
    state = workspace.state
    summary = FinetuneSummary(
        stage="finetune",
        out=str(out),
        task=p.task,
        encoder_init=p.encoder_init,
        frames=state.frame,
        episodes=state.episode,
        updates=workspace.agent.updates,
        eval={k: v for k, v in final.items() if k != "returns"} | {"episodes": p.eval_episodes},
        best_eval_return_mean=max(e["return_mean"] for e in evals),
        last_train_episode_return=state.episodes[-1]["episode_return"] if state.episodes else None,
        replay_buffer_mib=round(workspace.replay_bytes / 2**20, 2),
        warnings=warnings,
        evals=[{k: v for k, v in e.items() if k != "returns"} for e in evals],
        train_episodes=list(state.episodes),
        timing=workspace.timing,
    )
    if metrics is not None:
        summary.write_metrics(metrics)
    if plots is not None:
        log_curves(plots, summary.evals, summary.train_episodes)
    return summary
