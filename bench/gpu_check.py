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

Without CUDA (or with ``--cpu-tiny``) everything runs at a tiny size on the CPU and what needs
CUDA is skipped and says so; tests/test_gpu_check.py runs that mode. On the GPU machine run it
through ``bench/gpu_check.sh`` (installs the carried wheels first).

    .venv/bin/python bench/gpu_check.py --cpu-tiny --out /tmp/gpu_check
    OUT=/tmp/o bash bench/gpu_check.sh            # on the GPU machine
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import itertools
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported: before any import of it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

SECTIONS = ("flow", "clip", "vlm", "pretrain", "sac", "e2e")
TITLES = {
    "flow": "1. Optical flow (ptlflow, random weights): pairs/s",
    "clip": "2. CLIP encode: images/s and texts/s",
    "vlm": "3. VLM annotate: frames/s",
    "pretrain": "4. Pretraining: samples/s, torchrun loss match",
    "sac": "5. SAC: updates/s, online frames/s",
    "e2e": "6. End to end, device auto (collect -> flow -> annotate -> encode -> pretrain)",
}
#: The order the sections run in: torch.compile (in ``sac``) is the costliest, so it comes last and the budget cuts it first.
EXECUTION_ORDER = ("flow", "clip", "vlm", "pretrain", "e2e", "sac")
NEEDS_CUDA = "skipped: needs CUDA"
TINY = "skipped: --cpu-tiny"
BUDGET = "skipped: time budget (--budget-s) spent"
COMPILE_S = 90  # seconds a torch.compile measurement may take at most (compile included), to start it within the budget
#: Published anchor: DrQ-v2 trains at about 96 frames/s on a V100 (action repeat 2, one update per agent step).
DRQV2_V100_FPS = 96.0
DRQV2_V100_UPS = 24.0  # the reading of that figure at batch 256
#: What the figures are compared with (the issue's anchor; docs/NOTES CPU figures of the project's 2-core machine).
ANCHORS = (
    f"DrQ-v2 ~{DRQV2_V100_FPS:.0f} frames/s on a V100 (~{DRQV2_V100_UPS:.0f} SAC updates/s at batch 256)",
    "2-core CPU: one SAC update at batch 32 (84 px, 1 thread) 1335 ms dual-path / 334 ms DrQ-style",
    "2-core CPU: random ViT-B-32 ~17 images/s and ~21 texts/s; ptlflow raft_small 19 pairs/s at 88 px (NaN there: RAFT needs 128)",
)
TASK = "HalfCheetah-v5"  # a gymnasium MuJoCo task: dm_control's wheel is too big to carry


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: ``GPU`` for the H200, ``TINY`` for the CPU test."""

    flow_models: tuple[str, ...]
    flow_sizes: tuple[int, ...]
    flow_episodes: int
    flow_steps: int
    flow_batch: int
    clip_model: str
    clip_frames: int
    clip_batch: int
    vlm_scale: str  # "0.5b" or "tiny"
    vlm_frames: int
    vlm_batch: int
    vlm_new_tokens: int
    openai_frames: int
    pretrain_size: int
    pretrain_episodes: int
    pretrain_steps_per_episode: int
    pretrain_batch: int
    pretrain_timed_steps: int
    pretrain_cli_steps: int
    pretrain_workers: int
    sac_batches: tuple[int, ...]
    sac_image: int
    sac_hidden: int
    sac_updates: int
    sac_compile: bool
    online_frames: int
    online_seed_frames: int
    online_episode_frames: int
    online_batch: int
    e2e_steps: int
    e2e_size: int
    e2e_clip: str
    e2e_pretrain_steps: int
    e2e_batch: int
    repeats: int
    warm_up: bool  # one untimed call before timing (first ptlflow / cudnn / generate calls are slow)


GPU = Sizes(
    flow_models=("raft_small", "raft"),
    flow_sizes=(128, 256),
    flow_episodes=2,
    flow_steps=48,
    flow_batch=32,
    clip_model="ViT-B-32",
    clip_frames=1024,
    clip_batch=256,
    vlm_scale="0.5b",
    vlm_frames=32,
    vlm_batch=16,
    vlm_new_tokens=32,
    openai_frames=64,
    pretrain_size=84,
    pretrain_episodes=4,
    pretrain_steps_per_episode=128,
    pretrain_batch=256,
    pretrain_timed_steps=10,
    pretrain_cli_steps=20,
    pretrain_workers=4,
    sac_batches=(256, 512),
    sac_image=84,
    sac_hidden=1024,
    sac_updates=20,
    sac_compile=True,
    online_frames=3000,
    online_seed_frames=1000,
    online_episode_frames=500,
    online_batch=256,
    e2e_steps=32,
    e2e_size=84,
    e2e_clip="ViT-B-32",
    e2e_pretrain_steps=20,
    e2e_batch=32,
    repeats=2,
    warm_up=True,
)
TINY_SIZES = Sizes(
    flow_models=("raft_small",),
    flow_sizes=(128,),
    flow_episodes=1,
    flow_steps=1,
    flow_batch=1,
    clip_model="semore-tiny-clip",
    clip_frames=8,
    clip_batch=4,
    vlm_scale="tiny",
    vlm_frames=2,
    vlm_batch=2,
    vlm_new_tokens=4,
    openai_frames=2,
    pretrain_size=16,
    pretrain_episodes=2,
    pretrain_steps_per_episode=8,
    pretrain_batch=8,
    pretrain_timed_steps=2,
    pretrain_cli_steps=1,
    pretrain_workers=0,
    sac_batches=(8,),
    sac_image=24,
    sac_hidden=32,
    sac_updates=1,
    sac_compile=False,
    online_frames=8,
    online_seed_frames=4,
    online_episode_frames=4,
    online_batch=4,
    e2e_steps=3,
    e2e_size=32,
    e2e_clip="semore-tiny-clip",
    e2e_pretrain_steps=1,
    e2e_batch=4,
    repeats=1,
    warm_up=False,
)


# --------------------------------------------------------------------------------------------
# Report: rows of figures or skip reasons, written as JSON and markdown after every section.
# --------------------------------------------------------------------------------------------
@dataclass
class Report:
    """Every section's rows; :meth:`write` puts ``gpu_check.json`` and ``gpu_check.md`` under ``out``."""

    out: Path
    meta: dict[str, Any]
    sections: dict[str, list[dict[str, Any]]] = field(default_factory=lambda: {s: [] for s in SECTIONS})
    notes: dict[str, list[str]] = field(default_factory=lambda: {s: [] for s in SECTIONS})
    started: float = field(default_factory=time.perf_counter)

    def ok(self, section: str, name: str, figures: dict[str, float], **checks: Any) -> None:
        """A measured row: ``figures`` are rates / seconds (finite, > 0); ``checks`` anything else."""
        row = {"name": name, "status": "ok", "figures": {k: float(v) for k, v in figures.items()}, "checks": checks}
        self.sections[section].append(row)
        shown = ", ".join(f"{k}={v:.4g}" for k, v in row["figures"].items())
        print(f"[{section}] {name}: {shown} {checks if checks else ''}", flush=True)
        self.write()

    def skip(self, section: str, name: str, reason: str) -> None:
        self.sections[section].append({"name": name, "status": "skipped", "reason": reason})
        print(f"[{section}] {name}: {reason}", flush=True)
        self.write()

    def error(self, section: str, name: str, exc: BaseException) -> None:
        text = f"{type(exc).__name__}: {exc}"
        self.sections[section].append(
            {"name": name, "status": "error", "reason": text, "traceback": traceback.format_exc(limit=8)}
        )
        print(f"[{section}] {name}: ERROR {text}\n{traceback.format_exc(limit=8)}", flush=True)
        self.write()

    def note(self, section: str, text: str) -> None:
        self.notes[section].append(text)
        print(f"[{section}] note: {text}", flush=True)

    def write(self) -> None:
        """Rewrite both files (after every row: a run killed at its time limit keeps what it measured)."""
        self.meta["wall_s"] = time.perf_counter() - self.started
        self.out.mkdir(parents=True, exist_ok=True)
        body = {
            "meta": self.meta,
            "sections": {s: {"title": TITLES[s], "rows": self.sections[s], "notes": self.notes[s]} for s in SECTIONS},
        }
        _write_text(self.out / "gpu_check.json", json.dumps(body, indent=1, sort_keys=False, default=str) + "\n")
        _write_text(self.out / "gpu_check.md", self.markdown())

    def markdown(self) -> str:
        m = self.meta
        lines = [
            "# GPU check (issue 17)",
            "",
            f"mode **{m.get('mode')}**, device {m.get('device')} ({m.get('gpu_name') or 'no GPU'}), torch {m.get('torch')}, "
            f"Python {m.get('python')}, EGL renderer: {m.get('egl_renderer')}, wall {m.get('wall_s', 0):.0f} s",
            "",
            "Anchors: " + "; ".join(ANCHORS),
            "",
        ]
        for section in SECTIONS:
            lines += [f"## {TITLES[section]}", "", "| check | status | figures | checks |", "| --- | --- | --- | --- |"]
            for row in self.sections[section]:
                if row["status"] == "ok":
                    figures = ", ".join(f"{k} {_fmt(v)}" for k, v in row["figures"].items())
                    checks = ", ".join(f"{k} {_fmt(v)}" for k, v in row["checks"].items())
                    lines.append(f"| {row['name']} | ok | {figures} | {checks} |")
                else:
                    lines.append(f"| {row['name']} | {row['status']} | {row['reason'].splitlines()[0][:200]} | |")
            lines += [""] + [f"- {n}" for n in self.notes[section]] + [""]
        return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


class Budget:
    """Wall-clock budget of the whole check: later optional measurements are skipped once it is spent."""

    def __init__(self, seconds: float) -> None:
        self.deadline = time.monotonic() + seconds if seconds > 0 else math.inf

    @property
    def spent(self) -> bool:
        return time.monotonic() > self.deadline

    @property
    def left(self) -> float:
        """Seconds left (inf without a budget)."""
        return self.deadline - time.monotonic()


@dataclass
class Ctx:
    """What every section gets."""

    report: Report
    sizes: Sizes
    tiny: bool
    cuda: bool
    device: Any  # torch.device
    work: Path
    budget: Budget
    params_yaml: dict[str, Any]


def best_of(runs: list[Callable[[], Any]], repeats: int, sync: Callable[[], None]) -> list[float]:
    """Least seconds of each ``run()`` over ``repeats`` rounds (runs alternate within a round)."""
    times: list[list[float]] = [[] for _ in runs]
    for _ in range(repeats):
        for run, spent in zip(runs, times):
            sync()
            start = time.perf_counter()
            run()
            sync()
            spent.append(time.perf_counter() - start)
    return [min(t) for t in times]


def cuda_sync(ctx: Ctx) -> Callable[[], None]:
    import torch

    return torch.cuda.synchronize if ctx.cuda else (lambda: None)


# --------------------------------------------------------------------------------------------
# The pipeline's functions this check calls, in one place (update here when they move).
# --------------------------------------------------------------------------------------------
def params_section(ctx: Ctx, name: str, **overrides: Any) -> Any:
    """The ``name`` section of the repository's params.yaml with ``overrides``, validated."""
    from pipeline.config import parse_params

    raw = copy.deepcopy(ctx.params_yaml)
    raw.setdefault(name, {}).update(overrides)
    raw.setdefault("weights", {}).update(weights_overrides(ctx))
    return getattr(parse_params(raw, source="gpu_check"), name)


def weights_overrides(ctx: Ctx) -> dict[str, Any]:
    return {"on_missing": "random", "offline": True, "cache_dir": str(ctx.work / "weights-cache")}


def write_params(ctx: Ctx, path: Path, overrides: dict[str, dict[str, Any]]) -> Path:
    """params.yaml of the repository with per-section ``overrides``, validated, written to ``path``."""
    import yaml

    from pipeline.config import parse_params

    raw = copy.deepcopy(ctx.params_yaml)
    for section, values in overrides.items():
        raw.setdefault(section, {}).update(values)
    parse_params(raw, source=str(path))
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    return path


def cli(argv: list[str]) -> int:
    """``semore <argv>`` in this process (the entry point dvc.yaml runs); returns its exit status."""
    from pipeline.cli import main

    return main(argv)


def synthetic_inputs(
    root: Path, task: str, episodes: int, steps: int, size: int, every_k: int
) -> tuple[Path, Path, Path]:
    """Episodes / flow / annotations in the upstream stages' formats (a moving square), per task folder."""
    from tests.support.datasets import write_synthetic_inputs

    return write_synthetic_inputs(root, (task,), episodes, steps, size, every_k)


def synthetic_dataset(out: Path, episodes: int, steps: int, size: int) -> Path:
    """An encoded dataset folder (two tasks, a projection stand-in for CLIP) written by the encode stage."""
    from tests.support.datasets import write_synthetic_dataset

    return write_synthetic_dataset(out, episodes=episodes, steps=steps, size=size, clip_dim=16, shard_maxcount=256)


def chat_server() -> Any:
    """The local OpenAI-compatible stand-in server of the test suite (answers a valid annotation)."""
    from tests.support.annotate import ChatServer

    return ChatServer()


def flow_stage(episodes: Path, out: Path, section: Any, backend: Any) -> Any:
    from pipeline.config import WeightsParams
    from pipeline.flow.run import run

    return run(episodes, out, section, WeightsParams(), backend=backend)


def annotate_stage(episodes: Path, out: Path, section: Any, ctx: Ctx, backend: Any = None) -> Any:
    from pipeline.annotate.run import run
    from pipeline.config import WeightsParams

    return run(episodes, out, section, WeightsParams(**weights_overrides(ctx)), backend=backend)


def encode_stage(inputs: tuple[Path, Path, Path], out: Path, section: Any, encoder: Any) -> Any:
    from pipeline.config import WeightsParams
    from pipeline.encode.run import run

    return run(*inputs, out, section, WeightsParams(), encoder=encoder)


def finetune_stage(backbone: Path, out: Path, section: Any) -> Any:
    """The finetune stage (online SAC); no curves (they need dvclive, which the GPU image lacks)."""
    from pipeline.finetune.run import run

    return run(backbone, out, section)


def episode_frames(folder: Path) -> list[Any]:
    """The (T+1, H, W, 3) uint8 frames of every episode file in ``folder``, in order."""
    from pipeline.sim.episodes import list_episodes, load_episode

    return [load_episode(p, ["frames"]).frames for p in list_episodes(folder)]


def drq_encoder(frame_stack: int, image_size: int) -> Any:
    """The bare baseline encoder of bench_finetune.py (DrQ / DrQ-v2 conv stack, Linear -> 50, LayerNorm, tanh)."""
    from bench_finetune import DrQEncoder

    return DrQEncoder(frame_stack, image_size)


def env_frames_per_s(section: Any, image_size: int, steps: int) -> float:
    """Frames/s of the bare environment under random actions (bench_finetune.py's baseline)."""
    from bench_finetune import env_baseline

    return env_baseline(section, image_size, steps)


# --------------------------------------------------------------------------------------------
# 1. Flow
# --------------------------------------------------------------------------------------------
def section_flow(ctx: Ctx) -> None:
    import numpy as np
    import torch
    import torch.nn.functional as F

    from pipeline.config import WeightsParams
    from pipeline.flow.ptlflow_backend import PtlflowBackend, to_ptlflow_images

    s = ctx.sizes
    sync = cuda_sync(ctx)
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
                    section = params_section(
                        ctx,
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
                    backend = PtlflowBackend.from_params(section, WeightsParams(**weights_overrides(ctx)))
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

                    def bare() -> None:
                        outputs[:] = [backend.forward(x) for x in inputs]

                    counter = itertools.count()

                    def stage() -> None:
                        flow_stage(episodes, root / f"out-{model}-{fp16}-{next(counter)}", section, backend)

                    if s.warm_up:
                        bare()  # the first ptlflow calls are slow (cudnn autotune, allocations)
                    bare_s, stage_s = best_of([bare, stage], s.repeats, sync)
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
                    del backend, inputs, outputs
                except Exception as exc:  # one configuration's failure must not lose the others' figures
                    ctx.report.error("flow", name, exc)
                if ctx.cuda:
                    torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# 2. CLIP
# --------------------------------------------------------------------------------------------
def section_clip(ctx: Ctx) -> None:
    import numpy as np
    import torch

    from pipeline.config import WeightsParams
    from pipeline.encode.clip import load_clip

    s = ctx.sizes
    sync = cuda_sync(ctx)
    if ctx.tiny:
        ctx.report.skip("clip", "ViT-B-32 fp16", f"{NEEDS_CUDA} (fp16); --cpu-tiny measures {s.clip_model} in fp32")
    section = params_section(
        ctx,
        "encode",
        clip_model=s.clip_model,
        weights="random",
        batch_size=s.clip_batch,
        device="auto",
        fp16=True,
        shard_maxcount=100_000,
    )
    encoder = load_clip(section, WeightsParams(**weights_overrides(ctx)))
    precision = "fp16" if ctx.cuda else "fp32"
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (s.clip_frames, 84, 84, 3), dtype=np.uint8)
    texts = [
        f"a cheetah runs {i} steps to the {'left' if i % 2 else 'right'} of the floor" for i in range(s.clip_frames)
    ]
    model = encoder.model
    cfg = encoder.preprocess_cfg
    side = cfg["size"] if isinstance(cfg["size"], int) else cfg["size"][0]
    autocast = lambda: torch.autocast(encoder.device.type, dtype=torch.float16, enabled=ctx.cuda)  # noqa: E731
    images = [
        torch.rand(len(frames[i : i + s.clip_batch]), 3, side, side, device=encoder.device)
        for i in range(0, len(frames), s.clip_batch)
    ]
    tokens = [
        encoder.tokenizer(texts[i : i + s.clip_batch]).to(encoder.device) for i in range(0, len(texts), s.clip_batch)
    ]

    def bare_images() -> None:
        with torch.inference_mode(), autocast():
            for x in images:
                model.encode_image(x, normalize=True)

    def bare_texts() -> None:
        with torch.inference_mode(), autocast():
            for t in tokens:
                model.encode_text(t, normalize=True)

    out: dict[str, Any] = {}
    if s.warm_up:  # cudnn autotune, allocations
        bare_images()
        bare_texts()
        encoder.encode_images(frames[: s.clip_batch])
        encoder.encode_texts(texts[: s.clip_batch])
    bi, li, bt, lt = best_of(
        [
            bare_images,
            lambda: out.update(img=encoder.encode_images(frames)),
            bare_texts,
            lambda: out.update(txt=encoder.encode_texts(texts)),
        ],
        s.repeats,
        sync,
    )
    n = len(frames)
    norms = np.linalg.norm(out["img"], axis=1)
    name = f"{s.clip_model} {precision}, batch {s.clip_batch}, {n} 84px frames (resized to {side})"
    ctx.report.ok(
        "clip",
        f"{name}: images",
        {"library_images_s": n / li, "bare_images_s": n / bi, "library_over_bare": bi / li},
        finite=bool(np.isfinite(out["img"]).all()),
        unit_norm=bool(np.allclose(norms, 1.0, atol=1e-2)),
        dim=int(out["img"].shape[1]),
    )
    ctx.report.ok(
        "clip",
        f"{name}: texts",
        {"library_texts_s": n / lt, "bare_texts_s": n / bt, "library_over_bare": bt / lt},
        finite=bool(np.isfinite(out["txt"]).all()),
    )
    # the encode stage on episode files (PNG/npy encoding, statistics and tar writing included)
    per_episode = max(2, s.clip_frames // 16)
    inputs = synthetic_inputs(ctx.work / "clip-inputs", "clipcheck", 4, per_episode - 1, 84, every_k=5)
    frames_in = 4 * per_episode
    stage_s = best_of(
        [lambda: encode_stage(inputs, ctx.work / f"clip-ds-{time.monotonic_ns()}", section, encoder)], s.repeats, sync
    )[0]
    ctx.report.ok(
        "clip",
        f"encode stage ({s.clip_model} {precision}, {frames_in} frames + their texts)",
        {
            "stage_frames_s": frames_in / stage_s,
            "bare_images_s": n / bi,
            "stage_over_bare": (frames_in / stage_s) / (n / bi),
        },
    )
    del encoder, model, images, tokens
    if ctx.cuda:
        torch.cuda.empty_cache()


# --------------------------------------------------------------------------------------------
# 3. VLM
# --------------------------------------------------------------------------------------------
def build_llava(scale: str, folder: Path) -> tuple[Path, int]:
    """Save a random Llava model (``tiny``: the library's; ``0.5b``: ViT-B/14 at 336 px + a Qwen2-0.5B-shaped
    Llama, about 0.45B parameters, bf16, built on CUDA) with its processor into ``folder``; returns it and its size."""
    import torch

    from pipeline.annotate.tiny_vlm import CHAT_TEMPLATE, build_tiny_vlm

    model, processor = build_tiny_vlm()
    if scale != "tiny":
        from transformers import (
            CLIPImageProcessor,
            CLIPVisionConfig,
            LlamaConfig,
            LlavaConfig,
            LlavaForConditionalGeneration,
            LlavaProcessor,
        )

        tokenizer = processor.tokenizer
        processor = LlavaProcessor(
            image_processor=CLIPImageProcessor(
                size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, do_center_crop=True
            ),
            tokenizer=tokenizer,
            patch_size=14,
            vision_feature_select_strategy="default",
            chat_template=CHAT_TEMPLATE,
            image_token="<image>",
            num_additional_image_tokens=1,
        )
        config = LlavaConfig(
            vision_config=CLIPVisionConfig(
                hidden_size=768,
                intermediate_size=3072,
                num_hidden_layers=12,
                num_attention_heads=12,
                image_size=336,
                patch_size=14,
                projection_dim=768,
            ),
            text_config=LlamaConfig(
                vocab_size=len(tokenizer),
                hidden_size=896,
                intermediate_size=4864,
                num_hidden_layers=24,
                num_attention_heads=14,
                num_key_value_heads=2,
                max_position_embeddings=2048,
                pad_token_id=tokenizer.pad_token_id,
                bos_token_id=tokenizer.bos_token_id,
                eos_token_id=tokenizer.eos_token_id,
            ),
            image_token_index=tokenizer.convert_tokens_to_ids("<image>"),
            vision_feature_select_strategy="default",
            pad_token_id=tokenizer.pad_token_id,
        )
        torch.manual_seed(0)
        with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
            model = LlavaForConditionalGeneration(config)
        model = model.to(torch.bfloat16).eval()
        model.generation_config.pad_token_id = tokenizer.pad_token_id
        model.generation_config.eos_token_id = (
            None  # random weights: every answer runs to max_new_tokens (same work per frame)
        )
    else:
        model.generation_config.eos_token_id = None
    params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    del model
    return folder, params


def section_vlm(ctx: Ctx) -> None:
    import numpy as np
    import torch

    s = ctx.sizes
    sync = cuda_sync(ctx)
    steps = s.vlm_frames - 1
    episodes, _, _ = synthetic_inputs(ctx.work / "vlm-inputs", "vlmcheck", 1, steps, 84, every_k=4)
    episodes = episodes / "vlmcheck"
    frames = [f for e in episode_frames(episodes) for f in e]
    n = len(frames)
    try:
        vlm_transformers(ctx, episodes, frames, sync)
    except Exception as exc:
        ctx.report.error("vlm", "transformers backend", exc)
    if ctx.cuda:
        torch.cuda.empty_cache()
    # the OpenAI-compatible path against a local stand-in server
    import requests

    from pipeline.annotate.openai_backend import png_data_url

    openai_frames = frames[: s.openai_frames]
    with chat_server() as server:
        url = f"{server.base_url}/chat/completions"
        session = requests.Session()
        concurrency = 8

        def post(frame: np.ndarray) -> None:
            body = {
                "model": server.model,
                "messages": [
                    {
                        "role": "user",
                        "content": [
                            {"type": "text", "text": "x"},
                            {"type": "image_url", "image_url": {"url": png_data_url(frame)}},
                        ],
                    }
                ],
            }
            session.post(url, json=body, timeout=60).json()

        def bare() -> None:
            with ThreadPoolExecutor(concurrency) as pool:
                list(pool.map(post, openai_frames))

        counter = itertools.count()
        result: dict[str, Any] = {}

        def stage() -> None:
            k = next(counter)
            section = params_section(
                ctx,
                "annotate",
                backend="openai",
                model=server.model,
                base_url=server.base_url,
                every_k=1,
                concurrency=concurrency,
                max_retries=0,
                cache_dir=str(ctx.work / f"vlm-http-cache-{k}"),
            )
            result["summary"] = annotate_stage(episodes, ctx.work / f"vlm-http-{k}", section, ctx)

        bare_s, stage_s = best_of([bare, stage], s.repeats, sync)
    stage_n = n  # the stage annotates every frame of the episode (every_k 1)
    ok = summary_metric(result.get("summary"), "ok")
    ctx.report.ok(
        "vlm",
        f"openai backend, local stand-in server on 127.0.0.1, {concurrency} in flight",
        {
            "stage_frames_s": stage_n / stage_s,
            "bare_frames_s": len(openai_frames) / bare_s,
            "stage_over_bare": (stage_n / stage_s) / (len(openai_frames) / bare_s),
        },
        frames=stage_n,
        ok_frames=ok,
    )


def summary_metric(summary: Any, key: str) -> Any:
    """``key`` of a stage summary's metrics (:meth:`pipeline.common.stage.StageSummary.metrics`), None when absent."""
    metrics = summary.metrics() if callable(getattr(summary, "metrics", None)) else {}
    return _find(metrics, key)


def vlm_transformers(ctx: Ctx, episodes: Path, frames: list[Any], sync: Callable[[], None]) -> None:
    import torch
    from PIL import Image
    from transformers import AutoModelForImageTextToText, AutoProcessor

    s = ctx.sizes
    n = len(frames)
    folder, n_params = build_llava(s.vlm_scale, ctx.work / f"llava-{s.vlm_scale}")
    dtype = "bf16" if ctx.cuda else "fp32"
    if ctx.tiny:
        ctx.report.skip(
            "vlm",
            "random Llava ~0.5B in bf16",
            f"{NEEDS_CUDA} (bf16 on CUDA; --cpu-tiny runs the library's tiny random VLM in fp32)",
        )
    label = f"random Llava {n_params / 1e9:.2f}B params, {dtype}, {s.vlm_new_tokens} new tokens"
    section = params_section(
        ctx,
        "annotate",
        backend="transformers",
        model=str(folder),
        device="auto",
        batch_size=s.vlm_batch,
        max_new_tokens=s.vlm_new_tokens,
        max_retries=0,
        every_k=1,
        max_failure_rate=1.0,
    )
    from pipeline.common.device import select_device

    device = select_device("auto")
    processor = AutoProcessor.from_pretrained(folder)
    processor.tokenizer.padding_side = "left"
    net = AutoModelForImageTextToText.from_pretrained(folder).to(device)
    if device.type == "cuda":
        net = net.to(torch.bfloat16)
    net.eval()
    prompt = section.prompt.format(task="vlmcheck")
    text = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]}],
        add_generation_prompt=True,
        tokenize=False,
    )

    def bare(batch: int, count: int = n) -> Callable[[], None]:
        def run() -> None:
            with torch.inference_mode():
                for i in range(0, count, batch):
                    chunk = frames[i : min(i + batch, count)]
                    inputs = processor(
                        images=[Image.fromarray(f) for f in chunk],
                        text=[text] * len(chunk),
                        padding=True,
                        return_tensors="pt",
                    ).to(device)
                    if inputs["pixel_values"].is_floating_point():
                        inputs["pixel_values"] = inputs["pixel_values"].to(net.dtype)
                    out = net.generate(**inputs, max_new_tokens=s.vlm_new_tokens, do_sample=False)
                    processor.batch_decode(out[:, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

        return run

    if s.warm_up:
        bare(s.vlm_batch)()
    few = min(n, 8)  # batch 1 on a few frames only: one generate call per frame is slow
    one_s, batched_s = best_of([bare(1, few), bare(s.vlm_batch)], s.repeats, sync)
    del net
    if ctx.cuda:
        torch.cuda.empty_cache()
    counter = itertools.count()
    summary: dict[str, Any] = {}

    def stage() -> None:
        k = next(counter)
        sec = section.model_copy(update={"cache_dir": str(ctx.work / f"vlm-tf-cache-{k}")})
        summary["s"] = annotate_stage(episodes, ctx.work / f"vlm-tf-{k}", sec, ctx, backend=backend)

    from pipeline.annotate.base import create_backend
    from pipeline.config import WeightsParams

    backend = create_backend(section, WeightsParams(**weights_overrides(ctx)))
    backend_dtype = str(getattr(getattr(backend, "net", None), "dtype", None))
    try:
        stage_s = best_of([stage], s.repeats, sync)[0]
    finally:
        backend.close()
    ctx.report.ok(
        "vlm",
        f"transformers backend, {label}, batch {s.vlm_batch}",
        {
            "stage_frames_s": n / stage_s,
            "bare_frames_s": n / batched_s,
            "bare_batch1_frames_s": few / one_s,
            "stage_over_bare": batched_s / stage_s,
            "batching_speedup": (n / batched_s) / (few / one_s),
        },
        frames=n,
        parameters=n_params,
        backend_dtype=backend_dtype,
        ok_frames=summary_metric(summary.get("s"), "ok"),
    )


# --------------------------------------------------------------------------------------------
# 4. Pretraining
# --------------------------------------------------------------------------------------------
def section_pretrain(ctx: Ctx) -> None:
    import torch

    s = ctx.sizes
    sync = cuda_sync(ctx)
    dataset = synthetic_dataset(
        ctx.work / "pretrain-ds", s.pretrain_episodes, s.pretrain_steps_per_episode, s.pretrain_size
    )
    section = params_section(
        ctx,
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
        from pipeline.pretrain.losses import term_weights
        from pipeline.pretrain.run import backbone_config
        from pipeline.pretrain.trainer import make_optimizer, train

        info = open_dataset(dataset)
        train_shards = info.shards["train"]
        device = ctx.device
        weights = term_weights(
            section.weight_clip_image,
            section.weight_clip_text,
            section.weight_flow,
            section.weight_reward,
            section.weight_clip_motion,
        )
        kwargs = dict(
            weights=weights,
            clip_loss=section.clip_loss,
            temperature=section.temperature,
            device=device,
            flow_input=section.flow_input,
            show_progress=False,
        )

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

        bare_s, stage_s, loader_s = best_of([bare, stage, loader_only], s.repeats, sync)
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
        del model, opt, model2, opt2, it
    except Exception as exc:
        ctx.report.error("pretrain", "training loop throughput", exc)
    if ctx.cuda:
        torch.cuda.empty_cache()
    # the stage itself: one process, then under torchrun with one process
    overrides = {"pretrain": section.model_dump(mode="json"), "weights": weights_overrides(ctx)}
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
        runs[mode] = {"wall": wall, "loss": _total_loss(metrics), **ddp}
    if "single" in runs and "torchrun" in runs:
        a, b = runs["single"]["loss"], runs["torchrun"]["loss"]
        diff = abs(a - b) / max(abs(a), 1e-12)
        tol = 1e-3 if ctx.cuda else 1e-6
        ddp = runs["torchrun"]
        ctx.report.ok(
            "pretrain",
            f"pretrain stage (CLI) {s.pretrain_cli_steps} steps at batch {s.pretrain_batch}: one process vs torchrun --nproc_per_node 1",
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
            "(pipeline.pretrain.trainer.distributed_context): the torchrun run checks the launch path and the loss, and "
            f"the {ddp.get('backend')} process group is checked by the worker itself (an all-reduce and one DDP step "
            "of PretrainModel) before it calls the stage.",
        )


def _total_loss(metrics: dict[str, Any]) -> float:
    loss = metrics.get("loss", metrics)
    if isinstance(loss, dict) and "total" in loss:
        return float(loss["total"])
    raise KeyError(f"no loss.total in the pretrain metrics: {sorted(metrics)}")


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
        str(Path(__file__).resolve()),
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
    """Under torchrun: join the process group (nccl on CUDA, gloo on the CPU), all-reduce, one DDP step, then run the stage."""
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


# --------------------------------------------------------------------------------------------
# 5. SAC
# --------------------------------------------------------------------------------------------
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


def sac_updates(
    ctx: Ctx, encoder: Any, batch: int, *, channels_last: bool, bf16: bool, compile_: bool
) -> tuple[float, float, bool]:
    """(updates/s, seconds of the warm-up updates (compile included), losses finite) of SAC with ``encoder``."""
    import numpy as np
    import torch

    from pipeline.finetune.replay_buffer import ReplayBuffer
    from pipeline.finetune.sac import SAC

    s = ctx.sizes
    sync = cuda_sync(ctx)
    size, stack = s.sac_image, 3
    section = params_section(ctx, "finetune", batch_size=batch, hidden_dim=s.sac_hidden, device="auto")
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

    sync()
    start = time.perf_counter()
    for _ in range(3 if ctx.cuda else 1):  # warm-up: compile, cudnn autotune, allocations
        update()
    sync()
    warm = time.perf_counter() - start
    seconds = best_of([lambda: [update() for _ in range(s.sac_updates)]], 1, sync)[0]
    finite = all(math.isfinite(v) for v in info.values())
    return s.sac_updates / seconds, warm, finite


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
            f"(anchor: DrQ-v2 ~{DRQV2_V100_FPS:.0f} frames/s on a V100, about {DRQV2_V100_UPS:.0f} updates/s at batch 256).",
        )


def online_run(ctx: Ctx, config: dict[str, Any], best: dict[str, float]) -> None:
    """A short online finetune run on the gymnasium task (EGL rendering) against the bare environment."""
    from models.backbone import DualPathBackbone
    from models.checkpoint import save_module

    s = ctx.sizes
    folder = ctx.work / "sac-backbone"
    save_module(
        folder / "backbone", DualPathBackbone(**config), config, {"stage": "gpu_check", "note": "random weights"}
    )
    section = params_section(
        ctx,
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
        eval_return=_find(result.metrics(), "return_mean"),
        updates=t["updates"],
        anchor=f"DrQ-v2 ~{DRQV2_V100_FPS:.0f} frames/s on a V100",
    )


# --------------------------------------------------------------------------------------------
# 6. End to end through the CLI, device auto
# --------------------------------------------------------------------------------------------
def section_e2e(ctx: Ctx) -> None:
    s = ctx.sizes
    root = ctx.work / "e2e"
    data = root / "data"
    root.mkdir(parents=True, exist_ok=True)
    overrides: dict[str, dict[str, Any]] = {
        "weights": weights_overrides(ctx),
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
            "--cpu-tiny: the flow stage uses the simulator backend here (section 1 runs ptlflow on the CPU); the GPU run uses raft_small fp16",
        )
    common = ["--log-level", "WARNING"]
    stages = [
        ("collect", ["--params", str(params), "collect", "--task", TASK, "--out", str(data / "episodes" / TASK)]),
        (
            "flow",
            [
                "--params",
                str(params),
                "flow",
                "--episodes",
                str(data / "episodes" / TASK),
                "--out",
                str(data / "flow" / TASK),
                "--metrics",
                str(data / "metrics" / "flow.json"),
            ],
        ),
        (
            "annotate-vlm",
            [
                "--params",
                str(vlm_params),
                "annotate",
                "--episodes",
                str(data / "episodes" / TASK),
                "--out",
                str(data / "annotations-vlm" / TASK),
                "--metrics",
                str(data / "metrics" / "annotate-vlm.json"),
            ],
        ),
        (
            "annotate",
            [
                "--params",
                str(params),
                "annotate",
                "--episodes",
                str(data / "episodes" / TASK),
                "--out",
                str(data / "annotations" / TASK),
                "--metrics",
                str(data / "metrics" / "annotate.json"),
            ],
        ),
        (
            "encode",
            [
                "--params",
                str(params),
                "encode",
                "--episodes",
                str(data / "episodes"),
                "--flow",
                str(data / "flow"),
                "--annotations",
                str(data / "annotations"),
                "--out",
                str(data / "dataset"),
            ],
        ),
        (
            "pretrain",
            [
                "--params",
                str(params),
                "pretrain",
                "--dataset",
                str(data / "dataset"),
                "--out",
                str(data / "pretrain"),
                "--metrics",
                str(data / "metrics" / "pretrain.json"),
                "--plots",
                str(data / "plots"),
            ],
        ),
    ]
    from pipeline.common.device import select_device

    resolved = str(select_device("auto"))
    frames = 2 * (s.e2e_steps + 1)
    for name, argv in stages:
        if ctx.budget.spent:
            ctx.report.skip("e2e", name, BUDGET)
            continue
        start = time.perf_counter()
        try:
            rc = cli(common + argv)
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
    """What each stage's outputs say about the device and precision it ran with (best effort: provenance keys may move)."""
    try:
        if stage == "flow":
            import numpy as np

            first = sorted((data / "flow" / TASK).glob("episode_*.npz"))[0]
            with np.load(first, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
                finite = bool(np.isfinite(npz["flow"].astype(np.float32)).all())
            return {"precision": _find(meta, "precision"), "flow_finite": finite}
        if stage == "encode":
            stats = json.loads((data / "dataset" / "stats.json").read_text())
            return {"clip_precision": _find(stats, "precision")}
        if stage == "pretrain":
            metrics = json.loads((data / "metrics" / "pretrain.json").read_text())
            return {"loss_total": _total_loss(metrics)}
    except (OSError, KeyError, IndexError, ValueError) as exc:
        return {"provenance": f"not read ({type(exc).__name__}: {exc})"}
    return {}


def _find(tree: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a JSON tree, or None."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = _find(item, key)
            if found is not None:
                return found
    return None


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------
def egl_renderer() -> str:
    """The OpenGL renderer MuJoCo's EGL context gets (NVIDIA on the GPU machine, llvmpipe on CPU machines)."""
    try:
        import mujoco
        from OpenGL import GL

        context = mujoco.GLContext(16, 16)
        context.make_current()
        try:
            return GL.glGetString(GL.GL_RENDERER).decode()
        finally:
            context.free()
    except Exception as exc:  # reported, not fatal: the online SAC row says whether rendering works
        return f"unknown ({type(exc).__name__}: {exc})"


RUNNERS: dict[str, Callable[[Ctx], None]] = {
    "flow": section_flow,
    "clip": section_clip,
    "vlm": section_vlm,
    "pretrain": section_pretrain,
    "sac": section_sac,
    "e2e": section_e2e,
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--ddp-worker"]:
        rest = argv[3:] if argv[2:3] == ["--"] else argv[2:]
        return ddp_worker(Path(argv[1]), rest)
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
        help="wall-clock budget in s; later measurements are skipped once it is spent (default: 420 on CUDA, none in --cpu-tiny)",
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
        "versions": _versions(),
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


def _versions() -> dict[str, str]:
    from importlib import metadata

    out = {}
    for name in (
        "torch",
        "torchvision",
        "transformers",
        "timm",
        "open_clip_torch",
        "ptlflow",
        "mujoco",
        "gymnasium",
        "webdataset",
        "pydantic",
        "numpy",
        "lightning",
    ):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


if __name__ == "__main__":
    sys.exit(main())
