"""Benchmark of the evaluate stage's RL arms, each figure beside its bare baseline in the same run.

1. SAC updates/s of the frozen arm (64-d features) against the state arm (the task's observation
   vector), same batch and width: both are MLP updates, so the ratio should be ~1.
2. Acting frames/s of the frozen arm (env step + render + one backbone forward per agent step)
   and of the state arm, against a bare env step + render loop with random actions.
3. The wall time of one frozen run of ``--frames`` frames (default 100k) on this machine, run for
   real (``--run``) or projected from 1 and 2 (default): frames/action_repeat agent steps of
   acting, one update per step after the seed frames, evaluations every 10k frames.

    .venv/bin/python bench/bench_evaluate.py --backbone data/pretrain [--task cartpole-swingup] [--run]
"""

from __future__ import annotations

import argparse
import time
from functools import partial

import numpy as np
import torch

from pipeline.common.rendering import setup_headless_rendering


def bare_env_fps(make_env, steps: int) -> float:
    """Frames/s (after action repeat) of random actions through a bare step + render loop."""
    env = make_env(0)
    rng = np.random.default_rng(0)
    try:
        result = env.reset(seed=0)
        start = time.perf_counter()
        for _ in range(steps):
            if result.done:
                result = env.reset()
            result = env.step(rng.uniform(env.action_low, env.action_high).astype(np.float32))
        return steps * env.action_repeat / (time.perf_counter() - start)
    finally:
        env.close()


def updates_per_s(agent, replay, batch: int, n: int) -> float:
    for _ in range(3):
        agent.update(replay.sample(batch))
    start = time.perf_counter()
    for _ in range(n):
        agent.update(replay.sample(batch))
    return n / (time.perf_counter() - start)


def acting_fps(workspace, steps: int) -> float:
    """Frames/s of the workspace's acting loop (observer + policy + env), no updates."""
    env, observer = workspace.env, workspace.observer
    result = env.reset(seed=1)
    obs = observer.encode([observer.reset(env, result)])[0]
    start = time.perf_counter()
    for _ in range(steps):
        if result.done:
            result = env.reset()
            obs = observer.encode([observer.reset(env, result)])[0]
        result = env.step(workspace.agent.act(obs, sample=True))
        obs = observer.encode([observer.step(env, result)])[0]
    return steps * env.action_repeat / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", required=True, help="pretrain output folder or backbone checkpoint")
    parser.add_argument("--task", default="cartpole-swingup")
    parser.add_argument("--frames", type=int, default=100_000)
    parser.add_argument("--updates", type=int, default=100, help="updates timed per arm")
    parser.add_argument("--steps", type=int, default=300, help="agent steps timed per acting loop")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--run", action="store_true", help="also run one frozen run of --frames for real and time it")
    args = parser.parse_args()
    setup_headless_rendering()
    torch.set_num_threads(args.threads)

    from pipeline.collect import make_env
    from pipeline.config.evaluate import AgentParams, EvaluateParams
    from pipeline.evaluate.backbones import load_one
    from pipeline.evaluate.workspace import FeatureObserver, Schedule, StateObserver, VectorWorkspace
    from pipeline.sim.benchmark import action_repeat_for

    repeat = action_repeat_for(args.task)
    backbone = load_one("pretrained", args.backbone, seed=0, device=torch.device("cpu"))
    mk = partial(
        lambda s, size: make_env(
            args.task, image_size=size, action_repeat=repeat, episode_steps=1000 // repeat, seed=s
        ),
        size=backbone.spec.image_size,
    )
    probe_env = mk(0)
    probe_env.reset(seed=0)
    state_dim = probe_env.state_observation()[0].size
    probe_env.close()
    agent = AgentParams()
    section = EvaluateParams(frames=args.frames, seed_frames=4000, eval_every_frames=10_000, eval_episodes=10)
    schedule = Schedule(
        section.frames, section.seed_frames, section.eval_every_frames, section.eval_episodes, 1000, repeat
    )

    spaces = {"state": partial(StateObserver, state_dim), "frozen": partial(FeatureObserver, backbone)}
    figures = {}
    for arm, observer in spaces.items():
        ws = VectorWorkspace(args.task, mk, observer, agent, schedule, 0, torch.device("cpu"))
        try:
            rng = np.random.default_rng(0)
            for _ in range(max(agent.batch_size, 1024)):
                ws.replay.add(
                    rng.standard_normal(ws.observer.dim),
                    rng.uniform(-1, 1, ws.action_dim),
                    0.0,
                    False,
                    rng.standard_normal(ws.observer.dim),
                )
            figures[arm] = {
                "updates_per_s": updates_per_s(ws.agent, ws.replay, agent.batch_size, args.updates),
                "acting_fps": acting_fps(ws, args.steps),
            }
            start = time.perf_counter()
            ws.evaluate()  # eval_episodes full episodes in lockstep
            figures[arm]["eval_s"] = time.perf_counter() - start
        finally:
            ws.close()
    bare = bare_env_fps(mk, args.steps)
    print(
        f"{args.task}, action repeat {repeat}, batch {agent.batch_size}, hidden {agent.hidden_dim}, "
        f"torch threads {torch.get_num_threads()}, backbone {backbone.spec.folder}"
    )
    print(
        f"updates/s: frozen {figures['frozen']['updates_per_s']:.1f} vs state {figures['state']['updates_per_s']:.1f} "
        f"(ratio {figures['frozen']['updates_per_s'] / figures['state']['updates_per_s']:.2f})"
    )
    for arm in ("state", "frozen"):
        print(
            f"acting frames/s: {arm} {figures[arm]['acting_fps']:.1f} vs bare env step + render {bare:.1f} "
            f"(ratio {figures[arm]['acting_fps'] / bare:.2f})"
        )
    steps = args.frames // repeat
    updates = steps - section.seed_frames // repeat
    evals = args.frames // section.eval_every_frames + 1
    for arm in ("state", "frozen"):
        print(f"one evaluation ({section.eval_episodes} episodes in lockstep): {arm} {figures[arm]['eval_s']:.1f} s")
    projected = (
        steps * repeat / figures["frozen"]["acting_fps"]
        + updates / figures["frozen"]["updates_per_s"]
        + evals * figures["frozen"]["eval_s"]
    )
    print(
        f"projected wall time of one {args.frames}-frame frozen run: {projected / 60:.1f} min "
        f"({steps} acting steps, {updates} updates, {evals} evaluations)"
    )
    if args.run:
        ws = VectorWorkspace(args.task, mk, spaces["frozen"], agent, schedule, 0, torch.device("cpu"))
        start = time.perf_counter()
        try:
            result = ws.train()
        finally:
            ws.close()
        print(
            f"measured wall time of one {args.frames}-frame frozen run: {(time.perf_counter() - start) / 60:.1f} min, "
            f"final return {result.final_return:.1f}"
        )


if __name__ == "__main__":
    main()
