"""The benchmark protocol every evaluation table follows: action repeat per task and how frames count.

Frames are environment frames *after* action repeat: one agent step with action repeat R is R
frames, so "100k frames" on cartpole (R = 8) is 12,500 agent steps and 12,500 SAC updates at one
update per step. This is how PlaNet, CURL, DrQ and DrQ-v2 count them; every table header this
stage writes says so.

Action repeats follow the PlaNet benchmark as used by DrQ and CURL (DrQ-v2 uses 2 everywhere).
"""
from __future__ import annotations

from typing import Mapping

#: PlaNet/DrQ action repeat by dm_control domain; tasks of other domains use :data:`DEFAULT_ACTION_REPEAT`.
BENCHMARK_ACTION_REPEAT: dict[str, int] = {
    "cartpole": 8,
    "reacher": 4,
    "cheetah": 4,
    "ball_in_cup": 4,
    "finger": 2,
    "walker": 2,
}
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

FRAME_COUNTING = "frames = environment frames after action repeat (agent steps x action repeat), as PlaNet/DrQ count them"


def action_repeat_for(task: str, overrides: Mapping[str, int] | None = None) -> int:
    """The action repeat of ``task``: an explicit override, else the benchmark's value for its domain."""
    if overrides and task in overrides:
        return int(overrides[task])
    domain = task.split("-", 1)[0]
    return BENCHMARK_ACTION_REPEAT.get(domain, DEFAULT_ACTION_REPEAT)
