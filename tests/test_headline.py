"""The headline stage: a few figures read from the other stages' metrics files, averaged over tasks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from pipeline.headline.run import HeadlineError, run

TASKS = ("cartpole-swingup", "cheetah-run")


def _write(folder: Path, name: str, body: dict[str, Any]) -> None:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(body))


@pytest.fixture
def metrics(tmp_path: Path) -> Path:
    """A metrics folder shaped like the default run's (only the keys the headline reads, plus a few)."""
    for task, epe, rate in zip(TASKS, (0.5, 1.5), (1.0, 0.5), strict=True):
        _write(tmp_path, f"flow/{task}.json", {"backend": "dis", "epe": {"mean": epe, "median": 0.1}})
        _write(tmp_path, f"annotate/{task}.json", {"accuracy": {"named_in_view_rate": rate}, "failure_rate": 0.0})
    _write(tmp_path, "pretrain.json", {"validation_loss": {"total": 1.25, "flow": 0.4}})
    _write(
        tmp_path,
        "evaluate.json",
        {
            "probe_gap": {
                t: {"value": g, "ci_low": 0.0, "ci_high": 1.0} for t, g in zip(TASKS, (0.1, 0.3), strict=True)
            },
            "final_return": {
                "state": {"iqm": 50.0, "iqm_ci_low": 40.0, "iqm_ci_high": 60.0},
                "frozen:pretrained": {"iqm": 12.0, "iqm_ci_low": 10.0, "iqm_ci_high": 14.0},
                "frozen:random": {"iqm": 13.0, "iqm_ci_low": 11.0, "iqm_ci_high": 15.0},
            },
        },
    )
    return tmp_path


def test_tasks_weigh_equally_and_arm_labels_are_shortened(metrics: Path) -> None:
    summary = run(metrics, metrics / "headline.json", TASKS)
    assert summary.metrics() == {
        "flow_epe": 1.0,
        "annot_acc": 0.75,
        "val_loss": 1.25,
        "probe_gap": pytest.approx(0.2),
        "iqm": {"pretrained": 12.0, "random": 13.0, "state": 50.0},
    }
    summary.write_metrics(metrics / "headline.json")
    assert json.loads((metrics / "headline.json").read_text())["annot_acc"] == 0.75


def test_only_the_tasks_asked_for_are_read(metrics: Path) -> None:
    """A task dropped from collect.tasks may leave its metrics file behind: it must not count."""
    assert run(metrics, metrics / "h.json", TASKS[:1]).flow_epe == 0.5


def test_a_figure_not_measured_on_every_task_is_left_out_not_averaged_over_the_rest(metrics: Path) -> None:
    _write(metrics, f"flow/{TASKS[1]}.json", {"backend": "dis", "epe": None})  # no simulator truth to compare with
    summary = run(metrics, metrics / "h.json", TASKS)
    assert summary.flow_epe is None and "flow_epe" not in summary.metrics()
    assert summary.metrics()["annot_acc"] == 0.75


def test_arm_labels_that_would_collide_when_shortened_stay_whole(metrics: Path) -> None:
    body = json.loads((metrics / "evaluate.json").read_text())
    body["final_return"]["finetune:pretrained"] = {"iqm": 99.0}
    _write(metrics, "evaluate.json", body)
    assert run(metrics, metrics / "h.json", TASKS).iqm == {
        "finetune:pretrained": 99.0,
        "frozen:pretrained": 12.0,
        "random": 13.0,
        "state": 50.0,
    }


def test_a_missing_metrics_file_names_the_stage_to_run(metrics: Path) -> None:
    (metrics / "annotate" / f"{TASKS[1]}.json").unlink()
    with pytest.raises(HeadlineError, match=rf"annotate/{TASKS[1]}\.json: no such metrics file; .*dvc repro annotate"):
        run(metrics, metrics / "h.json", TASKS)
    (metrics / "evaluate.json").unlink()
    with pytest.raises(HeadlineError, match=r"evaluate\.json: no such metrics file; .*dvc repro evaluate"):
        run(metrics, metrics / "h.json", TASKS)


def test_a_metrics_file_from_another_version_names_the_key(metrics: Path) -> None:
    _write(metrics, "pretrain.json", {"val_loss": 1.0})
    with pytest.raises(HeadlineError, match=r"pretrain\.json: no key 'validation_loss\.total'.*another version"):
        run(metrics, metrics / "h.json", TASKS)
    (metrics / "pretrain.json").write_text("{not json")
    with pytest.raises(HeadlineError, match=r"pretrain\.json: unreadable metrics file"):
        run(metrics, metrics / "h.json", TASKS)
