"""The benchmark convention every stage follows: action repeat per task and how frames count.

One definition, read by collect (the frame gap of the pretraining data), finetune (the online
agent) and evaluate (every table): a backbone pretrained on one frame gap and used on another
sees motion it never learned. This module imports nothing from the stages, so any of them may
import it.

Frames are environment frames *after* action repeat: one agent step with action repeat R is R
frames, so "100k frames" on cartpole (R = 8) is 12,500 agent steps and 12,500 SAC updates at one
update per step. This is how PlaNet, CURL, DrQ and DrQ-v2 count them.

Action repeats follow the PlaNet benchmark as used by DrQ and CURL (DrQ-v2 uses 2 everywhere).
"""

from __future__ import annotations

from collections.abc import Mapping

#: PlaNet/DrQ action repeat by dm_control domain; tasks of other domains (and gymnasium ids) use
#: :data:`DEFAULT_ACTION_REPEAT`.
BENCHMARK_ACTION_REPEAT: dict[str, int] = {
    "cartpole": 8,
    "reacher": 4,
    "cheetah": 4,
    "ball_in_cup": 4,
    "finger": 2,
    "walker": 2,
}
#: The repeat of every task outside the table: 2, the PlaNet benchmark's smallest and DrQ-v2's
#: value everywhere.
DEFAULT_ACTION_REPEAT = 2

#: Published returns at 100k environment frames (mean; DrQ Table 1, arXiv 2004.13649). SAC-state
#: there runs without action repeat; DrQ is from pixels, from scratch, with augmentation.
PUBLISHED_100K: dict[str, dict[str, float]] = {
    "cartpole-swingup": {"SAC-state": 812.0, "DrQ": 759.0, "CURL": 582.0},
    "reacher-easy": {"SAC-state": 919.0, "DrQ": 601.0, "CURL": 538.0},
    "finger-spin": {"SAC-state": 672.0, "DrQ": 901.0, "CURL": 767.0},
    "walker-walk": {"SAC-state": 604.0, "DrQ": 612.0, "CURL": 403.0},
    "cheetah-run": {"SAC-state": 228.0, "DrQ": 344.0, "CURL": 299.0},
    "ball_in_cup-catch": {"SAC-state": 957.0, "DrQ": 913.0, "CURL": 769.0},
}

FRAME_COUNTING = (
    "frames = environment frames after action repeat (agent steps x action repeat), as PlaNet/DrQ count them"
)


def action_repeat_for(task: str, overrides: Mapping[str, int] | None = None) -> int:
    """The action repeat (simulator steps per agent step) of ``task``: ``overrides[task]`` when
    given, else the benchmark's value for its dm_control domain (the part of the name before the
    first ``-``), else :data:`DEFAULT_ACTION_REPEAT`."""
    if overrides and task in overrides:
        return int(overrides[task])
    domain = task.split("-", 1)[0]
    return BENCHMARK_ACTION_REPEAT.get(domain, DEFAULT_ACTION_REPEAT)
