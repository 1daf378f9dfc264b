"""The pretrain stage's probe: :func:`pipeline.common.probe.split_r2` (train split -> validation split).

The end-to-end probe (features from a backbone on a real dataset) is in test_pretrain_stage.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.common.probe import ALPHAS, split_r2


def _episodes(n_episodes: int, length: int, rng: np.random.Generator, dims: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random-walk states (n_episodes * length, dims) and each row's episode id."""
    state = np.concatenate([np.cumsum(rng.standard_normal((length, dims)), axis=0) for _ in range(n_episodes)])
    return state, np.repeat(np.arange(n_episodes), length)


def _linear_features(state: np.ndarray, mixing: np.ndarray, rng: np.random.Generator, noise: float) -> np.ndarray:
    """Features that carry the state linearly (mixed, offset, badly scaled), plus noise columns."""
    carried = state @ mixing * 7.0 + 3.0
    return np.hstack([carried, rng.standard_normal((len(state), 4))]) + noise * rng.standard_normal(
        (len(state), mixing.shape[1] + 4)
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_features_that_carry_the_state_score_high_on_new_episodes(seed: int) -> None:
    rng = np.random.default_rng(seed)
    mixing = rng.standard_normal((3, 8))
    y_train, groups = _episodes(6, 40, rng)
    y_val, _ = _episodes(2, 40, rng)
    r2, alpha = split_r2(
        _linear_features(y_train, mixing, rng, 0.05), y_train, groups, _linear_features(y_val, mixing, rng, 0.05), y_val
    )
    assert r2 > 0.95
    assert alpha in ALPHAS


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_noise_features_score_about_zero_with_the_strongest_shrinkage(seed: int) -> None:
    rng = np.random.default_rng(seed)
    y_train, groups = _episodes(5, 30, rng)
    y_val, _ = _episodes(2, 30, rng)
    r2, alpha = split_r2(
        rng.standard_normal((len(y_train), 20)), y_train, groups, rng.standard_normal((len(y_val), 20)), y_val
    )
    assert alpha == max(ALPHAS)
    # the validation mean differs from the train mean (new random walks): at or below zero, never informative
    assert r2 < 0.05


def test_a_nearly_noiseless_map_gets_the_weakest_penalty() -> None:
    rng = np.random.default_rng(3)
    w = rng.standard_normal((6, 3))
    x_train, x_val = rng.standard_normal((120, 6)) * 5 + 2, rng.standard_normal((60, 6)) * 5 + 2
    y_train, y_val = x_train @ w + 1.0 + 0.01 * rng.standard_normal((120, 3)), x_val @ w + 1.0
    r2, alpha = split_r2(x_train, y_train, np.repeat(np.arange(4), 30), x_val, y_val)
    assert alpha == min(ALPHAS)
    assert r2 > 0.999


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_penalty_is_chosen_across_episodes_not_within_them(seed: int) -> None:
    """Features that only name the episode fit its frames but say nothing about a new episode."""
    rng = np.random.default_rng(seed)
    n_episodes, length = 10, 25
    groups = np.repeat(np.arange(n_episodes), length)
    identity = rng.standard_normal((n_episodes, 5))
    target = rng.standard_normal((n_episodes, 2))
    x = identity[groups] + 0.05 * rng.standard_normal((len(groups), 5))
    y = target[groups] + 0.05 * rng.standard_normal((len(groups), 2))
    x_val = rng.standard_normal((50, 5))
    y_val = rng.standard_normal((50, 2))
    _, by_episode = split_r2(x, y, groups, x_val, y_val)
    # the same rows shuffled under one episode label: the blocks mix episodes, so memorising pays
    order = rng.permutation(len(groups))
    _, by_frame = split_r2(x[order], y[order], np.zeros(len(groups), int), x_val, y_val)
    assert by_episode == max(ALPHAS)
    assert by_frame < by_episode


def test_a_single_train_episode_falls_back_to_blocks_of_frames() -> None:
    rng = np.random.default_rng(5)
    mixing = rng.standard_normal((3, 8))
    y_train, _ = _episodes(1, 80, rng)
    y_val, _ = _episodes(1, 40, rng)
    r2, alpha = split_r2(
        _linear_features(y_train, mixing, rng, 0.05),
        y_train,
        np.zeros(80, int),
        _linear_features(y_val, mixing, rng, 0.05),
        y_val,
    )
    assert np.isfinite(r2) and r2 > 0.9
    assert alpha in ALPHAS
    with pytest.raises(ValueError, match="at least 2 rows"):
        split_r2(np.ones((1, 3)), np.ones((1, 2)), np.zeros(1, int), np.ones((4, 3)), rng.standard_normal((4, 2)))


def test_a_given_penalty_is_used_as_given() -> None:
    rng = np.random.default_rng(6)
    y, groups = _episodes(4, 20, rng)
    x = y @ rng.standard_normal((3, 5))
    _, alpha = split_r2(x, y, groups, x, y, alpha=3.5)
    assert alpha == 3.5
    _, alpha = split_r2(x, y, groups, x, y, alphas=[0.5, 2.0])
    assert alpha in (0.5, 2.0)
    with pytest.raises(ValueError, match=">= 0"):
        split_r2(x, y, groups, x, y, alpha=-1.0)


def test_the_score_is_variance_weighted_on_train_scaled_dimensions() -> None:
    """R^2 does not depend on each state dimension's units; a dimension the features do not carry
    counts in proportion to its (train-scaled) validation variance."""
    rng = np.random.default_rng(7)
    walk_train, groups = _episodes(6, 40, rng, dims=1)
    walk_val, _ = _episodes(2, 40, rng, dims=1)
    # dimension 0: a random walk the features carry; dimension 1: zero-mean noise they do not
    y_train = np.hstack([walk_train, rng.standard_normal((len(walk_train), 1))])
    y_val = np.hstack([walk_val, rng.standard_normal((len(walk_val), 1))])
    x_train = np.hstack([walk_train, rng.standard_normal((len(walk_train), 3))])
    x_val = np.hstack([walk_val, rng.standard_normal((len(walk_val), 3))])
    r2, _ = split_r2(x_train, y_train, groups, x_val, y_val, alpha=0.1)
    units = np.array([1.0, 1000.0])
    rescaled, _ = split_r2(x_train * 50.0, y_train * units, groups, x_val * 50.0, y_val * units, alpha=0.1)
    assert rescaled == pytest.approx(r2, abs=1e-6)
    # the share of dimension 0 in the (train-scaled) validation variance: neither 1 nor near 0
    scaled = (y_val - y_val.mean(0)) / y_train.std(0)
    share = float((scaled[:, 0] ** 2).sum() / (scaled**2).sum())
    assert 0.1 < share < 0.9
    assert r2 == pytest.approx(share, abs=0.05)


def test_a_validation_split_where_nothing_varies_scores_nan() -> None:
    rng = np.random.default_rng(8)
    y, groups = _episodes(3, 10, rng)
    r2, _ = split_r2(rng.standard_normal((30, 4)), y, groups, rng.standard_normal((5, 4)), np.ones((5, 3)))
    assert np.isnan(r2)
