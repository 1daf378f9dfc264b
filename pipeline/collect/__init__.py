"""The collect stage: pixel episodes from dm_control and gymnasium, with the simulator's truth.

Public API:

* :func:`make_env` / :func:`list_tasks` — pixel environments by task name (also used for online RL).
* :func:`collect_task` — record a task's episodes to ``episode_<i:06d>.npz`` files
  (:mod:`pipeline.sim.episodes` schema), ``index.json`` and ``preview.gif``.
* :mod:`pipeline.collect.run` — the stage's ``run(task, out, section) -> CollectSummary``.
* :mod:`pipeline.collect.envs.wrappers` — the observation (frame stack) and action ([-1, 1])
  conventions shared by collection, online training, evaluation and the dataset readers.

Heavy libraries (mujoco, dm_control, gymnasium, torch) are imported lazily: importing this
package does not import mujoco, and :func:`make_env` sets up headless rendering before it does.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from pipeline.collect.envs import PixelEnv, StepResult, list_tasks, make_env, resolve_task
from pipeline.collect.errors import CameraError, PolicyError, UnknownTaskError

if TYPE_CHECKING:
    from pipeline.collect.collector import collect_task

__all__ = [
    "CameraError",
    "PixelEnv",
    "PolicyError",
    "StepResult",
    "UnknownTaskError",
    "collect_task",
    "list_tasks",
    "make_env",
    "resolve_task",
]


def __getattr__(name: str) -> Any:
    if name == "collect_task":
        from pipeline.collect.collector import collect_task

        return collect_task
    raise AttributeError(name)
