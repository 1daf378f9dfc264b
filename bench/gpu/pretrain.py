"""GPU check, section ``pretrain``: samples/s at batch 256 (single process): the stage's training loop fed by its
loader against the same loop on one in-memory batch; then the pretrain stage (CLI) once as one
process and once under ``torchrun --nproc_per_node 1`` (process group nccl on CUDA, gloo on
the CPU, checked with an all-reduce and a DDP step): the final losses must match.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from gpu.harness import ROOT, Ctx, cli, synthetic_dataset, total_loss, write_params


def section_pretrain(ctx: Ctx) -> None:
    import torch

    s = ctx.sizes
    dataset = synthetic_dataset(
        ctx.work / "pretrain-ds", s.pretrain_episodes, s.pretrain_steps_per_episode, s.pretrain_size
    )
    section = ctx.section(
        "pretrain",
        batch_size=s.pretrain_batch,
        workers=s.pretrain_workers,
        device="auto",
        nproc=1,
        steps=s.pretrain_cli_steps,
        probe_max_per_task=256,
    )
    try:
        from models.heads import PretrainModel
        from pipeline.dataset import open_dataset
        from pipeline.dataset.stacked import make_loader
        from pipeline.pretrain.run import backbone_config, loss_arguments
        from pipeline.pretrain.trainer import make_optimizer, train

        info = open_dataset(dataset)
        train_shards = info.shards["train"]
        device = ctx.device
        kwargs = dict(loss_arguments(section, info, device), show_progress=False)

        def fresh() -> tuple[Any, Any]:
            torch.manual_seed(section.seed)
            model = PretrainModel(
                backbone=backbone_config(section, info), clip_dim=info.embed_dim, head_hidden=section.head_hidden
            ).to(device)
            return model, make_optimizer(model, section.optimizer, section.lr, section.weight_decay)

        b, n = s.pretrain_batch, s.pretrain_timed_steps
        one = next(iter(make_loader(train_shards, section.frame_stack, b, workers=0, repeat=True)))
        model, opt = fresh()
        train(model, iter([one]), steps=1, optimizer=opt, **kwargs)  # warm-up

        def bare() -> None:
            train(model, itertools.repeat(one), steps=n, optimizer=opt, **kwargs)

        model2, opt2 = fresh()
        it = iter(
            make_loader(
                train_shards,
                section.frame_stack,
                b,
                workers=s.pretrain_workers,
                seed=section.seed,
                shuffle_buffer=section.shuffle_buffer,
                repeat=True,
            )
        )
        train(model2, it, steps=1, optimizer=opt2, **kwargs)  # warm-up (and the loader workers' start)

        def stage() -> None:
            train(model2, it, steps=n, optimizer=opt2, **kwargs)

        def loader_only() -> None:
            for _ in range(n):
                next(it)

        bare_s, stage_s, loader_s = ctx.best_of([bare, stage, loader_only])
        ctx.report.ok(
            "pretrain",
            f"training loop, batch {b}, {info.image_size}px, {s.pretrain_workers} loader workers, {device}",
            {
                "stage_samples_s": n * b / stage_s,
                "bare_samples_s": n * b / bare_s,
                "loader_samples_s": n * b / loader_s,
                "stage_over_bare": bare_s / stage_s,
            },
        )
        model = opt = model2 = opt2 = it = None  # free both models and the loader (the timed closures read them)
    except Exception as exc:
        ctx.report.error("pretrain", "training loop throughput", exc)
    if ctx.cuda:
        torch.cuda.empty_cache()
    # the stage itself: one process, then under torchrun with one process
    overrides = {"pretrain": section.model_dump(mode="json"), "weights": ctx.weights_overrides()}
    params = write_params(ctx, ctx.work / "pretrain-params.yaml", overrides)
    runs: dict[str, Any] = {}
    for mode in ("single", "torchrun"):
        out = ctx.work / f"pretrain-{mode}"
        argv = [
            "--params",
            str(params),
            "--log-level",
            "WARNING",
            "pretrain",
            "--dataset",
            str(dataset),
            "--out",
            str(out / "model"),
            "--metrics",
            str(out / "metrics.json"),
            "--plots",
            str(out / "plots"),
        ]
        start = time.perf_counter()
        if mode == "single":
            rc = cli(argv)
            ddp = {}
        else:
            rc, ddp = torchrun_pretrain(argv, out)
        wall = time.perf_counter() - start
        if rc != 0:
            ctx.report.error("pretrain", f"pretrain stage ({mode})", RuntimeError(f"exit status {rc}"))
            continue
        metrics = json.loads((out / "metrics.json").read_text())
        runs[mode] = {"wall": wall, "loss": total_loss(metrics), **ddp}
    if "single" in runs and "torchrun" in runs:
        a, b = runs["single"]["loss"], runs["torchrun"]["loss"]
        diff = abs(a - b) / max(abs(a), 1e-12)
        tol = 1e-3 if ctx.cuda else 1e-6
        ddp = runs["torchrun"]
        ctx.report.ok(
            "pretrain",
            f"pretrain stage (CLI) {s.pretrain_cli_steps} steps at batch {s.pretrain_batch}: "
            "one process vs torchrun --nproc_per_node 1",
            {"single_wall_s": runs["single"]["wall"], "torchrun_wall_s": runs["torchrun"]["wall"]},
            loss_single=a,
            loss_torchrun=b,
            loss_rel_diff=diff,
            losses_match=diff <= tol,
            process_group=ddp.get("backend"),
            allreduce_ok=ddp.get("allreduce_ok"),
            ddp_step_ok=ddp.get("ddp_step_ok"),
        )
        ctx.report.note(
            "pretrain",
            "With one process (WORLD_SIZE=1) the stage runs without a process group "
            "(pipeline.pretrain.trainer.distributed_context): the torchrun run checks the launch path and the loss, "
            f"and the {ddp.get('backend')} process group is checked by the worker itself "
            "(an all-reduce and one DDP step of PretrainModel) before it calls the stage.",
        )


def torchrun_pretrain(argv: list[str], out: Path) -> tuple[int, dict[str, Any]]:
    """``torchrun --standalone --nproc_per_node 1`` of this script's ``--ddp-worker`` mode running ``semore <argv>``."""
    out.mkdir(parents=True, exist_ok=True)
    report = out / "ddp.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "1",
        str(ROOT / "bench" / "gpu_check.py"),
        "--ddp-worker",
        str(report),
        "--",
        *argv,
    ]
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
        "OMP_NUM_THREADS": str(__import__("torch").get_num_threads()),
    }
    rc = subprocess.run(cmd, cwd=ROOT, env=env, check=False).returncode
    ddp = json.loads(report.read_text()) if report.exists() else {}
    return rc, ddp


def ddp_worker(report: Path, argv: list[str]) -> int:
    """Under torchrun: join the process group (nccl on CUDA, gloo on the CPU), all-reduce, one DDP step,
    then run the stage."""
    import torch
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from models.heads import PretrainModel

    cuda = torch.cuda.is_available()
    backend = "nccl" if cuda else "gloo"
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0"))) if cuda else torch.device("cpu")
    if cuda:
        torch.cuda.set_device(device)
    dist.init_process_group(backend=backend)
    result: dict[str, Any] = {"backend": backend, "world_size": dist.get_world_size()}
    try:
        x = torch.ones(4, device=device) * (dist.get_rank() + 1)
        dist.all_reduce(x)
        result["allreduce_ok"] = bool(
            torch.allclose(x, torch.full_like(x, float(sum(range(1, dist.get_world_size() + 1)))))
        )
        model = PretrainModel(
            backbone=dict(frame_stack=2, image_size=16, feature_dim=8, channels=4, depth=2), clip_dim=6, head_hidden=8
        ).to(device)
        net = DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
        outputs = net(torch.randint(0, 256, (2, 6, 16, 16), dtype=torch.uint8, device=device), None)
        tensors = [
            v
            for v in (outputs.values() if isinstance(outputs, dict) else vars(outputs).values())
            if torch.is_tensor(v) and v.is_floating_point()
        ]
        sum(t.float().mean() for t in tensors).backward()
        result["ddp_step_ok"] = all(p.grad is None or bool(torch.isfinite(p.grad).all()) for p in model.parameters())
    finally:
        dist.destroy_process_group()
    report.write_text(json.dumps(result))
    return cli(argv)


if (
    __name__ == "__main__"
):  # this measurement alone: cd bench && ../.venv/bin/python -m gpu.pretrain --cpu-tiny --out /tmp/o
    from gpu_check import main

    sys.exit(main(["--sections", "pretrain", *sys.argv[1:]]))
