"""GPU check, section ``flow``: ptlflow ``raft`` and ``raft_small`` at 128 and 256 px, fp16 and fp32: pairs/s of the
flow stage (``pipeline.flow.run.run`` on episode files) against the bare model forward on
tensors already on the device; the output is finite and fp16 agrees with fp32 (random weights).
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path
from typing import Any

from gpu.harness import BUDGET, NEEDS_CUDA, TINY, Ctx, episode_frames, flow_stage, synthetic_inputs


def section_flow(ctx: Ctx) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pipeline.flow.ptlflow_backend import PtlflowBackend, to_ptlflow_images

    s = ctx.sizes
    for model in ("raft_small", "raft"):
        if model not in s.flow_models:
            ctx.report.skip(
                "flow", f"{model} (all sizes)", f"{TINY} (runs raft_small only: RAFT's full model is slow on this CPU)"
            )
    for size in (128, 256):
        if size not in s.flow_sizes:
            ctx.report.skip("flow", f"{size} px (all models)", f"{TINY} (128 px only)")
    for size in s.flow_sizes:
        root = ctx.work / f"flow-{size}"
        episodes, _, _ = synthetic_inputs(root, "flowcheck", s.flow_episodes, s.flow_steps, size, every_k=4)
        episodes = episodes / "flowcheck"
        frames = episode_frames(episodes)
        pairs = sum(len(f) - 1 for f in frames)
        first, second = np.concatenate([f[:-1] for f in frames]), np.concatenate([f[1:] for f in frames])
        for model in s.flow_models:
            reference: Any = None
            for fp16 in (False, True):
                name = f"{model} {size}px {'fp16' if fp16 else 'fp32'}"
                if fp16 and not ctx.cuda:
                    ctx.report.skip("flow", name, f"{NEEDS_CUDA} (fp16 autocast runs on CUDA only)")
                    continue
                if ctx.budget.spent:
                    ctx.report.skip("flow", name, BUDGET)
                    continue
                try:
                    section = ctx.section(
                        "flow",
                        backend="ptlflow",
                        model=model,
                        weights="random",
                        batch_size=s.flow_batch,
                        device="auto",
                        fp16=fp16,
                        min_size=128,
                        previews=0,
                    )
                    backend = PtlflowBackend.from_params(section, ctx.weights())
                    hw = backend.input_size(size, size)
                    inputs = []
                    for i in range(0, pairs, s.flow_batch):
                        a = torch.from_numpy(first[i : i + s.flow_batch]).to(backend.device)
                        b = torch.from_numpy(second[i : i + s.flow_batch]).to(backend.device)
                        images = to_ptlflow_images(a, b)
                        if hw != (size, size):
                            images = F.interpolate(
                                images.flatten(0, 1), size=hw, mode="bilinear", align_corners=False
                            ).unflatten(0, (-1, 2))
                        inputs.append(images)
                    outputs: list[Any] = []

                    # the loop's values bound as defaults: each configuration times its own backend and inputs
                    def bare(backend: Any = backend, inputs: list[Any] = inputs, outputs: list[Any] = outputs) -> None:
                        outputs[:] = [backend.forward(x) for x in inputs]

                    counter = itertools.count()

                    def stage(
                        backend: Any = backend,
                        episodes: Any = episodes,
                        section: Any = section,
                        prefix: str = str(root / f"out-{model}-{fp16}"),
                        counter: Any = counter,
                    ) -> None:
                        flow_stage(episodes, Path(f"{prefix}-{next(counter)}"), section, backend)

                    if s.warm_up:
                        bare()  # the first ptlflow calls are slow (cudnn autotune, allocations)
                    bare_s, stage_s = ctx.best_of([bare, stage])
                    flow = torch.cat([o.float() for o in outputs])
                    checks: dict[str, Any] = {
                        "finite": bool(torch.isfinite(flow).all()),
                        "pairs": pairs,
                        "mean_abs_px": float(flow.abs().mean()),
                    }
                    if not fp16:
                        reference = flow
                    elif reference is not None:
                        rel = float((flow - reference).abs().mean() / reference.abs().mean().clamp(min=1e-6))
                        checks.update(fp16_vs_fp32_rel=rel, fp16_matches_fp32=rel < 0.05)
                    ctx.report.ok(
                        "flow",
                        name,
                        {
                            "stage_pairs_s": pairs / stage_s,
                            "bare_pairs_s": pairs / bare_s,
                            "stage_over_bare": bare_s / stage_s,
                        },
                        **checks,
                    )
                    del bare, stage, backend, inputs, outputs  # free the model and tensors before the next one
                except Exception as exc:  # one configuration's failure must not lose the others' figures
                    ctx.report.error("flow", name, exc)
                if ctx.cuda:
                    torch.cuda.empty_cache()


if (
    __name__ == "__main__"
):  # this measurement alone: cd bench && ../.venv/bin/python -m gpu.flow --cpu-tiny --out /tmp/o
    from gpu_check import main

    sys.exit(main(["--sections", "flow", *sys.argv[1:]]))
