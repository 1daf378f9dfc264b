"""One run of the evaluate stage's ``state`` arm (SAC on the observation vector), printed as JSON.

The agent sanity check quoted in the evaluate issue's note: cartpole-swingup at 100k frames,
seeds 0/1/2, reached 867.4 / 868.5 / 860.2 (SAC-state in DrQ's Table 1: 812 +- 45). Uses the same
:class:`pipeline.evaluate.workspace.VectorWorkspace` and default ``evaluate.agent`` params as the
stage, with the study profile's schedule (4k seed frames; 10 evaluation episodes every 10k
frames); the seed is passed as given rather than derived from ``evaluate.seed``. (The quoted runs
predate batched evaluation, which plays the same evaluation episodes in lockstep.)

Several comma-separated seeds train as one lockstepped batched group
(:class:`pipeline.evaluate.group.GroupWorkspace`, ``evaluate.group_by: task``), one JSON line per seed.

    .venv/bin/python bench/run_state_arm.py cartpole-swingup 100000 0 [threads]
    .venv/bin/python bench/run_state_arm.py cartpole-swingup 100000 0,1,2      # batched
"""

from __future__ import annotations

import json
import logging
import sys
import time

import torch

from pipeline.common.rendering import setup_headless_rendering


def main() -> None:
    setup_headless_rendering()
    from pipeline.collect import make_env
    from pipeline.config.evaluate import AgentParams
    from pipeline.evaluate.group import GroupWorkspace, Member
    from pipeline.evaluate.workspace import Schedule, StateObserver, VectorWorkspace
    from pipeline.sim.benchmark import action_repeat_for

    logging.basicConfig(level=logging.WARNING)
    task, frames, seeds = sys.argv[1], int(sys.argv[2]), [int(x) for x in sys.argv[3].split(",")]
    torch.set_num_threads(int(sys.argv[4]) if len(sys.argv) > 4 else 1)
    repeat = action_repeat_for(task)

    def build(s: int):
        return make_env(task, image_size=84, action_repeat=repeat, episode_steps=1000 // repeat, seed=s)

    probe = build(0)
    probe.reset()
    dim = probe.state_observation()[0].size
    probe.close()
    long_run = frames >= 20_000
    schedule = Schedule(
        frames, 4000 if long_run else 1000, 10_000 if long_run else 1000, 10 if long_run else 2, 1000, repeat
    )
    cpu = torch.device("cpu")
    if len(seeds) == 1:
        workspace = VectorWorkspace(task, build, lambda: StateObserver(dim), AgentParams(), schedule, seeds[0], cpu)
    else:
        members = [Member(s, lambda: StateObserver(dim), f"state seed {s}") for s in seeds]
        workspace = GroupWorkspace(task, build, members, AgentParams(), schedule, cpu)
    start = time.time()
    try:
        results = workspace.train()
    finally:
        workspace.close()
    wall = round(time.time() - start, 1)
    for seed, result in zip(seeds, results if isinstance(results, list) else [results], strict=True):
        curve = [(c["frames"], round(c["return_mean"], 1)) for c in result.curve]
        line = {"task": task, "seed": seed, "final": result.final_return, "curve": curve, "wall_s": wall}
        print(json.dumps({**line, "grouped": len(seeds), **result.speed()}))


if __name__ == "__main__":
    main()
