"""Optical flow of every consecutive frame pair of one task's episodes.

Reads <episodes>/episode_*.npz (the collect stage's files) and writes, per episode,
<out>/episode_<i:06d>.npz with `flow` (T, 2, H, W) float16 - forward flow from
frame t to t+1 in pixels, channel 0 = dx (right), channel 1 = dy (down) - and
`valid` (T, H, W) bool, plus a few colour-wheel previews in <out>/previews/.
The metrics file holds the end-point error of the chosen backend against the
exact simulator flow (where the episodes hold depth and segmentation) and the
photometric error of warping frame t+1 back onto frame t.

Backends (flow.backend): simulator (exact, no weights; needs collect.depth and
collect.segmentation), dis (OpenCV, no weights), ptlflow (flow.model, e.g. raft_small,
with flow.weights through the weights policy).
"""

from __future__ import annotations

import argparse

from pipeline.config import Params

HELP = "optical flow (simulator / DIS / RAFT via ptlflow) for one task's episodes"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", required=True, help="task folder of episode files (data/episodes/<task>)")
    parser.add_argument("--out", required=True, help="output folder (data/flow/<task>)")
    parser.add_argument("--metrics", required=True, help="metrics JSON to write (data/metrics/flow/<task>.json)")


def run(args: argparse.Namespace, params: Params) -> None:
    from pipeline.flow.run import run as run_flow

    summary = run_flow(args.episodes, args.out, params.flow, params.weights)
    summary.write_metrics(args.metrics)
    print(summary.line())
