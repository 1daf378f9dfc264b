"""Representation check: a linear probe from frozen fused features to the physics state.

This module reads the features (:func:`extract`); the regression and its score are the project's
one probe, :func:`pipeline.common.probe.split_r2` (scikit-learn ridge). For each task (the state has a
different size per task) a ridge regression from the backbone's fused features (standardised with
train-split statistics) to the state of the current frame is fitted on the train
split and scored on the validation split: variance-weighted R^2 (1 - sum SSE / sum SST over the
state dimensions, each scaled by its train-split std), averaged over tasks. The state is the joint
state a frame can show (:func:`pipeline.sim.joint_state.state_matrix`: hinge angles as cos/sin, no
untracked root x, velocities), not raw qpos: a raw winding angle or the runner's root x would
cap R^2 for every backbone alike, whatever its features hold. The ridge penalty,
unless given, is chosen from :data:`pipeline.common.probe.ALPHAS` on the train split by episode-grouped
k-fold CV (frames of one episode are strongly correlated, so splitting by frame would pick too
little regularisation for new episodes); with a single train episode it falls back to k-fold over
contiguous blocks of that episode's frames. The same is done for the same architecture at its
random initialisation.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.common.errors import UserError
from pipeline.common.probe import split_r2
from pipeline.dataset.stacked import StackedFrames
from pipeline.sim.joint_state import model_joints, state_matrix

log = logging.getLogger(__name__)


@torch.no_grad()
def extract(
    backbone: nn.Module,
    shards: Sequence[str],
    frame_stack: int,
    device: torch.device,
    *,
    batch_size: int = 64,
    max_per_task: int = 0,
    flow_input: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """task -> (features (N, feature_dim) float64, state (N, S) float64, episode (N,) int64), in stream order.

    ``state`` is :func:`pipeline.sim.joint_state.state_matrix` of the frames' recorded qpos and qvel; a task
    whose model this install cannot build (not a dm_control or gymnasium task) is left out, with a warning.

    Reads every shard once, in order, in this process. ``max_per_task`` > 0 keeps at most that
    many frames per task (the first ones).

    Raises:
        UserError: a task's recorded qpos / qvel do not have its model's sizes.
    """
    backbone.eval()
    features: dict[str, list[np.ndarray]] = defaultdict(list)
    qpos: dict[str, list[np.ndarray]] = defaultdict(list)
    qvel: dict[str, list[np.ndarray]] = defaultdict(list)
    episodes: dict[str, list[int]] = defaultdict(list)
    counts: dict[str, int] = defaultdict(int)
    stream = StackedFrames(shards, frame_stack, with_state=True)
    pending: list[dict] = []

    def flush() -> None:
        if not pending:
            return
        obs = torch.from_numpy(np.stack([s["obs"] for s in pending])).to(device)
        flow = torch.from_numpy(np.stack([s["flow"] for s in pending])).to(device) if flow_input else None
        out = backbone(obs, flow).double().cpu().numpy()
        for sample, row in zip(pending, out, strict=True):
            features[sample["task"]].append(row)
            qpos[sample["task"]].append(sample["qpos"])
            qvel[sample["task"]].append(sample["qvel"])
            episodes[sample["task"]].append(sample["episode"])
        pending.clear()

    for sample in stream:
        task = sample["task"]
        if max_per_task and counts[task] >= max_per_task:
            continue
        counts[task] += 1
        pending.append(sample)
        if len(pending) >= batch_size:
            flush()
    flush()
    out = {}
    for task in sorted(features):
        try:
            joints = model_joints(task)
        except UserError as exc:  # a task this install cannot build: which qpos are angles is unknown
            log.warning(
                "probe: task %r is skipped: its model is needed to read its recorded state as joint state (%s)",
                task,
                str(exc).splitlines()[0],
            )
            continue
        try:
            state, _ = state_matrix(joints, np.stack(qpos[task]), np.stack(qvel[task]))
        except ValueError as exc:
            raise UserError(
                f"{shards[0]}: the probe's state of task {task!r}: {exc}.\n"
                f"  Fix: build the dataset from episodes the collect stage recorded with that task's own model."
            ) from exc
        out[task] = (np.stack(features[task]), state, np.asarray(episodes[task], np.int64))
    return out


def probe(
    backbone: nn.Module,
    train_shards: Sequence[str],
    validation_shards: Sequence[str],
    frame_stack: int,
    device: torch.device,
    *,
    alpha: float = 0.0,
    max_per_task: int = 0,
    batch_size: int = 64,
    flow_input: bool = False,
) -> dict[str, object]:
    """``{"r2": mean over tasks, "per_task": {task: r2}, "alpha": {task: ridge penalty}}`` (see the module docstring).

    ``alpha`` 0 chooses the ridge penalty per task on the train split (:func:`pipeline.common.probe.split_r2`:
    episode-grouped k-fold CV over :data:`pipeline.common.probe.ALPHAS`, contiguous blocks of frames with a
    single train episode). R^2 is unitless (NaN for a task whose validation state does not vary);
    ``r2`` averages the finite per-task values.
    """
    train = extract(
        backbone,
        train_shards,
        frame_stack,
        device,
        batch_size=batch_size,
        max_per_task=max_per_task,
        flow_input=flow_input,
    )
    val = extract(
        backbone,
        validation_shards,
        frame_stack,
        device,
        batch_size=batch_size,
        max_per_task=max_per_task,
        flow_input=flow_input,
    )
    per_task: dict[str, float] = {}
    alphas: dict[str, float] = {}
    for task in sorted(set(train) & set(val)):
        (x_train, y_train, groups), (x_val, y_val, _) = train[task], val[task]
        per_task[task], alphas[task] = split_r2(x_train, y_train, groups, x_val, y_val, alpha=alpha)
    missing = sorted(set(train) ^ set(val))
    if missing:
        log.warning("probe: task(s) %s appear in only one split and are skipped", ", ".join(missing))
    scores = [v for v in per_task.values() if v == v]
    return {"r2": float(np.mean(scores)) if scores else float("nan"), "per_task": per_task, "alpha": alphas}
