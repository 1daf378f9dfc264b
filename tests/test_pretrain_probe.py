"""The linear probe's regression and score (the end-to-end probe test is in test_pretrain_stage.py)."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.pretrain.probe import ALPHAS, choose_alpha, fit_ridge, r2_score, ridge_r2


def test_r2_score_values_and_scaling() -> None:
    rng = np.random.default_rng(0)
    y = rng.normal(size=(50, 2)) * [1.0, 100.0]
    assert r2_score(y, y) == pytest.approx(1.0)
    assert r2_score(y, np.tile(y.mean(0), (50, 1))) == pytest.approx(0.0)
    # a wrong prediction of the small dimension barely counts unscaled, fully when scaled
    bad_small = y.copy()
    bad_small[:, 0] = -y[:, 0]
    assert r2_score(y, bad_small) > 0.99
    assert r2_score(y, bad_small, scale=y.std(0)) < 0.2
    assert np.isnan(r2_score(np.ones((5, 2)), np.zeros((5, 2))))


def test_ridge_recovers_a_linear_map_on_new_data() -> None:
    rng = np.random.default_rng(1)
    w = rng.normal(size=(6, 3))
    x_train, x_val = rng.normal(size=(120, 6)) * 5 + 2, rng.normal(size=(60, 6)) * 5 + 2
    y_train, y_val = x_train @ w + 1.0 + 0.01 * rng.normal(size=(120, 3)), x_val @ w + 1.0
    r2, alpha = ridge_r2(x_train, y_train, x_val, y_val, groups=np.repeat(np.arange(4), 30))
    assert r2 > 0.99 and alpha <= 1.0
    weights, (mean, std), used = fit_ridge(x_train, y_train, alpha=3.0)
    assert used == 3.0 and weights.shape == (7, 3) and mean.shape == std.shape == (6,)


def _brute_force_alpha(x: np.ndarray, y: np.ndarray, folds: list[np.ndarray]) -> float:
    scale = y.std(0) + 1e-12
    errors = []
    for alpha in ALPHAS:
        error = 0.0
        for held in folds:
            weights, (mean, std), _ = fit_ridge(x[~held], y[~held], alpha=alpha)
            pred = ((x[held] - mean) / std) @ weights[:-1] + weights[-1]
            error += float((((y[held] - pred) / scale) ** 2).sum())
        errors.append(error)
    return ALPHAS[int(np.argmin(errors))]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_alpha_choice_matches_brute_force_cross_validation(seed: int) -> None:
    rng = np.random.default_rng(seed)
    groups = np.repeat(np.arange(5), 8)
    x = rng.normal(size=(40, 6)) + rng.normal(size=(5, 6))[groups]
    y = x[:, :2] * rng.uniform(0, 1) + rng.normal(size=(5, 2))[groups] * rng.uniform(0, 2) + rng.normal(size=(40, 2))
    by_episode = [groups == g for g in range(5)]
    by_frame = [np.arange(40) == i for i in range(40)]
    assert choose_alpha(x, y, groups) == _brute_force_alpha(x, y, by_episode)
    # no groups, or a single episode: leave-one-frame-out (closed form)
    assert choose_alpha(x, y) == choose_alpha(x, y, np.zeros(40, int)) == _brute_force_alpha(x, y, by_frame)


def test_pure_noise_gets_the_strongest_shrinkage() -> None:
    rng = np.random.default_rng(3)
    assert choose_alpha(rng.normal(size=(80, 20)), rng.normal(size=(80, 2))) == ALPHAS[-1]
