"""Aggregate RL scores across tasks x seeds: mean, IQM and 95% stratified-bootstrap CIs (rliable).

rliable (Agarwal et al. 2021, "Deep RL at the edge of the statistical precipice") resamples
seeds within each task (stratified bootstrap), the field's convention for few-run comparisons.
Returns are divided by 1000 (every DMC task's maximum) before aggregating across tasks and
multiplied back for reporting, so a cheetah and a cartpole return count on the same scale.
"""

from __future__ import annotations

import numpy as np

DMC_MAX_RETURN = 1000.0


def aggregate(scores: dict[str, np.ndarray], *, reps: int = 2000, seed: int = 0) -> dict[str, dict[str, float]]:
    """IQM and mean with 95% stratified-bootstrap CIs per arm.

    Args:
        scores: arm -> (runs, tasks) final returns (runs = seeds; every arm the same tasks).
        reps: bootstrap resamples.
        seed: seeds the bootstrap (numpy's global RNG is what rliable uses; restored after).

    Returns:
        arm -> {"iqm", "iqm_ci_low", "iqm_ci_high", "mean", "mean_ci_low", "mean_ci_high", "runs", "tasks"}
        in return units (0..1000).
    """
    from rliable import library as rly
    from rliable import metrics

    normalised = {arm: np.asarray(s, np.float64) / DMC_MAX_RETURN for arm, s in scores.items()}

    def both(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x)])

    state = np.random.get_state()
    np.random.seed(seed)
    try:
        # rliable's IQM trims 25% per side, which needs >= 4 runs x tasks; fewer fall back to the mean.
        point, interval = rly.get_interval_estimates(normalised, both, reps=reps)
    finally:
        np.random.set_state(state)
    out = {}
    for arm, s in normalised.items():
        (iqm, mean), ((iqm_lo, mean_lo), (iqm_hi, mean_hi)) = point[arm], interval[arm]
        out[arm] = {
            "iqm": iqm * DMC_MAX_RETURN,
            "iqm_ci_low": iqm_lo * DMC_MAX_RETURN,
            "iqm_ci_high": iqm_hi * DMC_MAX_RETURN,
            "mean": mean * DMC_MAX_RETURN,
            "mean_ci_low": mean_lo * DMC_MAX_RETURN,
            "mean_ci_high": mean_hi * DMC_MAX_RETURN,
            "runs": int(s.shape[0]),
            "tasks": int(s.shape[1]),
        }
    return out
