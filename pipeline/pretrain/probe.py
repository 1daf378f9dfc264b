"""Representation check: a linear probe from frozen fused features to the physics state.

For each task (the state has a different size per task) a ridge regression from the backbone's
fused features (standardised with train-split statistics) to the state (qpos then qvel of the
current frame) is fitted on the train split and scored on the validation split: variance-weighted
R^2 (1 - sum SSE / sum SST over the state dimensions, each scaled by its train-split std), averaged
over tasks. The ridge penalty, unless given, is chosen on the train split by leave-one-episode-out
error (frames of one episode are strongly correlated, so plain leave-one-frame-out would pick too
little regularisation for new episodes; with a single train episode it falls back to that).
The same is done for the same architecture at its random initialisation.
"""
from __future__ import annotations

import logging
from collections import defaultdict
from typing import Sequence

import numpy as np
import torch
from torch import nn

from pipeline.dataset.stacked import StackedFrames

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

    Reads every shard once, in order, in this process. ``max_per_task`` > 0 keeps at most that
    many frames per task (the first ones).
    """
    backbone.eval()
    features: dict[str, list[np.ndarray]] = defaultdict(list)
    states: dict[str, list[np.ndarray]] = defaultdict(list)
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
            states[sample["task"]].append(sample["state"].astype(np.float64))
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
    return {task: (np.stack(features[task]), np.stack(states[task]), np.asarray(episodes[task], np.int64)) for task in sorted(features)}


#: Ridge penalties tried when ``alpha`` is 0.
ALPHAS = tuple(10.0 ** e for e in range(-3, 6))


def _solve(xs: np.ndarray, yc: np.ndarray, alphas: Sequence[float]) -> list[np.ndarray]:
    """Ridge coefficients (F, S) of centred ``xs`` -> centred ``yc`` for each alpha (one SVD)."""
    u, sv, vt = np.linalg.svd(xs, full_matrices=False)
    uty = u.T @ yc
    return [vt.T @ ((sv / (sv**2 + a))[:, None] * uty) for a in alphas]


def choose_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None = None) -> float:
    """The alpha of :data:`ALPHAS` with the smallest held-out squared error (targets scaled to unit
    variance): leave-one-group-out when ``groups`` (N,) has two or more values, else leave-one-out
    (closed form)."""
    scale = y.std(0) + 1e-12
    errors = np.zeros(len(ALPHAS))
    if groups is not None and len(np.unique(groups)) >= 2:
        for g in np.unique(groups):
            held = groups == g
            mean, std = x[~held].mean(0), x[~held].std(0) + 1e-8
            xs, y_mean = (x[~held] - mean) / std, y[~held].mean(0)
            for i, coef in enumerate(_solve(xs, y[~held] - y_mean, ALPHAS)):
                pred = ((x[held] - mean) / std) @ coef + y_mean
                errors[i] += float((((y[held] - pred) / scale) ** 2).sum())
    else:
        xs = (x - x.mean(0)) / (x.std(0) + 1e-8)
        yc = y - y.mean(0)
        u, sv, _ = np.linalg.svd(xs, full_matrices=False)
        uty = u.T @ yc
        for i, a in enumerate(ALPHAS):
            shrink = sv**2 / (sv**2 + a)
            hat = (u**2) @ shrink + 1.0 / len(x)
            errors[i] = float((((yc - u @ (shrink[:, None] * uty)) / (1.0 - hat)[:, None] / scale) ** 2).sum())
    return float(ALPHAS[int(np.argmin(errors))])


def fit_ridge(x: np.ndarray, y: np.ndarray, alpha: float = 0.0, groups: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Ridge regression with intercept on standardised ``x`` (N, F) -> ``y`` (N, S).

    ``alpha`` > 0 is used as given; 0 chooses it with :func:`choose_alpha` (``groups``: the
    episode of each row). Returns ``(weights (F + 1, S) on [standardised x, 1], standardisation
    (2, F) mean and std, alpha)``.
    """
    chosen = alpha if alpha > 0 else choose_alpha(x, y, groups)
    mean, std = x.mean(0), x.std(0) + 1e-8
    y_mean = y.mean(0)
    (coef,) = _solve((x - mean) / std, y - y_mean, [chosen])
    return np.vstack([coef, y_mean[None, :]]), np.stack([mean, std]), chosen


def r2_score(y_true: np.ndarray, y_pred: np.ndarray, scale: np.ndarray | None = None) -> float:
    """Variance-weighted R^2 of (N, S) predictions: ``1 - sum(SSE) / sum(SST)`` over dimensions,
    each dimension first divided by ``scale`` (S,) (default: ones). ``nan`` if nothing varies.

    With ``scale`` = the train split's std, a state dimension that barely moves in the validation
    split weighs little instead of dominating the score with a huge negative R^2.
    """
    scale = np.ones(y_true.shape[1]) if scale is None else np.where(scale > 1e-12, scale, 1.0)
    t, p = y_true / scale, y_pred / scale
    sst = float(((t - t.mean(0)) ** 2).sum())
    if sst <= 1e-12 * t.size:
        return float("nan")
    return 1.0 - float(((t - p) ** 2).sum()) / sst


def ridge_r2(
    x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, alpha: float = 0.0, groups: np.ndarray | None = None,
) -> tuple[float, float]:
    """Fit :func:`fit_ridge` on train, return ``(R^2 on validation, the alpha used)``."""
    weights, (mean, std), chosen = fit_ridge(x_train, y_train, alpha, groups)
    pred = ((x_val - mean) / std) @ weights[:-1] + weights[-1]
    return r2_score(y_val, pred, scale=y_train.std(0)), chosen


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

    ``alpha`` 0 chooses the ridge penalty per task by leave-one-episode-out error on the train split.
    """
    train = extract(backbone, train_shards, frame_stack, device, batch_size=batch_size, max_per_task=max_per_task, flow_input=flow_input)
    val = extract(backbone, validation_shards, frame_stack, device, batch_size=batch_size, max_per_task=max_per_task, flow_input=flow_input)
    per_task: dict[str, float] = {}
    alphas: dict[str, float] = {}
    for task in sorted(set(train) & set(val)):
        (x_train, y_train, groups), (x_val, y_val, _) = train[task], val[task]
        per_task[task], alphas[task] = ridge_r2(x_train, y_train, x_val, y_val, alpha, groups)
    missing = sorted(set(train) ^ set(val))
    if missing:
        log.warning("probe: task(s) %s appear in only one split and are skipped", ", ".join(missing))
    scores = [v for v in per_task.values() if v == v]
    return {"r2": float(np.mean(scores)) if scores else float("nan"), "per_task": per_task, "alpha": alphas}
