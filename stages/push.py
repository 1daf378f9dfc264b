"""Upload an encoded dataset folder to a Hugging Face Hub dataset repo.

Validates the folder first (every shard listed in stats.json present, intact,
every sample complete), creates the dataset repo if needed, then uploads
README.md, stats.json and the shards with huggingface_hub (a rerun resumes an
interrupted upload; shards left from an earlier, larger push are deleted).
The token comes from HF_TOKEN (or `hf auth login`).
"""

from __future__ import annotations

import argparse

from pipeline.config import Params

HELP = "upload data/dataset to a Hugging Face Hub dataset repo (token from HF_TOKEN)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--dataset", default="data/dataset", help="dataset folder (default: %(default)s)")
    parser.add_argument("--repo-id", required=True, help="Hub dataset repo, <user or org>/<name>")
    parser.add_argument("--private", action="store_true", help="create the repo as private (if it does not exist)")
    parser.add_argument("--revision", default=None, help="branch to commit to (default: main)")
    parser.add_argument("--message", default=None, help="commit message")


def run(args: argparse.Namespace, params: Params) -> None:
    from pipeline.dataset.hub import push_dataset

    url = push_dataset(
        args.dataset,
        args.repo_id,
        private=args.private,
        revision=args.revision,
        commit_message=args.message,
        secret_envs=(params.annotate.api_key_env,),
    )
    print(url or f"pushed {args.dataset} to hf://datasets/{args.repo_id}")
