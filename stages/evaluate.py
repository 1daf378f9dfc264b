"""Evaluate a backbone: does it help control? Held-out probe and SAC arms, with seeds and CIs.

Collects its own held-out episodes (never seen by pretraining), probes every backbone's frozen
features for the task's observation vector (ridge, k-fold by episode, paired bootstrap CIs of
pretrained minus each random initialisation), then trains SAC on the observation vector (the
`state` arm: the agent's sanity check) and on each backbone's frozen features (the `frozen` arms),
`evaluate.seeds` runs per task, and aggregates final returns across tasks x seeds with rliable
(IQM, 95% stratified-bootstrap CIs). Frames are environment frames after action repeat
(PlaNet/DrQ benchmark action repeats per task).

Writes <out>/report.md (tables), results.json, plots/ (learning curves with CI bands, probe bars)
and dvclive/ (metrics and curves for dvc metrics/plots/exp), and the metrics JSON (headline figures).
"""

from __future__ import annotations

import argparse

from pipeline.config import Params

HELP = "probe and SAC arms on held-out episodes: does the pretrained backbone help control?"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--backbone",
        required=True,
        help="the pretrain stage's output folder (holding backbone/), or a backbone checkpoint folder",
    )
    parser.add_argument("--out", required=True, help="output folder (data/evaluation)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file (data/metrics/evaluate.json)")


def run(args: argparse.Namespace, params: Params) -> None:
    from pipeline.evaluate.run import run as evaluate

    summary = evaluate(args.backbone, args.out, params.evaluate, finetune=params.finetune)
    summary.write_metrics(args.metrics)
    print(summary.line())
