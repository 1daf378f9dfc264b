"""Annotate every k-th frame of a task's episodes with the key information a VLM reads from it.

Backends (annotate.backend): 'simulator' (grounded in the recorded physics, no
weights: the offline default), 'transformers' (an in-process image-text-to-text
model) or 'openai' (an OpenAI-compatible server such as vLLM or Ollama). Every
answer is a JSON object {caption, objects: [{name, description, box}], motion},
validated against a schema (boxes inside the frame, no blank caption); invalid
answers are retried, then recorded as failed with the raw text. Answers are cached
by frame content, backend, model and prompt (annotate.cache_dir), so reruns and
interrupted runs query nothing twice; a frame whose answers were invalid is asked
again by later runs, up to annotate.max_invalid_runs runs.

Writes <out>/episode_<i:06d>.json (one record per annotated frame, with the
episode file's name and SHA-256 as "source") and the metrics file (counts,
failures, accuracy against the simulator where the episodes have segmentation).
Exits with status 2, so that DVC records nothing, if frames failed because the
backend was unreachable (rerun to complete them) or if more than
annotate.max_failure_rate of the frames have invalid answers.
"""

from __future__ import annotations

import argparse

from pipeline.config import Params

HELP = "annotate frames with a VLM (or the simulator): captions, key objects, motion"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--episodes", required=True, help="episode folder of one task (data/episodes/<task>)")
    parser.add_argument("--out", required=True, help="output folder (data/annotations/<task>)")
    parser.add_argument("--metrics", required=True, help="metrics JSON file (data/metrics/annotate/<task>.json)")


def run(args: argparse.Namespace, params: Params) -> None:
    from pipeline.annotate.run import run as annotate

    summary = annotate(args.episodes, args.out, params.annotate, params.weights, metrics=args.metrics)
    print(summary.line())
