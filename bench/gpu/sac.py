"""GPU check, section ``sac``: SAC updates/s at batch 256 and 512, the dual-path backbone against a DrQ-v2-style
encoder, fp32 / channels_last / bf16 autocast / torch.compile; frames/s of a short online run
(``pipeline.finetune.trainer.finetune``) on HalfCheetah-v5 rendered with EGL, against the bare
environment; the projected wall time of a 100k-frame run.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from typing import Any

from gpu.harness import BUDGET, COMPILE_S, TASK, TINY, Ctx, drq_encoder, env_frames_per_s, find_key, finetune_stage
from gpu.report import DRQV2_V100_FPS, DRQV2_V100_UPS


def section_sac(ctx: Ctx) -> None:
    import torch

    from models.backbone import DualPathBackbone

    s = ctx.sizes
    pre = ctx.params_yaml.get("pretrain", {})
    config = dict(
        frame_stack=3,
        image_size=s.sac_image,
        feature_dim=int(pre.get("feature_dim", 64)),
        channels=int(pre.get("channels", 32)),
        depth=int(pre.get("depth", 4)),
        interaction=bool(pre.get("interaction", True)),
        interaction_kind=str(pre.get("interaction_kind", "global")),
        flow_input=False,
        semantic_stride=int(pre.get("semantic_stride", 1)),
        padding=int(pre.get("padding", 1)),
    )
    encoders = {"dual-path": lambda: DualPathBackbone(**config), "drq-v2": lambda: drq_encoder(3, s.sac_image)}
    variants = [
        ("fp32", False, False, False),
        ("channels_last", True, False, False),
        ("bf16 autocast", False, True, False),
        ("compile", False, False, True),
        ("compile+channels_last+bf16", True, True, True),
    ]
    baseline: dict[tuple[str, int], float] = {}
    best: dict[str, float] = {}

    def measure(batch: int, vname: str, cl: bool, bf16: bool, comp: bool) -> None:
        for ename, make in encoders.items():
            name = f"{ename}, batch {batch}, {vname}"
            if comp and not s.sac_compile:
                ctx.report.skip(
                    "sac",
                    name,
                    f"{TINY} (torch.compile takes about a minute per model on this CPU; measured on the device)",
                )
                continue
            if comp and batch != s.sac_batches[0]:
                ctx.report.skip(
                    "sac",
                    name,
                    f"skipped: compile measured at batch {s.sac_batches[0]} only (each compile costs device time)",
                )
                continue
            if ctx.budget.spent or (comp and ctx.budget.left < COMPILE_S):
                ctx.report.skip(
                    "sac", name, BUDGET if not comp else f"{BUDGET[:-1]}: under {COMPILE_S} s left for a compile"
                )
                continue
            try:
                torch.manual_seed(0)
                ups, warm, finite = sac_updates(ctx, make(), batch, channels_last=cl, bf16=bf16, compile_=comp)
                if vname == "fp32":
                    baseline[(ename, batch)] = ups
                figures = {
                    "updates_s": ups,
                    "warmup_s": warm,
                    "speedup_vs_fp32": ups / baseline.get((ename, batch), ups),
                }
                ctx.report.ok("sac", name, figures, losses_finite=finite, hidden=s.sac_hidden, image=s.sac_image)
                if batch == s.sac_batches[0]:
                    best[ename] = max(best.get(ename, 0.0), ups)
            except Exception as exc:  # one configuration's failure must not lose the others' figures
                ctx.report.error("sac", name, exc)
            if ctx.cuda:
                torch.cuda.empty_cache()

    # torch.compile last: each compile costs tens of seconds of device time, and the budget may cut it short
    for batch in s.sac_batches:
        for variant in variants:
            if not variant[3]:
                measure(batch, *variant)
    if ctx.budget.spent:
        ctx.report.skip("sac", f"online SAC on {TASK}", BUDGET)
    else:
        try:
            online_run(ctx, config, best)
        except Exception as exc:
            ctx.report.error("sac", f"online SAC on {TASK}", exc)
    for batch in s.sac_batches:
        for variant in variants:
            if variant[3]:
                measure(batch, *variant)
    for ename, ups in best.items():
        ctx.report.note(
            "sac",
            f"{ename}: best {ups:.1f} updates/s at batch {s.sac_batches[0]}; a 100k-frame run at action repeat 2 "
            f"(48k updates, one per agent step after 4k seed frames) spends {48_000 / ups / 3600:.2f} h in updates "
            f"(anchor: DrQ-v2 ~{DRQV2_V100_FPS:.0f} frames/s on a V100, "
            f"about {DRQV2_V100_UPS:.0f} updates/s at batch 256).",
        )


def sac_updates(
    ctx: Ctx, encoder: Any, batch: int, *, channels_last: bool, bf16: bool, compile_: bool
) -> tuple[float, float, bool]:
    """(updates/s, seconds of the warm-up updates (compile included), losses finite) of SAC with ``encoder``."""
    import numpy as np
    import torch

    from pipeline.finetune.replay_buffer import ReplayBuffer
    from pipeline.finetune.sac import SAC

    s = ctx.sizes
    size, stack = s.sac_image, 3
    section = ctx.section("finetune", batch_size=batch, hidden_dim=s.sac_hidden, device="auto")
    if channels_last:
        encoder = ChannelsLast(encoder)
    agent = SAC(encoder, 6, section, ctx.device)
    if compile_:
        agent.encoder = torch.compile(agent.encoder)
    buffer = ReplayBuffer(4096, (3, size, size), 6, stack, section.n_step, section.gamma)
    rng = np.random.default_rng(0)
    for _ in range(2):
        buffer.start_episode(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        for _ in range(max(batch, 64)):
            buffer.add_step(
                rng.uniform(-1, 1, 6).astype(np.float32),
                0.5,
                False,
                rng.integers(0, 256, (size, size, 3), dtype=np.uint8),
            )
    autocast = (lambda: torch.autocast(ctx.device.type, dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    info: dict[str, float] = {}

    def update() -> None:
        with autocast():
            info.update(agent.update(buffer.sample(batch)))

    ctx.sync()
    start = time.perf_counter()
    for _ in range(3 if ctx.cuda else 1):  # warm-up: compile, cudnn autotune, allocations
        update()
    ctx.sync()
    warm = time.perf_counter() - start
    seconds = ctx.best_of([lambda: [update() for _ in range(s.sac_updates)]], 1)[0]
    finite = all(math.isfinite(v) for v in info.values())
    return s.sac_updates / seconds, warm, finite


class ChannelsLast:
    """Wraps an encoder so its weights and its input are channels_last (NHWC) in memory."""

    def __new__(cls, encoder: Any) -> Any:
        import torch
        from torch import nn

        class _Wrapped(nn.Module):
            def __init__(self, inner: nn.Module) -> None:
                super().__init__()
                self.inner = inner.to(memory_format=torch.channels_last)
                self.feature_dim = inner.feature_dim

            def forward(self, obs: torch.Tensor) -> torch.Tensor:
                return self.inner(obs.contiguous(memory_format=torch.channels_last))

        return _Wrapped(encoder)


def online_run(ctx: Ctx, config: dict[str, Any], best: dict[str, float]) -> None:
    """A short online finetune run on the gymnasium task (EGL rendering) against the bare environment."""
    from models.backbone import DualPathBackbone
    from models.checkpoint import save_module

    s = ctx.sizes
    folder = ctx.work / "sac-backbone"
    save_module(
        folder / "backbone", DualPathBackbone(**config), config, {"stage": "gpu_check", "note": "random weights"}
    )
    section = ctx.section(
        "finetune",
        task=TASK,
        action_repeat=2,
        episode_frames=s.online_episode_frames,
        camera=0,
        encoder_init="scratch",
        frames=s.online_frames,
        seed_frames=s.online_seed_frames,
        batch_size=s.online_batch,
        hidden_dim=s.sac_hidden,
        eval_every_frames=10 * s.online_frames,
        eval_episodes=1,
        video=False,
        checkpoint_every_frames=10 * s.online_frames,
        checkpoint_dir=str(ctx.work / "sac-checkpoints"),
        device="auto",
        replay_capacity=max(64, s.online_frames),
        threads=0,
    )
    env_fps = env_frames_per_s(section, s.sac_image, steps=max(4, min(200, s.online_frames // 2)))
    start = time.perf_counter()
    result = finetune_stage(folder, ctx.work / "sac-out", section)
    wall = time.perf_counter() - start
    t = result.timing
    if not t["env_s"]:
        raise RuntimeError(f"the finetune run acted on no frame (timing {t}): did it resume a finished checkpoint?")
    act_fps = t["env_frames"] / t["env_s"]
    ups = t["updates"] / t["update_s"] if t["update_s"] else float("nan")
    figures = {
        "frames_s_overall": s.online_frames / wall,
        "acting_frames_s": act_fps,
        "bare_env_frames_s": env_fps,
        "acting_over_bare_env": act_fps / env_fps,
    }
    if ups == ups:
        figures["updates_s"] = ups
        # a 100k-frame run at action repeat 2: 100k frames acted, (100k - seed) / 2 updates
        updates = (100_000 - 4000) / 2
        figures["projected_100k_h_dual_path"] = (100_000 / act_fps + updates / ups) / 3600
        if "drq-v2" in best and "dual-path" in best:
            figures["projected_100k_h_drq_v2"] = (
                100_000 / act_fps + updates / (ups * best["drq-v2"] / best["dual-path"])
            ) / 3600
    ctx.report.ok(
        "sac",
        f"online SAC on {TASK}, dual-path scratch, batch {s.online_batch}, {s.online_frames} frames, {s.sac_image}px",
        figures,
        eval_return=find_key(result.metrics(), "return_mean"),
        updates=t["updates"],
        anchor=f"DrQ-v2 ~{DRQV2_V100_FPS:.0f} frames/s on a V100",
    )


if __name__ == "__main__":  # this measurement alone: cd bench && ../.venv/bin/python -m gpu.sac --cpu-tiny --out /tmp/o
    from gpu_check import main

    sys.exit(main(["--sections", "sac", *sys.argv[1:]]))
