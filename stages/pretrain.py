"""Pretrain the dual-path semantic-motion backbone on the encode stage's WebDataset shards.

Reads <dataset>/train and <dataset>/validation shards, stacks pretrain.frame_stack frames at read
time, and trains the backbone (semantic path aligned to CLIP image/text embeddings, motion path
decoding optical flow, reward head on the fused features). Writes <out>/backbone (what the
finetune stage loads), <out>/model (backbone + heads), the metrics JSON (final loss per term,
linear-probe R^2 of the pretrained and of the random-weights backbone) and loss curves (CSV).

Scale out with torchrun (the same command on one process or many):
  torchrun --nproc_per_node 2 -m pipeline.cli pretrain --dataset ... (or set pretrain.nproc)
"""

from __future__ import annotations

import argparse
import logging
import subprocess
import sys

from pipeline.config import Params

HELP = "pretrain the dual-path backbone (CLIP, flow and reward targets)"

log = logging.getLogger(__name__)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--dataset",
        required=True,
        help=(
            "the encode stage's output folder (train/ and validation/ shards), "
            "or a Hub dataset id (user/name) published with `semore push`"
        ),
    )
    parser.add_argument("--out", required=True, help="output folder: backbone/ and model/ checkpoints")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    parser.add_argument("--plots", required=True, help="folder for the loss curves (CSV)")


def _relaunch(args: argparse.Namespace, nproc: int) -> None:
    """Run this same command under torchrun with ``nproc`` processes."""
    from pipeline.common.errors import UserError

    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        f"--nproc_per_node={nproc}",
        "-m",
        "pipeline.cli",
        "--params",
        args.params,
        "--log-level",
        args.log_level,
        "pretrain",
        "--dataset",
        args.dataset,
        "--out",
        args.out,
        "--metrics",
        args.metrics,
        "--plots",
        args.plots,
    ]
    log.info("pretrain.nproc = %d: relaunching under torchrun", nproc)
    rc = subprocess.run(cmd, check=False).returncode
    if rc != 0:
        raise UserError(f"the {nproc} torchrun pretrain processes failed (exit status {rc}); see their log above")


def run(args: argparse.Namespace, params: Params) -> None:
    from pipeline.common.io import check_replaceable
    from pipeline.dataset.hub import resolve_dataset
    from pipeline.pretrain.run import run as pretrain
    from pipeline.pretrain.trainer import launched_by_torchrun

    check_replaceable(args.out, "pretrain")  # before a download or a relaunch: never a user's folder
    if params.pretrain.nproc > 1 and not launched_by_torchrun():
        _relaunch(args, params.pretrain.nproc)
        return
    print(
        pretrain(
            resolve_dataset(args.dataset), args.out, params.pretrain, metrics=args.metrics, plots=args.plots
        ).line()
    )
