"""The probe's statistics: episode-grouped out-of-fold R^2 and paired bootstrap CIs."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.probe import bootstrap_weights, out_of_fold, paired_difference, pooled_r2, r2_with_ci

KINDS = ["position", "position", "velocity"]


def _episodes(n_episodes: int = 12, length: int = 40, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Smooth random-walk targets (D=3) per episode, and each row's episode id."""
    rng = np.random.default_rng(seed)
    targets = np.concatenate([np.cumsum(rng.standard_normal((length, 3)), axis=0) for _ in range(n_episodes)])
    return targets, np.repeat(np.arange(n_episodes), length)


def _probe(features: np.ndarray, targets: np.ndarray, episode: np.ndarray):
    return out_of_fold(features, targets, episode, KINDS, alphas=[0.1, 1.0, 10.0], folds=4)


def test_informative_features_beat_noise_with_a_ci_that_excludes_zero() -> None:
    targets, episode = _episodes()
    rng = np.random.default_rng(1)
    informative = np.hstack([targets @ rng.standard_normal((3, 8)), rng.standard_normal((len(targets), 8))]) + 0.5 * rng.standard_normal((len(targets), 16))
    noise = rng.standard_normal((len(targets), 16))
    good, bad = _probe(informative, targets, episode), _probe(noise, targets, episode)
    rows = bootstrap_weights(episode, 500, seed=0)
    diff = paired_difference(good, bad, "all", rows)
    assert pooled_r2(good) > 0.8
    assert diff.value > 0.5 and diff.excludes_zero()
    assert r2_with_ci(good, "velocity", rows).excludes_zero()


def test_two_noise_backbones_differ_by_a_ci_that_includes_zero() -> None:
    targets, episode = _episodes(seed=3)
    rng = np.random.default_rng(4)
    a = _probe(rng.standard_normal((len(targets), 16)), targets, episode)
    b = _probe(rng.standard_normal((len(targets), 16)), targets, episode)
    rows = bootstrap_weights(episode, 500, seed=0)
    diff = paired_difference(a, b, "all", rows)
    assert not diff.excludes_zero(), diff
    noise_alone = r2_with_ci(a, "all", rows)
    assert noise_alone.low < 0.0 < noise_alone.high or noise_alone.high < 0.0  # pure noise never scores reliably above zero


def test_every_held_out_episode_is_predicted_by_a_model_that_never_saw_it() -> None:
    """A feature that memorises each episode's mean (an episode id in disguise) cannot leak:
    grouped folds give it no credit on episodes it did not train on."""
    targets, episode = _episodes(n_episodes=10, seed=5)
    per_episode_mean = np.stack([targets[episode == e].mean(axis=0) for e in episode])
    oof = _probe(np.eye(10)[episode], targets, episode)  # one-hot episode id
    assert pooled_r2(oof) < 0.05
    leaky = _probe(per_episode_mean + 0 * np.eye(10)[episode][:, :3], targets, episode)
    assert pooled_r2(leaky) > pooled_r2(oof)


def test_too_few_episodes_is_refused_with_the_fix() -> None:
    targets, episode = _episodes(n_episodes=2)
    with pytest.raises(ValueError, match="heldout_episodes"):
        _probe(targets, targets, episode)
