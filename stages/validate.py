"""Validate params.yaml and print the effective params of every section (defaults filled in).

Every stage validates the whole file before it starts; this command does only
that, for checking an edit or a `dvc exp run -S` override before a long run.
"""

from __future__ import annotations

import argparse

import yaml

from pipeline.config import Params

HELP = "validate params.yaml and print the effective params"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--section", default=None, help="print only this section (e.g. collect)")


def run(args: argparse.Namespace, params: Params) -> None:
    data = params.model_dump(mode="json")
    if args.section is not None:
        if args.section not in data:
            from pipeline.common.errors import UserError

            raise UserError(f"--section {args.section!r}: no such section; sections are {', '.join(data)}")
        data = {args.section: data[args.section]}
    print(yaml.safe_dump(data, sort_keys=False), end="")
