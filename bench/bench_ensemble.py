"""Benchmark (not a test): updates/s of N vector SAC agents batched as one ensemble against N separate agents.

The evaluate stage's vector arms (``state``, ``frozen``) train one agent per seed and backbone of a task, all
of one shape. This measures, in one run on this machine, N = 1, 3, 9 agents:

* separate: N :class:`pipeline.finetune.sac.SAC` agents, each ``update()`` called in turn (today's cost of
  N runs on one core, without the environment);
* batched: one :class:`pipeline.finetune.ensemble_sac.EnsembleSAC` ``update()`` for all N.

Both take their batches from memory (replay sampling excluded: it is the same numpy gather either way).
Figures are agent-updates per second (N x ensemble updates / s), the ratio batched / separate, and the
projected update time of the study profile (27 runs x 100k frames / action repeat 8 x updates_per_step).

    python bench/bench_ensemble.py                      # evaluate.agent's defaults, 1 thread (a pool worker's)
    python bench/bench_ensemble.py --threads 2 --obs-dim 5
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.config import load_params  # noqa: E402
from pipeline.finetune.ensemble_sac import EnsembleSAC  # noqa: E402
from pipeline.finetune.sac import SAC, IdentityEncoder  # noqa: E402


def fake_batch(rng: np.random.Generator, n: int, batch: int, obs_dim: int, action_dim: int) -> dict[str, np.ndarray]:
    return {
        "obs": rng.normal(size=(n, batch, obs_dim)).astype(np.float32),
        "action": rng.uniform(-1, 1, (n, batch, action_dim)).astype(np.float32),
        "reward": rng.normal(size=(n, batch)).astype(np.float32),
        "discount": np.full((n, batch), 0.99, np.float32),
        "terminated": np.zeros((n, batch), np.float32),
        "next_obs": rng.normal(size=(n, batch, obs_dim)).astype(np.float32),
    }


def best_rate(run, updates: int, repeats: int) -> float:
    """Most calls of ``run`` per second over ``repeats`` timings of ``updates`` calls (after one warm-up)."""
    run()
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(updates):
            run()
        best = max(best, updates / (time.perf_counter() - start))
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--obs-dim", type=int, default=64, help="64: the frozen arm's features; 5: cartpole state")
    parser.add_argument("--action-dim", type=int, default=1)
    parser.add_argument("--agents", default="1,3,9")
    parser.add_argument("--updates", type=int, default=100, help="timed updates per measurement")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params(args.params).evaluate
    agent, cpu = params.agent, torch.device("cpu")
    rng = np.random.default_rng(0)
    print(
        f"vector SAC updates: obs {args.obs_dim}, action {args.action_dim}, batch {agent.batch_size}, "
        f"width {agent.hidden_dim} x {agent.hidden_depth}, torch threads {args.threads}"
    )
    print(f"{'N':>3} {'separate upd/s':>15} {'batched upd/s':>14} {'ratio':>6}   (agent-updates per second)")
    frames = 100_000 // 8 * agent.updates_per_step  # one 100k-frame run at action repeat 8
    for n in (int(x) for x in args.agents.split(",")):
        batch = fake_batch(rng, n, agent.batch_size, args.obs_dim, args.action_dim)
        singles = [{k: v[i] for k, v in batch.items()} for i in range(n)]
        agents = []
        for i in range(n):
            torch.manual_seed(i)
            agents.append(SAC(IdentityEncoder(args.obs_dim), args.action_dim, agent, cpu, train_encoder=False))
        ensemble = EnsembleSAC(args.obs_dim, args.action_dim, agent, cpu, seeds=range(n))

        def separate(agents=agents, singles=singles) -> None:
            for a, b in zip(agents, singles, strict=True):
                a.update(b)

        sep = n * best_rate(separate, max(1, args.updates // n), args.repeats)
        bat = n * best_rate(lambda ensemble=ensemble, batch=batch: ensemble.update(batch), args.updates, args.repeats)
        print(f"{n:>3} {sep:>15.0f} {bat:>14.0f} {bat / sep:>6.2f}")
        if n == max(int(x) for x in args.agents.split(",")):
            runs = 27
            print(
                f"study profile's updates ({runs} runs x {frames} updates): separate {runs * frames / sep / 60:.1f} "
                f"min, batched by {n} {runs * frames / bat / 60:.1f} min (at {args.threads} torch thread(s))"
            )


if __name__ == "__main__":
    main()
