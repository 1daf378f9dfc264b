"""Record pixel episodes of one task (dm_control 'domain-task' or a gymnasium MuJoCo id).

Writes OUT/episode_<i:06d>.npz (frames, actions, rewards, termination vs truncation,
qpos/qvel, body poses, camera pose and intrinsics, optional depth and segmentation; schema
in pipeline/sim/episodes.py), OUT/index.json and OUT/preview.gif. Reads the `collect` section of
params.yaml. Finished episode files recorded with the same params are kept on a rerun.
"""

from __future__ import annotations

import argparse

from pipeline.config import Params

HELP = "record pixel episodes of one task with the simulator's truth beside every frame"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", help="task name, e.g. cheetah-run or HalfCheetah-v5 (see --list-tasks)")
    parser.add_argument("--out", help="output folder, e.g. data/episodes/<task>")
    parser.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes (default: collect.workers); outputs do not depend on it",
    )
    parser.add_argument("--list-tasks", action="store_true", help="print every valid task name and exit")


def run(args: argparse.Namespace, params: Params) -> None:
    import logging

    for chatty in ("absl", "OpenGL.acceleratesupport"):  # start-up notices of dm_control / PyOpenGL
        logging.getLogger(chatty).setLevel(logging.WARNING)

    from pipeline.collect import list_tasks
    from pipeline.collect.run import run as collect
    from pipeline.common.errors import UserError

    if args.list_tasks:
        print("\n".join(list_tasks()))
        return
    if not args.task or not args.out:
        raise UserError("semore collect needs --task TASK and --out FOLDER (or --list-tasks)")
    summary = collect(args.task, args.out, params.collect, workers=args.workers)
    print(summary.line())
