"""Encode every frame into WebDataset shards with CLIP targets, a dataset card and statistics.

Reads one subfolder per task from --episodes (collect), --flow (flow) and
--annotations (annotate); writes --out: train/shard-<n>.tar and
validation/shard-<n>.tar (one sample per frame: rgb.png, flow.png (KITTI flow
PNG with the validity mask), clip.npy (image + caption + key-object CLIP
embeddings), json), README.md (the dataset card, Hub-ready) and stats.json
(per-field statistics, shard list with SHA-256, provenance). Inputs are checked
first (flow and annotations must name the episode file they were made from).
Params: the `encode` and `weights` sections of params.yaml.
"""

from __future__ import annotations

import argparse

from pipeline.config import Params

HELP = "CLIP targets + WebDataset shards, dataset card and stats (-> data/dataset)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--episodes", default="data/episodes", help="collect output, one folder per task (default: %(default)s)"
    )
    parser.add_argument("--flow", default="data/flow", help="flow output, one folder per task (default: %(default)s)")
    parser.add_argument(
        "--annotations", default="data/annotations", help="annotate output, one folder per task (default: %(default)s)"
    )
    parser.add_argument("--out", default="data/dataset", help="dataset folder to write (default: %(default)s)")


def run(args: argparse.Namespace, params: Params) -> None:
    from pipeline.encode.run import run as encode

    summary = encode(args.episodes, args.flow, args.annotations, args.out, params.encode, params.weights)
    print(summary.line())
