"""``semore``: one command-line entry point for every pipeline stage.

``semore <stage> --help`` documents each stage; dvc.yaml calls these commands.
Stage modules live in ``stages/`` and expose ``HELP`` (one line),
``add_arguments(parser)`` and ``run(args, params)``. They import heavy
libraries inside ``run`` so that ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from types import ModuleType

from pipeline.common.errors import UserError
from pipeline.common.logs import setup_logging
from pipeline.common.rendering import setup_headless_rendering

log = logging.getLogger("semore")

#: Sub-command name -> stage module. A new stage is one module and one line here.
STAGES: dict[str, str] = {
    "validate": "stages.validate",
    "collect": "stages.collect",
    "annotate": "stages.annotate",
    "flow": "stages.flow",
    "encode": "stages.encode",
    "push": "stages.push",
    "pull": "stages.pull",
    "pretrain": "stages.pretrain",
    "finetune": "stages.finetune",
    "evaluate": "stages.evaluate",
    "headline": "stages.headline",
}


def _stage(name: str) -> ModuleType:
    return importlib.import_module(STAGES[name])


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="semore",
        description=(
            "Semore pipeline: collect, flow, annotate, encode, pretrain, finetune, evaluate. "
            "Params come from params.yaml."
        ),
    )
    parser.add_argument("--params", default="params.yaml", help="params file (default: %(default)s)")
    parser.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="logging level (default: %(default)s)",
    )
    sub = parser.add_subparsers(dest="stage", required=True, metavar="<stage>")
    for name in STAGES:
        module = _stage(name)
        stage_parser = sub.add_parser(
            name, help=module.HELP, description=module.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
        )
        module.add_arguments(stage_parser)
    return parser


def main(argv: list[str] | None = None) -> int:
    setup_headless_rendering()  # before anything imports mujoco
    args = build_parser().parse_args(argv)
    setup_logging(args.log_level)
    from pipeline.config import load_params

    try:
        params = load_params(args.params)
        _stage(args.stage).run(args, params)
    except UserError as exc:
        log.error("%s", exc)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted; finished outputs are kept, nothing half-written was left behind")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
