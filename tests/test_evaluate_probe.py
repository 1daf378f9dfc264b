"""The probe's statistics: episode-grouped out-of-fold R^2 and paired bootstrap CIs."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.common.probe import OutOfFold, bootstrap_weights, out_of_fold, paired_difference, pooled_r2, r2_with_ci

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
    informative = np.hstack(
        [targets @ rng.standard_normal((3, 8)), rng.standard_normal((len(targets), 8))]
    ) + 0.5 * rng.standard_normal((len(targets), 16))
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
    assert (
        noise_alone.low < 0.0 < noise_alone.high or noise_alone.high < 0.0
    )  # pure noise never scores reliably above zero


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


def test_a_dimension_that_moves_in_one_episode_cannot_stretch_the_ci() -> None:
    """Cheetah-run's body pitch varies only in the episodes where the cheetah flips. A resample
    without them leaves that dimension almost no variance: scored as a mean of per-dimension R^2
    its R^2 there runs to large negative values and one dimension stretched a gap's CI from
    about 0.05 wide to 0.37 (docs/RESULTS.md, "How to read the probe numbers"). The pooled ratio
    of sums weighs it by what it varies in the resample."""
    rng = np.random.default_rng(0)
    n_episodes, length = 12, 40
    episode = np.repeat(np.arange(n_episodes), length)
    walk = np.concatenate([np.cumsum(rng.standard_normal(length)) for _ in range(n_episodes)])
    flip = np.where(episode == 0, np.sin(np.linspace(0, 3, len(episode)) * 40), 0.0) + 1e-3 * rng.standard_normal(
        len(episode)
    )
    target = np.stack([walk, flip], axis=1)
    target = (target - target.mean(0)) / target.std(0)
    kinds = ("position", "position")

    def probe(noise: float, wobble: float, seed: int) -> OutOfFold:
        """Errors of ``noise`` on the walk, and a small ``wobble`` on the flip dimension everywhere
        (a linear probe's prediction moves with the features also where that dimension does not)."""
        error = np.random.default_rng(seed).standard_normal(target.shape) * [noise, wobble]
        return OutOfFold(target, target + error, episode, kinds, (1.0,))

    good, worse = probe(0.3, 0.05, 1), probe(0.5, 0.08, 2)
    per_dimension = 1 - ((target - good.prediction) ** 2).sum(0) / (target**2).sum(0)
    assert pooled_r2(good) == pytest.approx(
        per_dimension.mean(), abs=1e-12
    )  # the point estimate is the per-dimension mean
    rows = bootstrap_weights(episode, 1000, seed=0)
    assert (rows[:, 0] == 0).mean() > 0.2  # many resamples leave the flipping episode out
    diff = paired_difference(good, worse, "all", rows)
    assert 0 < diff.low < diff.value < diff.high < 0.5, diff  # the mean of per-dimension R^2: high ~ 100
    for probe_ in (good, worse):  # no resample's score runs off
        assert pooled_r2(probe_, "all", rows).min() > -1.0  # (the mean of per-dimension R^2: below -1000)


def test_the_mlp_probe_finds_what_is_in_the_features_non_linearly_and_ridge_does_not() -> None:
    """A target that is an even function of the features (|x0| + x1^2) is invisible to a linear
    probe and plain to the MLP one: the two models answer different questions."""
    rng = np.random.default_rng(5)
    episode = np.repeat(np.arange(20), 30)
    features = rng.standard_normal((len(episode), 6))
    targets = np.stack(
        [np.abs(features[:, 0]) + features[:, 1] ** 2, features[:, 2] ** 2 - np.abs(features[:, 3]), features[:, 4]],
        axis=1,
    )
    ridge = out_of_fold(features, targets, episode, KINDS, alphas=[0.1, 1.0, 10.0], folds=4)
    mlp = out_of_fold(features, targets, episode, KINDS, alphas=[0.1, 1.0, 10.0], folds=4, model="mlp")
    assert pooled_r2(ridge, "position") < 0.1 < 0.7 < pooled_r2(mlp, "position")
    assert pooled_r2(ridge, "velocity") > 0.95 and pooled_r2(mlp, "velocity") > 0.9  # both read a linear target
    assert mlp.alphas == (1e-3,) * 4 and ridge.alphas != mlp.alphas
    again = out_of_fold(features, targets, episode, KINDS, alphas=[0.1], folds=4, model="mlp")
    assert np.array_equal(again.prediction, mlp.prediction)  # fixed seed: the same bytes


def test_an_unknown_probe_model_is_refused_and_the_param_admits_exactly_the_models() -> None:
    import typing

    from pipeline.common.probe import MODELS
    from pipeline.config.evaluate import ProbeParams

    targets, episode = _episodes()
    with pytest.raises(ValueError, match="probe model 'lasso'"):
        out_of_fold(targets, targets, episode, KINDS, alphas=[1.0], folds=3, model="lasso")
    assert set(typing.get_args(ProbeParams.model_fields["model"].annotation)) == set(MODELS)
