"""Fine-tune the pretrained backbone inside an online SAC agent on a dm_control task (from pixels).

Loads the backbone checkpoint from <backbone>/backbone (the pretrain stage's output), builds the
encoder as finetune.encoder_init says (pretrained: load and fine-tune; scratch: same architecture,
random init; frozen: load, never updated) and trains DrQ-style SAC online: random-shift
augmentation, twin critics with a soft-updated target, learned temperature, the critic's loss
training the encoder. Frames are environment frames after action repeat.

Writes <out>/actor (the deterministic policy, loadable by collect's `checkpoint` policy),
<out>/eval_video.gif, the metrics JSON (final evaluation: mean and spread of returns) and the
learning curves as DVCLive logs (<plots>/metrics.json, <plots>/plots/metrics/{eval,train}/*.tsv,
step = environment frames after action repeat). Resumable checkpoints go to
finetune.checkpoint_dir: rerunning a stopped run (or the same run with more frames) resumes.
"""

from __future__ import annotations

import argparse

from pipeline.config import Params

HELP = "online SAC from pixels with the pretrained (or scratch, or frozen) backbone"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        required=True,
        help="the pretrain stage's output folder (holding backbone/), or a backbone checkpoint folder",
    )
    parser.add_argument("--out", required=True, help="output folder: actor/ checkpoint and eval_video.gif")
    parser.add_argument("--metrics", required=True, help="metrics JSON file to write")
    parser.add_argument("--plots", required=True, help="folder for the learning curves (DVCLive logs, step = frames)")


def run(args: argparse.Namespace, params: Params) -> None:
    from pipeline.finetune.run import run as finetune

    print(finetune(args.backbone, args.out, params.finetune, metrics=args.metrics, plots=args.plots).line())
