"""GPU check, section ``e2e``: collect -> flow (RAFT) -> annotate (transformers) -> encode (CLIP) -> pretrain through
the CLI on a gymnasium task with every ``device: auto``: nothing may assume a CPU.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

from gpu.harness import BUDGET, TASK, Ctx, cli, find_key, total_loss, write_params


def section_e2e(ctx: Ctx) -> None:
    s = ctx.sizes
    root = ctx.work / "e2e"
    data = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, dict[str, Any]] = {
        "weights": ctx.weights_overrides(),
        "collect": {
            "tasks": [TASK],
            "episodes_per_task": 2,
            "episode_steps": s.e2e_steps,
            "action_repeat": {TASK: 2},
            "image_size": s.e2e_size,
            "camera": 0,
            "depth": True,
            "segmentation": True,
            "policy": {"kind": "random"},
            "workers": 1,
            "preview_episodes": 1,
        },
        "flow": {"backend": "simulator", "previews": 1}
        if ctx.tiny
        else {
            "backend": "ptlflow",
            "model": "raft_small",
            "weights": "random",
            "device": "auto",
            "fp16": True,
            "min_size": 128,
            "batch_size": 16,
            "previews": 1,
        },
        "annotate": {"backend": "simulator", "every_k": max(2, s.e2e_steps // 2), "cache_dir": str(root / "cache")},
        "encode": {
            "clip_model": s.e2e_clip,
            "weights": "random",
            "device": "auto",
            "fp16": True,
            "val_fraction": 0.5,
            "batch_size": 64,
        },
        "pretrain": {
            "steps": s.e2e_pretrain_steps,
            "batch_size": s.e2e_batch,
            "device": "auto",
            "workers": 0,
            "nproc": 1,
        },
    }
    params = write_params(ctx, root / "params.yaml", overrides)
    # The VLM answers of a random model are noise, which the encode stage rightly refuses: the transformers
    # backend (device auto) annotates into a folder of its own, the simulator backend the one encode reads.
    vlm = {
        "backend": "transformers",
        "model": "random",
        "device": "auto",
        "batch_size": 4,
        "max_new_tokens": 8,
        "max_retries": 0,
        "max_failure_rate": 1.0,
    }
    vlm_params = write_params(
        ctx, root / "params-vlm.yaml", {**overrides, "annotate": {**overrides["annotate"], **vlm}}
    )
    if ctx.tiny:
        ctx.report.note(
            "e2e",
            "--cpu-tiny: the flow stage uses the simulator backend here (section 1 runs ptlflow on the CPU); "
            "the GPU run uses raft_small fp16",
        )
    common = ["--log-level", "WARNING"]
    ep, m = data / "episodes" / TASK, data / "metrics"

    def argv(name: str, params: Path, **flags: object) -> list[str]:
        """``--params PARAMS STAGE --out OUT --flag value ...``: stage ``name``'s command line (without the program)."""
        flags["out"] = data / _out_folder(name)
        return [
            "--params",
            str(params),
            name.removesuffix("-vlm"),
            *(x for k, v in flags.items() for x in (f"--{k}", str(v))),
        ]

    stages = {
        "collect": argv("collect", params, task=TASK),
        "flow": argv("flow", params, episodes=ep, metrics=m / "flow.json"),
        "annotate-vlm": argv("annotate-vlm", vlm_params, episodes=ep, metrics=m / "annotate-vlm.json"),
        "annotate": argv("annotate", params, episodes=ep, metrics=m / "annotate.json"),
        "encode": argv("encode", params, episodes=ep.parent, flow=data / "flow", annotations=data / "annotations"),
        "pretrain": argv(
            "pretrain", params, dataset=data / "dataset", metrics=m / "pretrain.json", plots=data / "plots"
        ),
    }
    from pipeline.common.device import select_device

    resolved = str(select_device("auto"))
    frames = 2 * (s.e2e_steps + 1)
    for name, command in stages.items():
        if ctx.budget.spent:
            ctx.report.skip("e2e", name, BUDGET)
            continue
        start = time.perf_counter()
        try:
            rc = cli(common + command)
        except Exception as exc:
            ctx.report.error("e2e", name, exc)
            break
        wall = time.perf_counter() - start
        outputs = (
            sorted(p.name for p in (data / _out_folder(name)).glob("*")) if (data / _out_folder(name)).exists() else []
        )
        if rc != 0 or not outputs:
            ctx.report.error("e2e", name, RuntimeError(f"semore {name} exited {rc}; outputs: {outputs[:5]}"))
            break
        label = "annotate (transformers, random VLM)" if name == "annotate-vlm" else name
        ctx.report.ok(
            "e2e",
            f"semore {label} ({TASK}, {frames} frames, {s.e2e_size}px, device auto -> {resolved})",
            {"wall_s": wall, "frames_s": frames / wall},
            outputs=len(outputs),
            **_e2e_checks(name, data),
        )


def _out_folder(stage: str) -> str:
    return {
        "collect": f"episodes/{TASK}",
        "flow": f"flow/{TASK}",
        "annotate-vlm": f"annotations-vlm/{TASK}",
        "annotate": f"annotations/{TASK}",
        "encode": "dataset",
        "pretrain": "pretrain",
    }[stage]


def _e2e_checks(stage: str, data: Path) -> dict[str, Any]:
    """What each stage's outputs say about the device and precision it ran with.

    Best effort: provenance keys may move.
    """
    try:
        if stage == "flow":
            import numpy as np

            first = sorted((data / "flow" / TASK).glob("episode_*.npz"))[0]
            with np.load(first, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                finite = bool(np.isfinite(npz["flow"].astype(np.float32)).all())
            return {"precision": find_key(meta, "precision"), "flow_finite": finite}
        if stage == "encode":
            stats = json.loads((data / "dataset" / "stats.json").read_text())
            return {"clip_precision": find_key(stats, "precision")}
        if stage == "pretrain":
            metrics = json.loads((data / "metrics" / "pretrain.json").read_text())
            return {"loss_total": total_loss(metrics)}
    except (OSError, KeyError, IndexError, ValueError) as exc:
        return {"provenance": f"not read ({type(exc).__name__}: {exc})"}
    return {}


if __name__ == "__main__":  # this measurement alone: cd bench && ../.venv/bin/python -m gpu.e2e --cpu-tiny --out /tmp/o
    from gpu_check import main

    sys.exit(main(["--sections", "e2e", *sys.argv[1:]]))
