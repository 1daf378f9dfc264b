"""Benchmark of the collect stage: frames/s of `collect_task` against a bare step-and-render loop.

Both run the same dm_control task with the same image size, render mode, action repeat and
extra passes (depth, segmentation), with the same number of recording processes (the stage:
this process plus ``--workers - 1`` spawned ones; the bare loop: ``--workers`` spawned ones),
timed end to end (process start, imports and env construction included in both). The bare loop
only steps the simulator and renders with raw MuJoCo calls (the same render passes as the
stage): no policy, no truth arrays, no depth/segmentation decoding, no files. The stage figure
includes everything (policy, simulator truth, compressed .npz files, index and preview GIF).

    .venv/bin/python bench/bench_collect.py [--task cheetah-run] [--workers 2] [--episodes 8] [--steps 250]
        [--repeats 2]

It prints wall-clock frames/s (the goal's unit) and frames per CPU-second (all processes
involved, children included), which is robust to other processes loading the machine; each is
the best of ``--repeats`` alternating runs.

Goals: wall ratio >= 0.9 with depth and segmentation (issue 16), and >= 250 frames/s over 2 cores
in fast mode, RGB only (issue 4). On a machine shared with other work, the CPU ratio is the
steadier figure.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import resource
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor


def _bare_worker(
    task: str,
    frames: int,
    image_size: int,
    action_repeat: int,
    render_mode: str,
    depth: bool,
    segmentation: bool,
    seed: int,
) -> int:
    """Step-and-render loop with dm_control and raw MuJoCo rendering calls only; returns frames rendered.

    Same passes as the stage: one RGB pass, plus one id-colour pass read for depth and/or
    segmentation when either is on (no decoding, no copies, nothing kept).
    """
    from pipeline.common.rendering import setup_headless_rendering

    setup_headless_rendering()
    import mujoco
    import numpy as np
    from dm_control import suite

    domain, _, name = task.partition("-")
    env = suite.load(domain, name, task_kwargs={"random": seed, "time_limit": float("inf")})
    model, data = env.physics.model.ptr, env.physics.data.ptr
    gl = mujoco.GLContext(image_size, image_size)
    gl.make_current()
    context = mujoco.MjrContext(model, mujoco.mjtFontScale.mjFONTSCALE_150.value)
    mujoco.mjr_setBuffer(mujoco.mjtFramebuffer.mjFB_OFFSCREEN.value, context)
    scene, option = mujoco.MjvScene(model, maxgeom=10000), mujoco.MjvOption()
    camera = mujoco.MjvCamera()
    camera.type, camera.fixedcamid = mujoco.mjtCamera.mjCAMERA_FIXED, 0
    rect = mujoco.MjrRect(0, 0, image_size, image_size)
    if render_mode == "fast":
        for flag in (
            mujoco.mjtRndFlag.mjRND_SHADOW,
            mujoco.mjtRndFlag.mjRND_REFLECTION,
            mujoco.mjtRndFlag.mjRND_SKYBOX,
        ):
            scene.flags[flag] = 0
    rgb = np.empty((image_size, image_size, 3), np.uint8)
    ids = np.empty((image_size, image_size, 3), np.uint8) if segmentation else None
    z = np.empty((image_size, image_size), np.float32) if depth else None
    spec = env.action_spec()
    rng = np.random.default_rng(seed)
    env.reset()
    for _ in range(frames):
        action = rng.uniform(spec.minimum, spec.maximum)
        for _ in range(action_repeat):
            env.step(action)
        mujoco.mjv_updateScene(model, data, option, None, camera, mujoco.mjtCatBit.mjCAT_ALL.value, scene)
        mujoco.mjr_render(rect, scene, context)
        mujoco.mjr_readPixels(rgb, None, rect, context)
        if depth or segmentation:
            scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 1
            mujoco.mjr_render(rect, scene, context)
            mujoco.mjr_readPixels(ids, z, rect, context)
            scene.flags[mujoco.mjtRndFlag.mjRND_SEGMENT] = scene.flags[mujoco.mjtRndFlag.mjRND_IDCOLOR] = 0
    context.free()
    gl.free()
    env.close()
    return frames


def _cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished, reaped children."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def run_bare(task: str, total_frames: int, workers: int, **kwargs) -> tuple[float, float]:
    """(wall seconds, CPU seconds) of the bare loop on ``workers`` spawned processes, end to end."""
    context = multiprocessing.get_context("spawn")
    shares = [total_frames // workers + (1 if i < total_frames % workers else 0) for i in range(workers)]
    cpu, start = _cpu_seconds(), time.perf_counter()
    with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
        done = sum(
            pool.map(_bare_worker, [task] * workers, shares, *[[v] * workers for v in kwargs.values()], range(workers))
        )
    assert done == total_frames
    return time.perf_counter() - start, _cpu_seconds() - cpu


def run_stage(
    task: str,
    episodes: int,
    steps: int,
    workers: int,
    image_size: int,
    action_repeat: int,
    render_mode: str,
    depth: bool,
    segmentation: bool,
) -> tuple[float, float, int]:
    """(wall seconds, CPU seconds, frames) of ``collect_task``, end to end (files, index, preview)."""
    from pipeline.collect import collect_task
    from pipeline.config.collect import CollectParams

    params = CollectParams(
        tasks=[task],
        episodes_per_task=episodes,
        episode_steps=steps,
        action_repeat={task: action_repeat},
        image_size=image_size,
        render_mode=render_mode,
        depth=depth,
        segmentation=segmentation,
        workers=workers,
        preview_episodes=1,
    )
    with tempfile.TemporaryDirectory() as out:
        cpu, start = _cpu_seconds(), time.perf_counter()
        metas = collect_task(task, params, out)
        wall = time.perf_counter() - start
        cpu = _cpu_seconds() - cpu
    return wall, cpu, sum(m.length + 1 for m in metas)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="cheetah-run")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--episodes", type=int, default=8)
    parser.add_argument("--steps", type=int, default=250)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument("--action-repeat", type=int, default=2)
    parser.add_argument("--render-mode", default="fast", choices=["fast", "faithful"])
    parser.add_argument(
        "--repeats",
        type=int,
        default=2,
        help="alternate stage and bare runs this many times; the best of each is reported",
    )
    parser.add_argument("--configs", default="rgb,rgb+depth+seg", help="comma list of: rgb, rgb+depth+seg")
    args = parser.parse_args()

    print(
        f"collect benchmark: {args.task}, {args.image_size}x{args.image_size}, {args.render_mode} render, "
        f"action repeat {args.action_repeat}, {args.episodes} episodes x {args.steps} steps, {args.workers} workers, "
        f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start"
    )
    print("  wall: frames / end-to-end seconds (process start and env construction included in both);")
    print("  cpu: frames per CPU-second of all processes involved (robust to other load on the machine)")
    for config in args.configs.split(","):
        extra = config == "rgb+depth+seg"
        common = dict(
            image_size=args.image_size,
            action_repeat=args.action_repeat,
            render_mode=args.render_mode,
            depth=extra,
            segmentation=extra,
        )
        stage_wall = stage_cpu = bare_wall = bare_cpu = float("inf")
        for _ in range(args.repeats):
            wall, cpu, frames = run_stage(args.task, args.episodes, args.steps, args.workers, **common)
            stage_wall, stage_cpu = min(stage_wall, wall), min(stage_cpu, cpu)
            wall, cpu = run_bare(args.task, frames, args.workers, **common)
            bare_wall, bare_cpu = min(bare_wall, wall), min(bare_cpu, cpu)
        print(
            f"  {config:14s} wall: stage {frames / stage_wall:6.1f} frames/s | "
            f"bare step+render loop {frames / bare_wall:6.1f} frames/s | ratio {bare_wall / stage_wall:.2f}\n"
            f"  {'':14s} cpu:  stage {frames / stage_cpu:6.1f} frames/s | "
            f"bare step+render loop {frames / bare_cpu:6.1f} frames/s | ratio {bare_cpu / stage_cpu:.2f}  "
            f"({frames} frames)"
        )
    print(f"load average {os.getloadavg()[0]:.1f} at end (other processes share these CPUs)")


if __name__ == "__main__":
    main()
