"""The headline figures of a run: did it work? One small metrics file, one readable table.

Reads the metrics files the flow, annotate (per task in collect.tasks), pretrain and evaluate
stages wrote under --metrics-folder and writes --out (data/metrics/headline.json): flow_epe
(mean end-point error against the exact simulator flow, pixels), annot_acc (fraction of named
objects in view), val_loss (pretrain validation loss), probe_gap (held-out probe R^2 of the
pretrained backbone minus the best random initialisation) and iqm.<arm> (IQM of final returns).
`dvc metrics show data/metrics/headline.json` prints it in one 120-column row; each stage's own
file keeps the per-task values and confidence intervals.
"""

from __future__ import annotations

import argparse

from pipeline.config import Params

HELP = "the run's headline figures (flow EPE, annotation accuracy, validation loss, probe gap, IQMs)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--metrics-folder", required=True, help="the stages' metrics folder (data/metrics)")
    parser.add_argument("--out", required=True, help="headline metrics JSON to write (data/metrics/headline.json)")


def run(args: argparse.Namespace, params: Params) -> None:
    from pipeline.headline.run import run as headline

    summary = headline(args.metrics_folder, args.out, params.collect.tasks)
    summary.write_metrics(args.out)
    print(summary.line())
