"""Download a dataset published on the Hugging Face Hub into a local folder.

The folder is downloaded next to --out, validated (every shard present and
intact, every sample complete) and only then renamed onto --out; an
interrupted download resumes on the next run. The result feeds the pretrain
stage exactly like a locally encoded dataset.
"""

from __future__ import annotations

import argparse

from pipeline.config import Params

HELP = "download a Hub dataset repo into a local dataset folder"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repo-id", required=True, help="Hub dataset repo, <user or org>/<name>")
    parser.add_argument("--out", default="data/dataset", help="dataset folder to write (default: %(default)s)")
    parser.add_argument("--revision", default=None, help="branch, tag or commit (default: main)")


def run(args: argparse.Namespace, params: Params) -> None:
    from pipeline.dataset.hub import pull_dataset

    check = pull_dataset(args.repo_id, args.out, revision=args.revision)
    print(f"{check.folder}: " + ", ".join(f"{split}: {n} samples" for split, n in check.samples.items()))
