"""The evaluate stage's outputs: ``results.json``, ``report.md``, ``probe/``, ``plots/`` and ``dvclive/``.

Everything is written into one folder atomically, with deterministic bytes (no wall-clock
figures: speeds go to the log). ``dvclive/`` is DVCLive's layout (``metrics.json``, ``plots/``),
so ``dvc metrics show``, ``dvc plots show/diff`` and ``dvc exp show`` compare evaluations.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.io import atomic_path, dumps_json, npz_bytes
from pipeline.config.evaluate import EvaluateParams
from pipeline.evaluate.backbones import Backbone
from pipeline.sim.benchmark import FRAME_COUNTING, PUBLISHED_100K


def _fmt(e: dict[str, float], digits: int = 3) -> str:
    return f"{e['value']:.{digits}f} [{e['ci_low']:.{digits}f}, {e['ci_high']:.{digits}f}]"


def _probe_tables(probe: dict[str, Any]) -> list[str]:
    model = (
        {"ridge": "ridge (linear)", "mlp": "MLP (one hidden layer of 256, fixed settings)"}[
            next(iter(probe.values()))["model"]
        ]
        if probe
        else "ridge"
    )
    lines = [
        f"## Probe: {model} from frozen features to the observation vector",
        "",
        "Pooled out-of-fold R^2 (episode-grouped k-fold; 1 - sum SSE / sum SST over standardised dimensions) "
        "with 95% episode-bootstrap CIs. "
        "1 = the features determine the observation (linearly, for ridge), 0 = no better than its mean.",
        "",
    ]
    for task, pr in probe.items():
        lines += [
            f"### {task} ({pr['episodes']} held-out episodes, {pr['frames']} frames; dims {pr['dims']})",
            "",
            "| backbone | all | position | velocity |",
            "| --- | --- | --- | --- |",
        ]
        lines += [
            f"| {name} | " + " | ".join(_fmt(r[g]) for g in ("all", "position", "velocity")) + " |"
            for name, r in pr["r2"].items()
        ]
        lines += [
            "",
            "Pretrained minus each other backbone (paired: same resampled episodes):",
            "",
            "| vs | all | position | velocity | CI excludes 0 (all) |",
            "| --- | --- | --- | --- | --- |",
        ]
        for name, d in pr["pretrained_minus"].items():
            sign = (
                "no"
                if d["all"]["ci_low"] <= 0 <= d["all"]["ci_high"]
                else ("yes, better" if d["all"]["ci_low"] > 0 else "yes, worse")
            )
            lines.append(
                f"| {name} | " + " | ".join(_fmt(d[g]) for g in ("all", "position", "velocity")) + f" | {sign} |"
            )
        lines.append("")
    return lines


def _rl_tables(
    section: EvaluateParams, repeats: dict[str, int], results: list[dict[str, Any]], aggregates: dict[str, Any]
) -> list[str]:
    header = f"frames = {section.frames} per run; {FRAME_COUNTING}"
    lines = [
        "## SAC arms",
        "",
        f"Final evaluation return (mean over {section.eval_episodes} deterministic episodes), {header}.",
        "",
        "| task (action repeat) | arm | seeds | mean | per seed | SAC-state (DrQ Tab. 1, 100k) | DrQ (100k) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    by = {}
    for r in results:
        by.setdefault((r["job"].task, r["job"].label), []).append(r["final_return"])
    for (task, label), finals in by.items():
        published = PUBLISHED_100K.get(task, {})
        lines.append(
            f"| {task} ({repeats[task]}) | {label} | {len(finals)} | {np.mean(finals):.1f} | "
            f"{', '.join(f'{f:.1f}' for f in finals)} | "
            f"{published.get('SAC-state', '-')} | {published.get('DrQ', '-')} |"
        )
    lines += [
        "",
        "Across tasks x seeds (rliable: IQM and mean with 95% stratified-bootstrap CIs; "
        f"returns on the 0-1000 DMC scale; {header}):",
        "",
        "| arm | runs x tasks | IQM | mean |",
        "| --- | --- | --- | --- |",
    ]
    for arm, a in aggregates.items():
        lines.append(
            f"| {arm} | {a['runs']} x {a['tasks']} | "
            f"{a['iqm']:.1f} [{a['iqm_ci_low']:.1f}, {a['iqm_ci_high']:.1f}] | "
            f"{a['mean']:.1f} [{a['mean_ci_low']:.1f}, {a['mean_ci_high']:.1f}] |"
        )
    lines.append("")
    return lines


def _plot_curves(path: Path, results: list[dict[str, Any]], tasks: list[str]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        labels = sorted({r["job"].label for r in results if r["job"].task == task})
        for label in labels:
            curves = [r["curve"] for r in results if r["job"].task == task and r["job"].label == label]
            n = min(len(c) for c in curves)
            x = np.array([p["frames"] for p in curves[0][:n]])
            y = np.array([[p["return_mean"] for p in c[:n]] for c in curves])
            mean = y.mean(axis=0)
            ax.plot(x, mean, label=f"{label} ({len(curves)} seeds)")
            if len(curves) > 1:  # 95% bootstrap CI of the mean over seeds
                rng = np.random.default_rng(0)
                boots = y[rng.integers(0, len(curves), (1000, len(curves)))].mean(axis=1)
                ax.fill_between(x, *np.percentile(boots, [2.5, 97.5], axis=0), alpha=0.2)
        ax.set_title(task)
        ax.set_xlabel("environment frames (after action repeat)")
        ax.set_ylabel("evaluation return")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _plot_probe(path: Path, probe: dict[str, Any]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    tasks = list(probe)
    fig, axes = plt.subplots(1, len(tasks), figsize=(5 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        r2 = probe[task]["r2"]
        names = list(r2)
        values = np.array([r2[n]["all"]["value"] for n in names])
        errors = np.array(
            [
                [r2[n]["all"]["value"] - r2[n]["all"]["ci_low"] for n in names],
                [r2[n]["all"]["ci_high"] - r2[n]["all"]["value"] for n in names],
            ]
        )
        ax.bar(
            range(len(names)),
            values,
            yerr=errors,
            capsize=3,
            color=["C0" if n == "pretrained" else "C7" for n in names],
        )
        ax.set_xticks(range(len(names)), names, rotation=30, fontsize=7)
        ax.axhline(0.0, color="k", linewidth=0.5)
        ax.set_title(f"{task}: probe R^2 (95% CI)")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _log_dvclive(
    folder: Path, probe: dict[str, Any], results: list[dict[str, Any]], aggregates: dict[str, Any]
) -> None:
    from pipeline.common.curves import open_live

    with open_live(folder) as live:
        for task, pr in probe.items():
            for name, r in pr["r2"].items():
                live.log_metric(f"probe/{task}/{name}/r2", round(r["all"]["value"], 6), plot=False)
            for name, d in pr["pretrained_minus"].items():
                live.log_metric(f"probe/{task}/gap_vs_{name}/r2", round(d["all"]["value"], 6), plot=False)
        for arm, a in aggregates.items():
            live.log_metric(f"rl/{arm}/iqm", round(a["iqm"], 3), plot=False)
            live.log_metric(f"rl/{arm}/mean", round(a["mean"], 3), plot=False)
        for r in results:
            job = r["job"]
            points = [{"frames": p["frames"], "return": round(p["return_mean"], 4)} for p in r["curve"]]
            live.log_plot(
                f"curve_{job.task}_{job.label.replace(':', '-')}_seed{job.seed_index}",
                points,
                x="frames",
                y="return",
                template="linear",
                title=f"{job.task} {job.label} seed {job.seed_index}",
                x_label="environment frames (after action repeat)",
                y_label="evaluation return",
            )


def write_outputs(
    out: str | Path,
    section: EvaluateParams,
    *,
    repeats: dict[str, int],
    image_size: int,
    frame_stack: int,
    backbones: list[Backbone],
    probe: dict[str, Any],
    results: list[dict[str, Any]],
    aggregates: dict[str, Any],
    warnings: list[str],
    probe_files: dict[str, dict[str, np.ndarray]] | None = None,
) -> None:
    """Write every output of the stage into ``out`` as one atomic folder; ``probe_files``: task ->
    the arrays of ``probe/<task>.npz`` (:func:`pipeline.common.probe.probe_arrays`)."""
    record = {
        "frame_counting": FRAME_COUNTING,
        "tasks": {t: {"action_repeat": repeats[t]} for t in section.tasks},
        "observation": {
            "image_size": image_size,
            "frame_stack": frame_stack,
            "render_mode": section.render_mode,
            "camera": section.camera,
        },
        "backbones": [b.provenance() for b in backbones],
        "probe": probe,
        "rl": [
            {
                "arm": r["job"].label,
                "task": r["job"].task,
                "seed": r["job"].seed_index,
                "final_return": r["final_return"],
                "curve": r["curve"],
            }
            for r in results
        ],
        "aggregates": aggregates,
        "warnings": warnings,
    }
    lines = [
        "# Evaluation report",
        "",
        f"Backbone: `{backbones[0].spec.folder}` (weights sha256 {backbones[0].spec.sha256[:12]}), "
        f"compared with {section.random_inits} random initialisations"
        + (f" and {len(section.checkpoints)} other checkpoint(s)" if section.checkpoints else "")
        + ".",
        f"Observations: {frame_stack} stacked {image_size}x{image_size} frames; "
        f"action repeat per task {repeats}; {FRAME_COUNTING}.",
        "",
    ]
    if warnings:
        lines += ["**Warnings (allowed mismatches):**", ""] + [f"- {w}" for w in warnings] + [""]
    if probe:
        lines += _probe_tables(probe)
    if results:
        lines += _rl_tables(section, repeats, results, aggregates)
    with atomic_path(out, clean_stale=True, owner="evaluate") as tmp:
        tmp.mkdir()
        (tmp / "results.json").write_text(dumps_json(record))
        (tmp / "report.md").write_text("\n".join(lines))
        for task, arrays in (probe_files or {}).items():
            (tmp / "probe").mkdir(exist_ok=True)
            (tmp / "probe" / f"{task}.npz").write_bytes(npz_bytes(arrays))
        (tmp / "plots").mkdir()
        if probe:
            _plot_probe(tmp / "plots" / "probe.png", probe)
        if results:
            _plot_curves(tmp / "plots" / "learning_curves.png", results, list(section.tasks))
        _log_dvclive(tmp / "dvclive", probe, results, aggregates)
