"""``data/metrics/headline.json``: one row of ``dvc metrics show`` that a 120-column terminal shows whole.

Every figure is read from a stage's metrics file (named in :data:`SOURCES`); tasks are averaged
with equal weight. The per-stage files keep the per-task values and the confidence intervals.
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.common.errors import UserError
from pipeline.common.stage import StageSummary

#: Headline key -> (the metrics file under the metrics folder, the key read from it). ``{task}``
#: files are read once per task and averaged.
SOURCES: dict[str, tuple[str, str]] = {
    "flow_epe": ("flow/{task}.json", "epe.mean"),
    "annot_acc": ("annotate/{task}.json", "accuracy.named_in_view_rate"),
    "val_loss": ("pretrain.json", "validation_loss.total"),
    "probe_gap": ("evaluate.json", "probe_gap.<task>.value"),
    "iqm": ("evaluate.json", "final_return.<arm>.iqm"),
}
#: The stage that writes each metrics file, for the error that says which to run.
_WRITER = {"flow": "flow", "annotate": "annotate", "pretrain.json": "pretrain", "evaluate.json": "evaluate"}


class HeadlineError(UserError):
    """A metrics file the headline reads is missing or lacks a key."""


@dataclasses.dataclass(frozen=True)
class HeadlineSummary(StageSummary):
    """The headline figures (``None``: the run measured none, e.g. evaluate ran without a probe arm).

    flow_epe: mean end-point error in pixels of the flow backend against the exact simulator flow.
    annot_acc: fraction of the objects an annotation names that are in view (1.0 = no invented object).
    val_loss: the pretrain stage's final validation loss (sum of its terms).
    probe_gap: held-out probe R^2 of the pretrained backbone minus the best random initialisation.
    iqm: evaluate arm (``state``, ``pretrained``, ``random``, ...) -> IQM of final returns across tasks x seeds.
    """

    flow_epe: float | None
    annot_acc: float | None
    val_loss: float | None
    probe_gap: float | None
    iqm: dict[str, float]

    def metrics(self) -> dict[str, Any]:
        """The figures without the ``None`` ones (``dvc metrics show`` prints ``-`` for a missing key)."""
        return {k: v for k, v in super().metrics().items() if v is not None and v != {}}


def _read(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    if not path.is_file():
        stage = _WRITER.get(name.split("/")[0], "the stage that writes it")
        raise HeadlineError(f"{path}: no such metrics file; run the {stage} stage first (dvc repro {stage})")
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise HeadlineError(f"{path}: unreadable metrics file ({exc}); rerun the stage that writes it") from exc


def _get(metrics: dict[str, Any], dotted: str, path: Path) -> Any:
    """``metrics[a][b]`` for ``"a.b"``; ``None`` where the stage wrote ``null`` on the way (not measured)."""
    value: Any = metrics
    for part in dotted.split("."):
        if value is None:
            return None
        if not isinstance(value, dict) or part not in value:
            raise HeadlineError(f"{path}: no key {dotted!r}; the file is from another version of its stage, rerun it")
        value = value[part]
    return value


def _mean(values: Sequence[float | None]) -> float | None:
    """The mean, or ``None`` unless every value was measured and finite (no average over a subset of tasks)."""
    finite = [float(v) for v in values if v is not None and math.isfinite(float(v))]
    return sum(finite) / len(finite) if finite and len(finite) == len(values) else None


def _per_task(folder: Path, key: str, tasks: Sequence[str]) -> float | None:
    name, dotted = SOURCES[key]
    return _mean([_get(_read(folder, name.format(task=t)), dotted, folder / name.format(task=t)) for t in tasks])


def _arm_key(label: str, labels: Sequence[str]) -> str:
    """``frozen:pretrained`` -> ``pretrained`` where that is unambiguous (narrow columns), else the label."""
    short = label.split(":")[-1]
    return short if sum(other.split(":")[-1] == short for other in labels) == 1 else label


def run(metrics_folder: str | Path, out: str | Path, tasks: Sequence[str]) -> HeadlineSummary:
    """Read the stages' metrics files under ``metrics_folder`` (``data/metrics``) for ``tasks``
    (``collect.tasks``) and return the headline; the CLI writes it to ``out`` (``headline.json``)."""
    folder = Path(metrics_folder)
    if not tasks:
        raise HeadlineError("collect.tasks is empty: there is nothing to summarise")
    evaluate = _read(folder, "evaluate.json")
    gaps = _get(evaluate, "probe_gap", folder / "evaluate.json") or {}
    finals = _get(evaluate, "final_return", folder / "evaluate.json") or {}
    return HeadlineSummary(
        stage="headline",
        out=str(out),
        flow_epe=_per_task(folder, "flow_epe", tasks),
        annot_acc=_per_task(folder, "annot_acc", tasks),
        val_loss=_get(_read(folder, "pretrain.json"), "validation_loss.total", folder / "pretrain.json"),
        probe_gap=_mean([gap["value"] for _, gap in sorted(gaps.items())]),
        iqm={_arm_key(label, list(finals)): float(v["iqm"]) for label, v in sorted(finals.items())},
    )
