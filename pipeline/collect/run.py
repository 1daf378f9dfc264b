"""The collect stage's entry: ``run(task, out, section) -> CollectSummary``."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pipeline.collect.collector import collect_task
from pipeline.common.stage import StageSummary
from pipeline.config.collect import CollectParams


@dataclass(frozen=True)
class CollectSummary(StageSummary):
    """What one collect run wrote.

    Attributes:
        task: the task recorded.
        action_repeat: simulator steps per agent step of its episodes (the benchmark value unless overridden).
        episodes: episode files in the folder (kept from an earlier run or recorded now).
        frames: frames over all its episodes (each episode has length + 1 frames).
        mean_return: mean episode return.
        terminated: episodes that ended at a true terminal (the rest were truncated).
        seconds: wall-clock seconds of this run (in :meth:`line`, not in :meth:`metrics`).
    """

    task: str
    action_repeat: int
    episodes: int
    frames: int
    mean_return: float
    terminated: int
    seconds: float

    def metrics(self) -> dict[str, Any]:
        """The fields without ``seconds`` (a metrics file stays byte-identical across reruns)."""
        return {k: v for k, v in super().metrics().items() if k != "seconds"}

    def line(self) -> str:
        return (
            f"collect {self.task}: {self.episodes} episodes, {self.frames} frames "
            f"at action repeat {self.action_repeat}, mean return {self.mean_return:.2f}, "
            f"{self.terminated} terminated, {self.seconds:.1f} s -> {self.out}"
        )


def run(task: str, out: str | Path, section: CollectParams, *, workers: int | None = None) -> CollectSummary:
    """Record ``section.episodes_per_task`` episodes of ``task`` into ``out``
    (see :func:`pipeline.collect.collector.collect_task`; ``workers`` overrides ``section.workers``).

    Raises:
        UserError: bad task, camera, policy, output folder or too little disk space.
    """
    start = time.perf_counter()
    metas = collect_task(task, section, out, workers=workers)
    return CollectSummary(
        stage="collect",
        out=str(out),
        task=task,
        action_repeat=metas[0].action_repeat,
        episodes=len(metas),
        frames=sum(m.length + 1 for m in metas),
        mean_return=float(sum(m.episode_return for m in metas) / len(metas)),
        terminated=sum(bool(m.terminated) for m in metas),
        seconds=round(time.perf_counter() - start, 3),
    )
