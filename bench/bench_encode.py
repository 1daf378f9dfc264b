"""Benchmark of the encode stage: shard read throughput and encode throughput, each next to a bare baseline.

1. Encode (frames/s): the encode stage (``pipeline.encode.run.run``) on synthetic inputs in the fixed upstream formats
   (CLIP model preloaded; loading episodes, flow and annotations, CLIP, PNG/npy/JSON
   encoding, statistics, tar writing, card) against bare CLIP image encoding of the same
   frames (``encode_images`` on frames already in memory), measured in the same run.
2. Shard read (samples/s decoded): ``webdataset.WebDataset(...).decode(<KITTI flow handler>, "rgb8")``
   through a torch ``DataLoader`` with N loader workers (every field decoded: two PNGs, ``clip.npy``, JSON),
   against a bare read of the same tar files (``tarfile``, member bytes only, no decoding).

3. Size: bytes per frame in the shards (tar headers included) and per field.

The pretrain stage's consumption rate is the figure to compare the read rate with
(``bench/bench_pretrain.py`` reports it).

    .venv/bin/python bench/bench_encode.py [--episodes 4] [--steps 100] [--size 84] [--workers 0,1,2]
        [--dataset DIR] [--clip-model ViT-B-32]

The ratio in part 1 depends on the CLIP model: the stage's own work per frame (PNG, npy, JSON,
statistics, tar) is fixed, so the smaller the model the lower the ratio. ``--clip-model ViT-B-32``
measures it at the full-scale configuration's architecture (random weights).
"""

from __future__ import annotations

import argparse
import logging
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.common.rendering import setup_headless_rendering  # noqa: E402

setup_headless_rendering()  # before anything opens an EGL context (it preloads triton)


def bare_tar_read(shards: list[Path]) -> int:
    """Samples in ``shards``, reading every member's bytes and nothing else."""
    keys = 0
    for shard in shards:
        last = None
        with tarfile.open(shard, "r|") as tar:
            for member in tar:
                handle = tar.extractfile(member)
                if handle is not None:
                    handle.read()
                key = member.name.split(".", 1)[0]
                if key != last:
                    keys, last = keys + 1, key
    return keys


def loader_read(shards: list[Path], workers: int) -> int:
    """Samples decoded by webdataset through a DataLoader with ``workers`` processes."""
    import webdataset as wds
    from torch.utils.data import DataLoader

    dataset = wds.WebDataset([str(s) for s in shards], shardshuffle=False, nodesplitter=None, empty_check=False).decode(
        _kitti_flow, "rgb8"
    )
    loader = DataLoader(dataset, batch_size=None, num_workers=workers, collate_fn=lambda x: x)
    count = 0
    for sample in loader:
        assert sample["rgb.png"].ndim == 3 and sample["flow.png"][0].shape[0] == 2 and "annotation" in sample["json"]
        count += 1
    return count


def _kitti_flow(key: str, data: bytes):
    """webdataset handler for the 16-bit flow PNG (its default PNG decoder keeps 8 bits)."""
    from pipeline.dataset.codec import decode_flow_png

    return decode_flow_png(data) if key.lstrip(".") == "flow.png" else None


def bytes_per_frame(shards: list[Path]) -> tuple[float, dict[str, float]]:
    """Shard bytes per sample (tar headers included) and payload bytes per sample of each field."""
    sizes: dict[str, int] = {}
    keys = set()
    for shard in shards:
        with tarfile.open(shard) as tar:
            for member in tar:
                key, field = member.name.split(".", 1)
                keys.add(key)
                sizes[field] = sizes.get(field, 0) + member.size
    n = max(len(keys), 1)
    return sum(s.stat().st_size for s in shards) / n, {f: v / n for f, v in sorted(sizes.items())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", default="cartpole-swingup,cheetah-run")
    parser.add_argument("--episodes", type=int, default=4, help="episodes per task")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--shard-maxcount", type=int, default=100, help="small shards so every loader worker gets some")
    parser.add_argument("--workers", default="0,1,2", help="loader worker counts to measure")
    parser.add_argument("--repeats", type=int, default=2, help="read passes per setting (best is reported)")
    parser.add_argument(
        "--clip-model",
        default=None,
        help="open_clip architecture with random weights (the speed does not depend on them), e.g. ViT-B-32, "
        "the full-scale configuration's; default: encode.clip_model's default (the tiny offline one)",
    )
    parser.add_argument("--torch-threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument(
        "--dataset", default=None, help="read an existing dataset folder instead of building one (skips part 1)"
    )
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import huggingface_hub  # noqa: F401  (imported before timing: the figures are steady-state rates)
    import numpy as np
    import torch
    import webdataset  # noqa: F401

    from pipeline.config import EncodeParams, WeightsParams
    from pipeline.encode.clip import load_clip
    from pipeline.encode.run import run as build_dataset
    from pipeline.sim.episodes import list_episodes, load_episode
    from tests.support.datasets import write_synthetic_inputs

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    print(f"# torch {torch.__version__}, {torch.get_num_threads()} CPU threads, CUDA {torch.cuda.is_available()}")
    with tempfile.TemporaryDirectory(prefix="bench_encode_") as tmp:
        if args.dataset:
            dataset = Path(args.dataset)
        else:
            tasks = tuple(args.tasks.split(","))
            inputs = write_synthetic_inputs(Path(tmp), tasks, args.episodes, args.steps, args.size, every_k=10)
            params = EncodeParams(
                shard_maxcount=args.shard_maxcount,
                **({"clip_model": args.clip_model, "weights": "random"} if args.clip_model else {}),
            )
            encoder = load_clip(params, WeightsParams())
            frames = np.concatenate(
                [load_episode(p, ["frames"]).frames for t in tasks for p in list_episodes(inputs[0] / t)]
            )
            encoder.encode_images(frames[: params.batch_size])  # warm-up
            start = time.perf_counter()
            encoder.encode_images(frames)
            bare = len(frames) / (time.perf_counter() - start)
            dataset = Path(tmp) / "dataset"
            start = time.perf_counter()
            summary = build_dataset(*inputs, dataset, params, WeightsParams(), encoder=encoder)
            stage = summary.samples / (time.perf_counter() - start)
            print(
                f"encode  {summary.samples} frames {args.size}x{args.size}, "
                f"CLIP {params.clip_model} (dim {encoder.dim}), batch {params.batch_size}"
            )
            print(f"  bare CLIP image encoding : {bare:9.1f} frames/s")
            print(f"  encode stage (library)   : {stage:9.1f} frames/s   ratio {stage / bare:.2f}")

        shards = sorted(dataset.glob("*/shard-*.tar"))
        size_mb = sum(s.stat().st_size for s in shards) / 1e6
        best = lambda fn: max(fn() for _ in range(args.repeats))  # noqa: E731

        def rate(fn) -> float:
            def once() -> float:
                start = time.perf_counter()
                n = fn()
                return n / (time.perf_counter() - start)

            return best(once)

        per_frame, fields = bytes_per_frame(shards)
        print(
            f"size    {per_frame:,.0f} bytes per frame (tar) = "
            + ", ".join(f"{f} {v:,.0f}" for f, v in fields.items())
            + " + tar headers"
        )
        bare_rate = rate(lambda: bare_tar_read(shards))
        print(f"read    {len(shards)} shards, {size_mb:.1f} MB")
        print(f"  bare tar read (no decode): {bare_rate:9.1f} samples/s")
        for workers in [int(w) for w in args.workers.split(",")]:
            decoded = rate(lambda workers=workers: loader_read(shards, workers))  # called in this iteration
            print(f"  decoded, {workers} loader worker(s) : {decoded:9.1f} samples/s   ratio {decoded / bare_rate:.3f}")


if __name__ == "__main__":
    main()
