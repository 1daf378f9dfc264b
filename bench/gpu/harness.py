"""What every measurement of the GPU check shares: sizes (GPU and CPU-tiny), the wall-clock budget,
the context a section gets, timing, and the pipeline functions the check calls, in one place
(update them here when the pipeline moves).
"""

from __future__ import annotations

import copy
import math
import os
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from gpu.report import Report

ROOT = Path(__file__).resolve().parents[2]
for _path in (str(ROOT), str(ROOT / "bench")):  # the project, tests.support and the bench scripts
    if _path not in sys.path:
        sys.path.insert(0, _path)
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # read when huggingface_hub is imported: before any import of it
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")


NEEDS_CUDA = "skipped: needs CUDA"
TINY = "skipped: --cpu-tiny"
BUDGET = "skipped: time budget (--budget-s) spent"
COMPILE_S = 90  # seconds a torch.compile measurement may take at most (compile included), to start it within the budget
TASK = "HalfCheetah-v5"  # a gymnasium MuJoCo task: dm_control's wheel is too big to carry


@dataclass(frozen=True)
class Sizes:
    """How big each measurement is: the defaults are the GPU run's (``GPU``), ``TINY_SIZES`` the CPU test's."""

    flow_models: tuple[str, ...] = ("raft_small", "raft")
    flow_sizes: tuple[int, ...] = (128, 256)
    flow_episodes: int = 2
    flow_steps: int = 48
    flow_batch: int = 32
    clip_model: str = "ViT-B-32"
    clip_frames: int = 1024
    clip_batch: int = 256
    vlm_scale: str = "0.5b"  # "0.5b" or "tiny"
    vlm_frames: int = 32
    vlm_batch: int = 16
    vlm_new_tokens: int = 32
    openai_frames: int = 64
    pretrain_size: int = 84
    pretrain_episodes: int = 4
    pretrain_steps_per_episode: int = 128
    pretrain_batch: int = 256
    pretrain_timed_steps: int = 10
    pretrain_cli_steps: int = 20
    pretrain_workers: int = 4
    sac_batches: tuple[int, ...] = (256, 512)
    sac_image: int = 84
    sac_hidden: int = 1024
    sac_updates: int = 20
    sac_compile: bool = True
    online_frames: int = 3000
    online_seed_frames: int = 1000
    online_episode_frames: int = 500
    online_batch: int = 256
    e2e_steps: int = 32
    e2e_size: int = 84
    e2e_clip: str = "ViT-B-32"
    e2e_pretrain_steps: int = 20
    e2e_batch: int = 32
    repeats: int = 2
    warm_up: bool = True  # one untimed call before timing (first ptlflow / cudnn / generate calls are slow)


GPU = Sizes()
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

    def sync(self) -> None:
        """Wait for the GPU's queued work (a no-op on the CPU), so that a timer measures it."""
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def best_of(self, runs: list[Callable[[], Any]], repeats: int | None = None) -> list[float]:
        """Least seconds of each ``run()`` over ``repeats`` rounds (default ``sizes.repeats``; runs alternate
        within a round)."""
        times: list[list[float]] = [[] for _ in runs]
        for _ in range(self.sizes.repeats if repeats is None else repeats):
            for run, spent in zip(runs, times, strict=True):
                self.sync()
                start = time.perf_counter()
                run()
                self.sync()
                spent.append(time.perf_counter() - start)
        return [min(t) for t in times]

    def section(self, name: str, **overrides: Any) -> Any:
        """The ``name`` section of the repository's params.yaml with ``overrides``, validated."""
        from pipeline.config import parse_params

        raw = copy.deepcopy(self.params_yaml)
        raw.setdefault(name, {}).update(overrides)
        raw.setdefault("weights", {}).update(self.weights_overrides())
        return getattr(parse_params(raw, source="gpu_check"), name)

    def weights_overrides(self) -> dict[str, Any]:
        """The ``weights`` section's overrides: random weights where none are cached, offline, a cache of its own."""
        return {"on_missing": "random", "offline": True, "cache_dir": str(self.work / "weights-cache")}

    def weights(self) -> Any:
        """:meth:`weights_overrides` as a ``WeightsParams``."""
        from pipeline.config import WeightsParams

        return WeightsParams(**self.weights_overrides())


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

    return run(episodes, out, section, ctx.weights(), backend=backend)


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


def find_key(tree: Any, key: str) -> Any:
    """The first value of ``key`` anywhere in a JSON tree, or None."""
    if isinstance(tree, dict):
        if key in tree:
            return tree[key]
        tree = list(tree.values())
    if isinstance(tree, list):
        for item in tree:
            found = find_key(item, key)
            if found is not None:
                return found
    return None


def total_loss(metrics: dict[str, Any]) -> float:
    loss = metrics.get("loss", metrics)
    if isinstance(loss, dict) and "total" in loss:
        return float(loss["total"])
    raise KeyError(f"no loss.total in the pretrain metrics: {sorted(metrics)}")


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


def versions() -> dict[str, str]:
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
