"""Linear probe: how much of the task's observation vector a frozen backbone's features hold.

Protocol (per task, per backbone):

* Ridge regression from standardised features to the standardised observation vector (what a
  state-based agent sees: angles as cos/sin, no untracked root position).
* k-fold cross-validation **by episode** (scikit-learn ``GroupKFold``): every held-out episode is
  predicted by a model that never saw any frame of it, and the ridge penalty is chosen inside
  each training fold by an inner episode-grouped CV (never on the test fold).
* The score is the **pooled out-of-fold R^2**: all out-of-fold predictions against all targets
  at once, averaged over dimensions (each dimension standardised, so each counts equally), and
  also over position-like and velocity-like dimensions separately.
* Uncertainty: a bootstrap over held-out episodes (the independent unit). Comparisons are
  **paired**: the same resampled episodes score both backbones, and the 95% percentile CI is
  that of the difference.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold
from sklearn.preprocessing import StandardScaler

#: Dimension groups reported beside the whole vector.
GROUPS = ("all", "position", "velocity")


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold predictions of one probe.

    Attributes:
        target: (N, D) float64 standardised targets (constant dimensions dropped).
        prediction: (N, D) float64 out-of-fold predictions of ``target``.
        episode: (N,) int episode id of each row (the bootstrap's unit).
        kinds: (D,) kind of each dimension (``position`` / ``velocity`` / ``other``).
        alphas: the ridge penalty chosen in each outer fold.
    """

    target: np.ndarray
    prediction: np.ndarray
    episode: np.ndarray
    kinds: tuple[str, ...]
    alphas: tuple[float, ...]


def _columns(kinds: tuple[str, ...], group: str) -> np.ndarray:
    mask = np.ones(len(kinds), bool) if group == "all" else np.array([k == group for k in kinds], bool)
    return np.flatnonzero(mask)


def _fit(x: np.ndarray, y: np.ndarray, alpha: float) -> Ridge:
    return Ridge(alpha=alpha).fit(x, y)


def _choose_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas: list[float], folds: int) -> float:
    """The penalty with the lowest inner episode-grouped CV error on these training rows."""
    inner = GroupKFold(n_splits=min(folds, len(np.unique(groups))))
    errors = np.zeros(len(alphas))
    for train, test in inner.split(x, y, groups):
        scaler = StandardScaler().fit(x[train])
        xt, xv = scaler.transform(x[train]), scaler.transform(x[test])
        for j, alpha in enumerate(alphas):
            errors[j] += float(((_fit(xt, y[train], alpha).predict(xv) - y[test]) ** 2).sum())
    return float(alphas[int(np.argmin(errors))])


def out_of_fold(features: np.ndarray, targets: np.ndarray, episode: np.ndarray, kinds: list[str], *, alphas: list[float], folds: int) -> OutOfFold:
    """Episode-grouped k-fold ridge probe.

    Args:
        features: (N, F) float features, one row per frame.
        targets: (N, D) float observation vectors.
        episode: (N,) episode id of each frame; at least 2 distinct episodes.
        kinds: (D,) kind of each target dimension.
        alphas: ridge penalties to choose from (inner CV per outer fold).
        folds: outer (and inner) folds; capped at the number of episodes.
    """
    features = np.asarray(features, np.float64)
    targets = np.asarray(targets, np.float64)
    episode = np.asarray(episode)
    n_episodes = len(np.unique(episode))
    if n_episodes < 3:
        raise ValueError(f"the probe needs at least 3 held-out episodes (got {n_episodes}): raise evaluate.heldout_episodes")
    keep = targets.std(axis=0) > 1e-8  # a constant dimension has no R^2
    y = targets[:, keep]
    kept_kinds = tuple(k for k, m in zip(kinds, keep) if m)
    y = (y - y.mean(axis=0)) / y.std(axis=0)
    prediction = np.zeros_like(y)
    chosen = []
    outer = GroupKFold(n_splits=min(folds, n_episodes))
    for train, test in outer.split(features, y, episode):
        alpha = _choose_alpha(features[train], y[train], episode[train], alphas, folds)
        scaler = StandardScaler().fit(features[train])
        prediction[test] = _fit(scaler.transform(features[train]), y[train], alpha).predict(scaler.transform(features[test]))
        chosen.append(alpha)
    return OutOfFold(y, prediction, episode, kept_kinds, tuple(chosen))


def _episode_stats(oof: OutOfFold, cols: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-episode sufficient statistics: rows (E,), and per dimension sum y, sum y^2, sum (y - p)^2 (E, D)."""
    ids, inverse = np.unique(oof.episode, return_inverse=True)
    y, p = oof.target[:, cols], oof.prediction[:, cols]
    count = np.bincount(inverse, minlength=len(ids)).astype(np.float64)
    sums = np.zeros((len(ids), cols.size))
    squares = np.zeros_like(sums)
    residuals = np.zeros_like(sums)
    np.add.at(sums, inverse, y)
    np.add.at(squares, inverse, y**2)
    np.add.at(residuals, inverse, (y - p) ** 2)
    return count, sums, squares, residuals


def _pooled_r2_weighted(stats: tuple[np.ndarray, ...], weights: np.ndarray) -> np.ndarray:
    """Pooled R^2 (mean over dimensions) for each row of ``weights`` (R, E): episode multiplicities."""
    count, sums, squares, residuals = stats
    n = weights @ count  # (R,)
    total = weights @ squares - (weights @ sums) ** 2 / n[:, None]  # (R, D)
    return np.mean(1.0 - (weights @ residuals) / np.maximum(total, 1e-12), axis=1)


def pooled_r2(oof: OutOfFold, group: str = "all", weights: np.ndarray | None = None) -> float | np.ndarray:
    """Mean over the group's dimensions of the pooled out-of-fold R^2.

    With ``weights`` (R, E) (how often each episode is drawn, per resample; episodes in sorted
    id order) returns the (R,) R^2 of each resample. NaN when the group has no dimension (e.g. a
    task without velocities)."""
    cols = _columns(oof.kinds, group)
    n_episodes = len(np.unique(oof.episode))
    if cols.size == 0:
        return float("nan") if weights is None else np.full(len(weights), np.nan)
    stats = _episode_stats(oof, cols)
    if weights is None:
        return float(_pooled_r2_weighted(stats, np.ones((1, n_episodes)))[0])
    return _pooled_r2_weighted(stats, weights)


def bootstrap_weights(episode: np.ndarray, resamples: int, seed: int) -> np.ndarray:
    """(resamples, E) float64: how often each episode (sorted id order) is drawn in each
    resample of E episodes with replacement."""
    n = len(np.unique(episode))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, n, size=(resamples, n))
    weights = np.zeros((resamples, n))
    np.add.at(weights, (np.arange(resamples)[:, None], draws), 1.0)
    return weights


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a 95% bootstrap percentile interval."""

    value: float
    low: float
    high: float

    def excludes_zero(self) -> bool:
        return self.low > 0.0 or self.high < 0.0

    def as_dict(self) -> dict[str, float]:
        return {"value": self.value, "ci_low": self.low, "ci_high": self.high}


def _interval(value: float, samples: np.ndarray) -> Estimate:
    samples = samples[np.isfinite(samples)]
    if samples.size == 0:
        return Estimate(value, float("nan"), float("nan"))
    low, high = np.percentile(samples, [2.5, 97.5])
    return Estimate(value, float(low), float(high))


def r2_with_ci(oof: OutOfFold, group: str, weights: np.ndarray) -> Estimate:
    """Pooled R^2 of one probe with its episode-bootstrap 95% CI (``weights`` from :func:`bootstrap_weights`)."""
    return _interval(pooled_r2(oof, group), pooled_r2(oof, group, weights))


def paired_difference(a: OutOfFold, b: OutOfFold, group: str, weights: np.ndarray) -> Estimate:
    """R^2(a) - R^2(b) on the same frames, with the 95% CI of the difference over the same
    resampled episodes (a and b must be probes of the same held-out rows)."""
    if a.target.shape != b.target.shape or not np.array_equal(a.episode, b.episode):
        raise ValueError("paired_difference needs two probes of the same held-out frames")
    diffs = pooled_r2(a, group, weights) - pooled_r2(b, group, weights)
    return _interval(pooled_r2(a, group) - pooled_r2(b, group), diffs)
