"""Environment backends by task name, behind one small interface (:class:`PixelEnv`).

A backend is a module with ``SUITE`` (its name), ``task_names() -> list[str]`` and an env
class; adding one is one module and one line in :data:`BACKENDS`. Task names are unique
across backends: dm_control suite tasks are ``domain-task`` (``cheetah-run``), gymnasium
MuJoCo environments are their ids (``HalfCheetah-v5``).
"""

from __future__ import annotations

import difflib
import functools
import importlib
from types import ModuleType

from pipeline.collect.envs.base import PixelEnv, StepResult
from pipeline.collect.errors import UnknownTaskError
from pipeline.common.registry import Registry
from pipeline.common.rendering import setup_headless_rendering

__all__ = ["BACKENDS", "PixelEnv", "StepResult", "list_tasks", "make_env", "resolve_task"]

#: suite name -> env class (its module also has ``task_names()``), imported lazily.
BACKENDS: Registry[type[PixelEnv]] = Registry(
    "environment suite",
    {
        "dm_control": "pipeline.collect.envs.dm_control_suite:DmControlEnv",
        "gymnasium": "pipeline.collect.envs.gymnasium_mujoco:GymnasiumEnv",
    },
)


def _backend(suite: str) -> ModuleType:
    """The backend module of ``suite``, imported after headless rendering is set up (the backends
    import mujoco, which reads ``MUJOCO_GL`` once, at import)."""
    setup_headless_rendering()
    return importlib.import_module(BACKENDS.path(suite).partition(":")[0])


@functools.cache
def _suite_tasks(suite: str) -> frozenset[str]:
    return frozenset(_backend(suite).task_names())


def list_tasks() -> list[str]:
    """Every valid task name (all backends), sorted case-insensitively."""
    return sorted((t for suite in BACKENDS for t in _suite_tasks(suite)), key=str.lower)


def resolve_task(task: str) -> str:
    """The backend (suite name) that runs ``task``.

    Raises:
        UnknownTaskError: no backend knows ``task``; the message names close matches first,
            then every valid task.
    """
    # gymnasium's registry is cheaper to load than dm_control's suite: look there first.
    for suite in sorted(BACKENDS, key=lambda s: s != "gymnasium"):
        if task in _suite_tasks(suite):
            return suite
    valid = list_tasks()
    by_lower = {v.lower(): v for v in valid}  # matching ignores case: halfcheetah-v5 -> HalfCheetah-v5
    close = [by_lower[c] for c in difflib.get_close_matches(task.lower(), list(by_lower), n=3, cutoff=0.6)]
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise UnknownTaskError(
        f"unknown task {task!r}.{hint}\n"
        "  Valid tasks: dm_control suite 'domain-task' names and gymnasium MuJoCo ids:\n  " + ", ".join(valid)
    )


def make_env(
    task: str,
    *,
    image_size: int = 84,
    camera: int | str = 0,
    action_repeat: int = 1,
    render_mode: str = "fast",
    depth: bool = False,
    segmentation: bool = False,
    episode_steps: int = 1000,
    seed: int = 0,
) -> PixelEnv:
    """Build a pixel environment for ``task`` (a dm_control ``domain-task`` or a gymnasium MuJoCo id).

    Args:
        task: task name; :func:`list_tasks` gives the valid ones.
        image_size: frames are ``image_size`` x ``image_size`` RGB.
        camera: model camera id or name; -1 is the free camera (gymnasium: its default view;
            camera 0 of a gymnasium model without cameras means that view too).
        action_repeat: backend steps per agent step (rewards summed, last state rendered).
        render_mode: ``fast`` (no shadows, reflections, skybox) or ``faithful``; see
            :mod:`pipeline.collect.render`.
        depth, segmentation: also render z-depth (m) / per-pixel geom ids (extra passes).
        episode_steps: agent steps after which ``step`` reports ``truncated``.
        seed: seed of the first ``reset()`` called without one.

    Returns:
        A :class:`PixelEnv`: ``action_low`` / ``action_high`` (A,) float32, ``reset(seed=None)``
        and ``step(action)`` returning :class:`StepResult`, ``close()`` (always call it).

    Raises:
        UnknownTaskError: ``task`` is not a valid name. CameraError: no such camera.
    """
    suite = resolve_task(task)
    if render_mode not in ("fast", "faithful"):
        raise ValueError(f"render_mode {render_mode!r}: expected 'fast' or 'faithful'")
    if image_size < 1:
        raise ValueError(f"image_size must be positive, got {image_size}")
    _backend(suite)  # headless rendering first
    env_class = BACKENDS.get(suite)
    return env_class(
        task,
        image_size=image_size,
        camera=camera,
        action_repeat=action_repeat,
        render_mode=render_mode,
        depth=depth,
        segmentation=segmentation,
        episode_steps=episode_steps,
        seed=seed,
    )
