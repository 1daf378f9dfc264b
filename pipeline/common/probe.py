"""Linear probe: how much of a target vector (state, observation) a frozen representation holds.

The one probe of the project (scikit-learn ``StandardScaler`` + ``Ridge``, penalty chosen by an
episode-grouped ``GroupKFold``), used by three stages:

* evaluate (:func:`out_of_fold`, :func:`pooled_r2`, :func:`r2_with_ci`, :func:`paired_difference`):
  backbone features -> the task's observation vector on held-out episodes;
* annotate (:func:`out_of_fold`, :func:`pooled_r2`): the words of a text field -> the simulator state;
* pretrain (:func:`split_r2`): backbone features -> the physics state, train split -> validation split.

:func:`out_of_fold` can fit a fixed one-hidden-layer MLP (:data:`MLP`) instead of the ridge, in the
same folds and statistics (the evaluate stage's ``probe.model: mlp``): ridge asks whether a
quantity is linearly in the features, the MLP whether it is there at all. The evaluate stage
saves its out-of-fold predictions (:func:`probe_arrays`, :func:`read_probe_file`).

Out-of-fold protocol (:func:`out_of_fold`, per task, per backbone):

* Ridge regression from standardised features to the standardised observation vector (what a
  state-based agent sees: no untracked root position), with every unbounded angle as cos/sin
  (``PixelEnv.probe_observation``: a frame shows it only modulo a turn).
* k-fold cross-validation **by episode** (scikit-learn ``GroupKFold``): every held-out episode is
  predicted by a model that never saw any frame of it, and the ridge penalty is chosen inside
  each training fold by an inner episode-grouped CV (never on the test fold).
* The score is the **pooled out-of-fold R^2**: all out-of-fold predictions against all targets
  at once, ``1 - sum SSE / sum SST`` over the group's dimensions (each standardised on the held-out
  rows, so on them every dimension counts equally and this is the mean of the per-dimension R^2),
  for all dimensions and for position-like and velocity-like ones separately.
* Uncertainty: a bootstrap over held-out episodes (the independent unit). Comparisons are
  **paired**: the same resampled episodes score both backbones, and the 95% percentile CI is
  that of the difference. Each resample is scored by the same ratio of sums, so a dimension
  weighs what it varies in that resample. (Not the mean of per-dimension R^2: a dimension whose
  variance sits in a few episodes gets large negative R^2 in resamples without them, which
  stretches the CI; docs/RESULTS.md, "How to read the probe numbers".)

Split protocol (:func:`split_r2`): the same ridge fitted on a train split (penalty chosen on the
train split alone by the same episode-grouped CV) and scored once on a separate validation split
as variance-weighted R^2.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import Ridge
from sklearn.model_selection import GroupKFold, KFold
from sklearn.neural_network import MLPRegressor
from sklearn.preprocessing import StandardScaler

#: Dimension groups reported beside the whole vector.
GROUPS = ("all", "position", "velocity")
#: Ridge penalties (on standardised features) :func:`split_r2` chooses from by default: from
#: nearly none to strong shrinkage. The same grid as the default of ``EvaluateParams.probe.alphas``.
ALPHAS: tuple[float, ...] = (0.1, 1.0, 10.0, 100.0, 1000.0)
#: Folds of :func:`split_r2`'s penalty choice, capped at the number of train episodes (or frames).
FOLDS = 5
#: Probe models of :func:`out_of_fold`: ``ridge`` (linear: what the protocol calls "the features
#: hold it") or ``mlp`` (is it in the features at all, linearly or not).
MODELS = ("ridge", "mlp")
#: The ``mlp`` probe: one hidden layer of 256 ReLU units (the width of the SAC heads that would read
#: these features), L2 weight 1e-3, Adam for at most 500 epochs, fixed seed. Fixed, not searched: a
#: probe of what the features hold, not a model tuned on the held-out episodes.
MLP = {"hidden_layer_sizes": (256,), "alpha": 1e-3, "max_iter": 500, "random_state": 0}


@dataclass(frozen=True)
class OutOfFold:
    """Out-of-fold predictions of one probe.

    Attributes:
        target: (N, D) float64 standardised targets (constant dimensions dropped).
        prediction: (N, D) float64 out-of-fold predictions of ``target``.
        episode: (N,) int episode id of each row (the bootstrap's unit).
        kinds: (D,) kind of each dimension (``position`` / ``velocity`` / ``other``).
        alphas: the ridge penalty chosen in each outer fold (``mlp``: its fixed L2 weight).
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


def _choose_alpha(x: np.ndarray, y: np.ndarray, groups: np.ndarray, alphas: Sequence[float], folds: int) -> float:
    """The penalty with the lowest inner CV squared error on these training rows.

    Episode-grouped (``GroupKFold``, at most ``folds`` folds) when ``groups`` has two or more
    distinct values; with a single group, contiguous unshuffled ``KFold`` blocks of rows (for one
    episode: blocks of consecutive frames, so a held-out block is not predicted from its
    immediate neighbours).
    """
    n_groups = len(np.unique(groups))
    if n_groups >= 2:
        splits = GroupKFold(n_splits=min(folds, n_groups)).split(x, y, groups)
    else:
        if len(x) < 2:
            raise ValueError(f"choosing a ridge penalty needs at least 2 rows (got {len(x)})")
        splits = KFold(n_splits=min(folds, len(x))).split(x, y)
    errors = np.zeros(len(alphas))
    for train, test in splits:
        scaler = StandardScaler().fit(x[train])
        xt, xv = scaler.transform(x[train]), scaler.transform(x[test])
        for j, alpha in enumerate(alphas):
            errors[j] += float(((_fit(xt, y[train], alpha).predict(xv) - y[test]) ** 2).sum())
    return float(alphas[int(np.argmin(errors))])


def _fit_mlp(x: np.ndarray, y: np.ndarray) -> MLPRegressor:
    with warnings.catch_warnings():
        # The epoch budget is part of the probe's definition; stopping at it is expected.
        warnings.simplefilter("ignore", ConvergenceWarning)
        return MLPRegressor(**MLP).fit(x, y)


def out_of_fold(
    features: np.ndarray,
    targets: np.ndarray,
    episode: np.ndarray,
    kinds: list[str],
    *,
    alphas: list[float],
    folds: int,
    model: str = "ridge",
) -> OutOfFold:
    """Episode-grouped k-fold probe, ridge (default) or :data:`MLP`.

    Args:
        features: (N, F) float features, one row per frame.
        targets: (N, D) float observation vectors.
        episode: (N,) episode id of each frame; at least 2 distinct episodes.
        kinds: (D,) kind of each target dimension.
        alphas: ridge penalties to choose from (inner CV per outer fold; unused by ``mlp``).
        folds: outer (and inner) folds; capped at the number of episodes.
        model: one of :data:`MODELS`; ``mlp`` fits the fixed :data:`MLP` per outer fold (its
            ``alphas`` record is the MLP's L2 weight).
    """
    if model not in MODELS:
        raise ValueError(f"probe model {model!r}: expected one of {MODELS}")
    features = np.asarray(features, np.float64)
    targets = np.asarray(targets, np.float64)
    episode = np.asarray(episode)
    n_episodes = len(np.unique(episode))
    if n_episodes < 3:
        raise ValueError(
            f"the probe needs at least 3 held-out episodes (got {n_episodes}): raise evaluate.heldout_episodes"
        )
    keep = targets.std(axis=0) > 1e-8  # a constant dimension has no R^2
    y = targets[:, keep]
    kept_kinds = tuple(k for k, m in zip(kinds, keep, strict=True) if m)
    y = (y - y.mean(axis=0)) / y.std(axis=0)
    prediction = np.zeros_like(y)
    chosen = []
    outer = GroupKFold(n_splits=min(folds, n_episodes))
    for train, test in outer.split(features, y, episode):
        scaler = StandardScaler().fit(features[train])
        xt, xv = scaler.transform(features[train]), scaler.transform(features[test])
        if model == "mlp":
            prediction[test] = _fit_mlp(xt, y[train]).predict(xv).reshape(len(test), -1)
            chosen.append(float(MLP["alpha"]))
            continue
        alpha = _choose_alpha(features[train], y[train], episode[train], alphas, folds)
        prediction[test] = _fit(xt, y[train], alpha).predict(xv)
        chosen.append(alpha)
    return OutOfFold(y, prediction, episode, kept_kinds, tuple(chosen))


def split_r2(
    x_train: np.ndarray,
    y_train: np.ndarray,
    groups_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    *,
    alphas: Sequence[float] = ALPHAS,
    alpha: float = 0.0,
    folds: int = FOLDS,
) -> tuple[float, float]:
    """Ridge probe fitted on a train split and scored on a validation split.

    Features are standardised with the train split's mean and std (``StandardScaler``); each
    target dimension is scaled by its train-split std (a dimension constant on the train split
    keeps scale 1) and centred on its train mean. The score is the **variance-weighted R^2** on
    the validation split, ``1 - sum(SSE) / sum(SST)`` over all (scaled) dimensions at once, SST
    around the validation mean: a dimension that barely moves in the validation split weighs
    little instead of dominating the score with a huge negative R^2.

    Args:
        x_train: (N, F) float features of the train split.
        y_train: (N, S) float targets (e.g. physics state) of the train split, any units.
        groups_train: (N,) episode id of each train row (the penalty choice's CV groups).
        x_val: (M, F) float features of the validation split.
        y_val: (M, S) float targets of the validation split, the units of ``y_train``.
        alphas: ridge penalties (on standardised features) to choose from when ``alpha`` is 0.
        alpha: > 0: the penalty, used as given; 0: chosen from ``alphas`` by the lowest
            cross-validated squared error (scaled targets) on the train split alone:
            ``GroupKFold`` by episode (``min(folds, episodes)`` folds) with two or more train
            episodes; with a single train episode, ``KFold`` over contiguous unshuffled blocks
            of its frames (``min(folds, N)`` folds).
        folds: most folds of the penalty choice.

    Returns:
        ``(R^2 on the validation split, the penalty used)``; R^2 is NaN when nothing varies in
        the validation split. R^2 is unitless, at most 1, and can be negative.
    """
    x_train = np.asarray(x_train, np.float64)
    y_train = np.asarray(y_train, np.float64)
    x_val = np.asarray(x_val, np.float64)
    y_val = np.asarray(y_val, np.float64)
    groups_train = np.asarray(groups_train)
    if alpha < 0:
        raise ValueError(f"the ridge penalty must be >= 0 (got {alpha}; 0 chooses it)")
    if len(x_train) != len(y_train) or len(x_train) != len(groups_train) or len(x_val) != len(y_val):
        raise ValueError(
            f"row counts differ: x_train {len(x_train)}, y_train {len(y_train)}, groups_train {len(groups_train)}, "
            f"x_val {len(x_val)}, y_val {len(y_val)}"
        )
    mean = y_train.mean(axis=0)
    std = y_train.std(axis=0)
    scale = np.where(std > 1e-12, std, 1.0)
    yt = (y_train - mean) / scale
    yv = (y_val - mean) / scale
    chosen = float(alpha) if alpha > 0 else _choose_alpha(x_train, yt, groups_train, list(alphas), folds)
    scaler = StandardScaler().fit(x_train)
    prediction = _fit(scaler.transform(x_train), yt, chosen).predict(scaler.transform(x_val))
    total = float(((yv - yv.mean(axis=0)) ** 2).sum())
    if total <= 1e-12 * yv.size:
        return float("nan"), chosen
    return 1.0 - float(((yv - prediction) ** 2).sum()) / total, chosen


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
    """Pooled R^2, ``1 - sum SSE / sum SST`` over dimensions, for each row of ``weights`` (R, E):
    episode multiplicities."""
    count, sums, squares, residuals = stats
    n = weights @ count  # (R,)
    total = (weights @ squares - (weights @ sums) ** 2 / n[:, None]).sum(axis=1)  # (R,)
    return 1.0 - (weights @ residuals).sum(axis=1) / np.maximum(total, 1e-12)


def pooled_r2(oof: OutOfFold, group: str = "all", weights: np.ndarray | None = None) -> float | np.ndarray:
    """Pooled out-of-fold R^2 of the group's dimensions, ``1 - sum SSE / sum SST`` (on all
    held-out rows the mean of the per-dimension R^2, the dimensions being standardised there).

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


def probe_arrays(oofs: Mapping[str, OutOfFold], weights: np.ndarray) -> dict[str, np.ndarray]:
    """One task's probes as the arrays of its probe file (the evaluate stage's ``probe/<task>.npz``),
    so that any re-analysis starts from the out-of-fold predictions instead of refitting:

    * ``names`` (K,) str: the backbones, in the order of ``oofs`` (``pretrained`` first);
    * ``target`` (N, D) float64, ``episode`` (N,) int64, ``kinds`` (D,) str: shared by every probe;
    * ``prediction`` (K, N, D) float64: each backbone's out-of-fold predictions of ``target``;
    * ``alphas`` (K, folds) float64: the penalty each outer fold chose;
    * ``bootstrap_weights`` (R, E) uint16: the resamples behind every CI (:func:`bootstrap_weights`).

    :func:`read_probe_file` turns them back into the same :class:`OutOfFold` objects and weights.
    """
    names = list(oofs)
    first = oofs[names[0]]
    for name in names[1:]:
        if not (np.array_equal(oofs[name].target, first.target) and np.array_equal(oofs[name].episode, first.episode)):
            raise ValueError(f"probe {name!r} is not of the same held-out frames as {names[0]!r}")
    if weights.size and (weights.max() >= 2**16 or np.any(weights != np.round(weights))):
        raise ValueError("bootstrap weights must be episode counts below 65536")
    return {
        "names": np.array(names, dtype=str),
        "target": first.target,
        "episode": np.asarray(first.episode, np.int64),
        "kinds": np.array(first.kinds, dtype=str),
        "prediction": np.stack([oofs[n].prediction for n in names]),
        "alphas": np.array([oofs[n].alphas for n in names], np.float64),
        "bootstrap_weights": weights.astype(np.uint16),
    }


def read_probe_file(path: str | Path) -> tuple[dict[str, OutOfFold], np.ndarray]:
    """A probe file written from :func:`probe_arrays`: backbone name -> :class:`OutOfFold`, and
    the (R, E) float64 bootstrap weights. ``r2_with_ci`` / ``paired_difference`` on them give the
    numbers of the evaluate stage's ``results.json`` exactly."""
    with np.load(path, allow_pickle=False) as f:
        kinds = tuple(str(k) for k in f["kinds"])
        oofs = {
            str(name): OutOfFold(
                f["target"], f["prediction"][i], f["episode"], kinds, tuple(float(a) for a in f["alphas"][i])
            )
            for i, name in enumerate(f["names"])
        }
        return oofs, f["bootstrap_weights"].astype(np.float64)
