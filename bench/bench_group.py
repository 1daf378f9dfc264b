"""Benchmark (not a test): N frozen-arm runs of one task trained as one lockstepped group against N separate runs.

Runs, in one process and on this machine, the same short schedule three ways and prints wall times:

* bare: a random-action env step + render loop for the frames all N runs act (the floor of acting);
* separate: N :class:`~pipeline.evaluate.workspace.VectorWorkspace` runs one after another (``group_by: run``
  on one core);
* grouped: one :class:`~pipeline.evaluate.group.GroupWorkspace` of the N runs (``group_by: task``).

N runs share the pretrained backbone, as the seeds of one frozen arm do. Acting and update seconds are
split out (the workspaces time them), and the last line projects the study profile's frozen and state
runs (27 x 100k frames) from the grouped figures at 2 workers.

    .venv/bin/python bench/bench_group.py --backbone data/pretrain --agents 3 --frames 3000
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch

from pipeline.common.rendering import setup_headless_rendering


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--backbone", default="data/pretrain")
    parser.add_argument("--task", default="cartpole-swingup")
    parser.add_argument("--action-repeat", type=int, default=8)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--frames", type=int, default=3000, help="frames per run (after action repeat)")
    parser.add_argument("--seed-frames", type=int, default=1000)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a pool worker has 1)")
    args = parser.parse_args()
    setup_headless_rendering()
    torch.set_num_threads(args.threads)

    from pipeline.collect import make_env
    from pipeline.config.evaluate import EvaluateParams
    from pipeline.evaluate.backbones import load_one
    from pipeline.evaluate.group import GroupWorkspace, Member
    from pipeline.evaluate.workspace import FeatureObserver, Schedule, VectorWorkspace

    cpu = torch.device("cpu")
    backbone = load_one("pretrained", args.backbone, seed=0, device=cpu)
    size, ar = backbone.spec.image_size, args.action_repeat
    make = partial(
        lambda seed: make_env(args.task, image_size=size, action_repeat=ar, episode_steps=1000 // ar, seed=seed)
    )
    agent = EvaluateParams().agent
    schedule = Schedule(args.frames, args.seed_frames, args.frames, 1, 1000, ar)  # evaluations at 0 and the end
    observer = partial(FeatureObserver, backbone)
    n, steps = args.agents, args.frames // ar

    env, rng = make(0), np.random.default_rng(0)
    start = time.perf_counter()
    result = env.reset(seed=0)
    for _ in range(n * steps):
        result = env.reset() if result.done else env.step(rng.uniform(-1, 1, env.action_dim).astype(np.float32))
    bare_s = time.perf_counter() - start
    env.close()

    def timed(workspace) -> tuple[float, float, float]:
        start = time.perf_counter()
        try:
            results = workspace.train()
        finally:
            workspace.close()
        results = results if isinstance(results, list) else [results]
        return time.perf_counter() - start, sum(r.act_s for r in results), sum(r.update_s for r in results)

    separate = [timed(VectorWorkspace(args.task, make, observer, agent, schedule, s, cpu)) for s in range(n)]
    sep_wall, sep_act, sep_upd = (sum(x) for x in zip(*separate, strict=True))
    members = [Member(s, observer, f"frozen seed {s}") for s in range(n)]
    grp_wall, grp_act, grp_upd = timed(GroupWorkspace(args.task, make, members, agent, schedule, cpu))

    print(
        f"{args.task}, {n} frozen runs x {args.frames} frames (action repeat {ar}, {size}px, seed frames "
        f"{args.seed_frames}), batch {agent.batch_size}, width {agent.hidden_dim}, torch threads {args.threads}"
    )
    print(f"{'':10} {'wall s':>8} {'acting s':>9} {'update s':>9}")
    print(f"{'bare env':10} {bare_s:>8.1f} {bare_s:>9.1f} {'-':>9}   (step + render, random actions)")
    print(f"{'separate':10} {sep_wall:>8.1f} {sep_act:>9.1f} {sep_upd:>9.1f}")
    print(
        f"{'grouped':10} {grp_wall:>8.1f} {grp_act:>9.1f} {grp_upd:>9.1f}   "
        f"separate / grouped = {sep_wall / grp_wall:.2f}"
    )
    print(
        f"acting frames/s: bare {n * args.frames / bare_s:.0f}, separate {n * args.frames / sep_act:.0f}, "
        f"grouped {n * args.frames / grp_act:.0f}"
    )
    updates = n * max(0, args.frames - args.seed_frames) // ar
    per_frame_act, per_update = grp_act / (n * args.frames), grp_upd / max(1, updates)
    study = 27 * (100_000 * per_frame_act + (100_000 - 4000) / ar * per_update)
    print(f"study profile (27 runs x 100k frames at this task's rates, 2 workers): about {study / 2 / 60:.0f} min wall")


if __name__ == "__main__":
    main()
