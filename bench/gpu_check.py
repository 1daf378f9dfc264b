"""The full-scale configuration's CUDA paths, measured in one run (issue 17): a prepared device check.

Six sections, each figure beside its bare baseline measured in the same run:

1. ``flow``: ptlflow ``raft`` and ``raft_small`` at 128 and 256 px, fp16 and fp32: pairs/s of the
   flow stage (``pipeline.flow.run.run`` on episode files) against the bare model forward on
   tensors already on the device; the output is finite and fp16 agrees with fp32 (random weights).
2. ``clip``: open_clip ViT-B-32 fp16: images/s and texts/s of the library encoder
   (``pipeline.encode.clip.load_clip``: uint8 frames / strings in, numpy out) and of the encode
   stage, against the bare ``encode_image`` / ``encode_text`` on ready tensors.
3. ``vlm``: the ``transformers`` annotate backend with a random Llava model built here (about
   0.45B parameters on CUDA, bf16; the library's tiny one on the CPU): frames/s of the stage
   against bare ``generate`` at batch 1 and batched; and the ``openai`` backend against a local
   stand-in chat-completions server on 127.0.0.1 (bare: PNG + ``requests.post`` pool).
4. ``pretrain``: samples/s at batch 256 (single process): the stage's training loop fed by its
   loader against the same loop on one in-memory batch; then the pretrain stage (CLI) once as one
   process and once under ``torchrun --nproc_per_node 1`` (process group nccl on CUDA, gloo on
   the CPU, checked with an all-reduce and a DDP step): the final losses must match.
5. ``sac``: SAC updates/s at batch 256 and 512, the dual-path backbone against a DrQ-v2-style
   encoder, fp32 / channels_last / bf16 autocast / torch.compile; frames/s of a short online run
   (``pipeline.finetune.trainer.finetune``) on HalfCheetah-v5 rendered with EGL, against the bare
   environment; the projected wall time of a 100k-frame run.
6. ``e2e``: collect -> flow (RAFT) -> annotate (transformers) -> encode (CLIP) -> pretrain through
   the CLI on a gymnasium task with every ``device: auto``: nothing may assume a CPU.

Writes ``gpu_check.json`` and ``gpu_check.md`` under ``--out`` (default ``$OUT``), rewritten
after every section so a run cut short still returns what it measured. Every row is ``ok`` with
figures, ``skipped`` with a reason, or ``error`` with the exception.

This file is the driver: argument parsing, the section loop and the report. Each section is one
module of ``bench/gpu/`` (``flow``, ``clip``, ``vlm``, ``pretrain``, ``sac``, ``e2e``; shared sizes,
timing and pipeline calls in ``harness``, the report in ``report``) and runs alone with
``--sections <name>`` or as ``cd bench && ../.venv/bin/python -m gpu.<name> [options]``.

Without CUDA (or with ``--cpu-tiny``) everything runs at a tiny size on the CPU and what needs
CUDA is skipped and says so; tests/test_gpu_check.py runs that mode. On the GPU machine run it
through ``bench/gpu_check.sh`` (installs the carried wheels first).

    .venv/bin/python bench/gpu_check.py --cpu-tiny --out /tmp/gpu_check
    OUT=/tmp/o bash bench/gpu_check.sh            # on the GPU machine
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # bench/: the gpu package and the bench scripts

from gpu import clip, e2e, flow, pretrain, sac, vlm
from gpu.harness import GPU, ROOT, TINY_SIZES, Budget, Ctx, egl_renderer, versions
from gpu.report import SECTIONS, TITLES, Report

#: The order the sections run in: torch.compile (in ``sac``) is the costliest, so it comes last and the
#: budget cuts it first.
EXECUTION_ORDER = ("flow", "clip", "vlm", "pretrain", "e2e", "sac")

RUNNERS: dict[str, Callable[[Ctx], None]] = {
    "flow": flow.section_flow,
    "clip": clip.section_clip,
    "vlm": vlm.section_vlm,
    "pretrain": pretrain.section_pretrain,
    "sac": sac.section_sac,
    "e2e": e2e.section_e2e,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--ddp-worker"]:
        rest = argv[3:] if argv[2:3] == ["--"] else argv[2:]
        return pretrain.ddp_worker(Path(argv[1]), rest)
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--out",
        default=os.environ.get("OUT") or str(ROOT / "bench" / "out" / "gpu_check"),
        help="folder for gpu_check.json and gpu_check.md (default: $OUT)",
    )
    parser.add_argument(
        "--cpu-tiny",
        action="store_true",
        help="tiny sizes on the CPU, skipping what needs CUDA (automatic without CUDA)",
    )
    parser.add_argument(
        "--sections", default=",".join(SECTIONS), help="comma-separated subset of: " + ", ".join(SECTIONS)
    )
    parser.add_argument(
        "--budget-s",
        type=float,
        default=None,
        help="wall-clock budget in s; later measurements are skipped once it is spent "
        "(default: 420 on CUDA, none in --cpu-tiny)",
    )
    parser.add_argument(
        "--work",
        default=None,
        help="keep the scratch files in a new folder under this one (default: a temporary folder, removed at the end)",
    )
    parser.add_argument(
        "--params", default=str(ROOT / "params.yaml"), help="params file whose sections are the base of every setting"
    )
    args = parser.parse_args(argv)
    wanted = [s.strip() for s in args.sections.split(",") if s.strip()]
    unknown = sorted(set(wanted) - set(SECTIONS))
    if unknown:
        parser.error(f"--sections: unknown {', '.join(unknown)}; valid: {', '.join(SECTIONS)}")
    if args.cpu_tiny:
        os.environ["CUDA_VISIBLE_DEVICES"] = (
            ""  # device auto resolves to the CPU in every stage too (set before torch loads)
        )

    from pipeline.common.rendering import setup_headless_rendering

    setup_headless_rendering()  # MUJOCO_GL=egl and triton preloaded before any GL context
    import torch
    import yaml

    from pipeline.common.device import select_device
    from pipeline.common.logs import setup_logging

    setup_logging("WARNING")
    device = select_device("auto")
    cuda = device.type == "cuda"
    tiny = args.cpu_tiny or not cuda
    sizes = TINY_SIZES if tiny else GPU
    if tiny:
        torch.set_num_threads(1)  # tiny models on a shared 2-core machine: one thread, no spinning OpenMP workers
    budget = args.budget_s if args.budget_s is not None else (0.0 if tiny else 420.0)
    meta = {
        "mode": "cpu-tiny" if tiny else "gpu",
        "device": str(device),
        "cuda": cuda,
        "gpu_name": torch.cuda.get_device_name(0) if cuda else None,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "sections": wanted,
        "egl_renderer": egl_renderer(),
        "versions": versions(),
    }
    report = Report(Path(args.out), meta)
    if args.work:
        Path(args.work).mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="gpu_check_", dir=args.work))  # fresh: nothing resumes from an earlier run
    ctx = Ctx(report, sizes, tiny, cuda, device, work, Budget(budget), yaml.safe_load(Path(args.params).read_text()))
    try:
        for section in EXECUTION_ORDER:
            if section not in wanted:
                report.skip(section, "section", "skipped: not in --sections")
                continue
            start = time.perf_counter()
            print(f"=== {TITLES[section]}", flush=True)
            try:
                RUNNERS[section](ctx)
            except Exception as exc:  # recorded; the other sections still run
                report.error(section, "section", exc)
            report.meta.setdefault("section_s", {})[section] = round(time.perf_counter() - start, 1)
            report.write()
    finally:
        report.write()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    errors = sum(r["status"] == "error" for rows in report.sections.values() for r in rows)
    print(
        f"wrote {report.out / 'gpu_check.json'} and gpu_check.md; {errors} error row(s); {report.meta['wall_s']:.0f} s",
        flush=True,
    )
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
