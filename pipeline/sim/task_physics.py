"""Each task's MuJoCo model, compiled once per process without a renderer.

The annotate stage restores recorded states into it (:mod:`pipeline.annotate.simulator`), and the
probes' joint-state target reads its joints (:mod:`pipeline.sim.joint_state`). Compiling a model costs
about as much as restoring 150 frames, so a process compiles each task once; the annotate stage
starts that compile on a background thread (:func:`prefetch_task_physics`) while it loads its
first episode.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

log = logging.getLogger(__name__)

#: (task, suite) -> (the environment that owns the model, MjModel), as a future: each model is
#: compiled once per process, by the first caller (or :func:`prefetch_task_physics`'s thread), and
#: every other caller waits for that one.
_MODELS: dict[tuple[str, str], Future[tuple[Any, Any]]] = {}
_MODELS_LOCK = threading.Lock()


def _compile_task(task: str, suite: str) -> tuple[Any, Any]:
    """(the environment that owns it, MjModel) of ``task`` in ``suite``, built without a renderer."""
    if suite == "dm_control":
        from dm_control import suite as dm_suite

        logging.getLogger("absl").setLevel(logging.ERROR)  # the XML compiler warns at every load
        domain, _, name = task.partition("-")
        env = dm_suite.load(domain, name, task_kwargs={"time_limit": float("inf")})
        return env, env.physics.model.ptr
    import gymnasium as gym

    wrapped = gym.make(task, disable_env_checker=True)
    return wrapped, wrapped.unwrapped.model


def _task_model(task: str, suite: str) -> Any:
    """The shared MjModel of ``task``: compiled here, or by the caller already compiling it (then waited for)."""
    key = (task, suite)
    with _MODELS_LOCK:
        future, owner = _MODELS.get(key), False
        if future is None:
            future, owner = _MODELS.setdefault(key, Future()), True
    if owner:
        try:
            future.set_result(_compile_task(task, suite))
        except BaseException as exc:
            with _MODELS_LOCK:
                del _MODELS[key]  # a later call tries again and raises its own error
            future.set_exception(exc)
            raise
    return future.result()[1]


def prefetch_task_physics(task: str, suite: str = "") -> None:
    """Start compiling ``task``'s model on a background thread, so that :func:`load_task_physics`
    finds it ready (or waits for it) instead of compiling it there.

    MuJoCo's compiler releases the GIL, so the caller's work runs meanwhile (the annotate stage
    loads its first episodes and their scene truth). An error is not raised here: the next
    :func:`load_task_physics` compiles again and raises it.
    """

    def compile_quietly() -> None:
        try:
            load_task_physics(task, suite)
        except Exception as exc:  # noqa: BLE001 - raised again by the caller's own load_task_physics
            log.debug("prefetching %s's model failed: %s", task, exc)

    threading.Thread(target=compile_quietly, name=f"compile-{task}", daemon=True).start()


def load_task_physics(task: str, suite: str = "") -> tuple[Any, Any, Callable[[], None]]:
    """``(MjModel, MjData, close)`` of ``task``, the model the collect stage simulates, without a renderer.

    Built the way :mod:`pipeline.collect.envs` builds the task (dm_control: ``suite.load``;
    gymnasium: ``gym.make(...).unwrapped``) but with no OpenGL context, which would cost
    more than annotating a whole task (about 1 s on the 2-core CPU machine). ``suite``
    (an episode's ``meta.suite``) saves looking the task up in both suites' registries.

    The model is compiled once per process and shared (compiling it costs about as much as
    restoring 150 frames; the annotate stage needs it twice, for the physics and for its text
    probe's joints); callers must not change it. Each call gets its own ``MjData``; ``close``
    releases nothing (kept for callers that own what they open).

    Raises:
        UnknownTaskError: ``task`` is not a task name of either suite.
    """
    import mujoco

    if suite not in ("dm_control", "gymnasium"):
        from pipeline.collect.envs import resolve_task

        suite = resolve_task(task)
    model = _task_model(task, suite)
    return model, mujoco.MjData(model), lambda: None


def clear_model_cache() -> None:
    """Forget the compiled models (benchmarks timing a cold stage run, as a fresh process has);
    waits for any being compiled."""
    with _MODELS_LOCK:
        futures = list(_MODELS.values())
        _MODELS.clear()
    for future in futures:
        if future.exception() is None:
            future.result()[0].close()
