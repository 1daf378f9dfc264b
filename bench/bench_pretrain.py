"""Benchmark of the pretrain stage: training samples/s and the loader's samples/s, in the same run.

A dataset is written first (not timed) with the encode stage's own code (synthetic moving-square
episodes, tiny random CLIP), unless ``--dataset`` names an existing one (e.g. data/dataset).
Then, with the stage's params (``--params``, section ``pretrain``; flags override):

* loader: samples/s of the stage's loader alone (``make_loader``: tar reading, PNG/npy decoding,
  frame stacking, shuffling, workers), against a bare baseline that only reads the tar members
  (``webdataset`` ``tarfile_to_samples``, no decoding, one process);
* training: samples/s of the stage's training loop fed by that loader, against bare training on
  one in-memory batch (the same model, losses and optimiser: the loop with nothing to wait for).

The loader is not the bottleneck when "loader / training" is well above 1 and "training / bare
training" is close to 1.

    .venv/bin/python bench/bench_pretrain.py [--steps 20] [--batch-size 16] [--workers 1] [--torch-threads 2]
        [--dataset data/dataset]
"""

from __future__ import annotations

import argparse
import itertools
import logging
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT)]


def write_dataset(root: Path, size: int, episodes: int, length: int) -> Path:
    from pipeline.config import EncodeParams, WeightsParams
    from pipeline.encode.run import run as build_dataset
    from tests.support.datasets import write_synthetic_inputs

    inputs = write_synthetic_inputs(
        root / "inputs",
        tasks=("cartpole-swingup", "cheetah-run"),
        episodes=episodes,
        length=length,
        size=size,
        every_k=10,
    )
    build_dataset(*inputs, root / "dataset", EncodeParams(val_fraction=0.25, shard_maxcount=200), WeightsParams())
    return root / "dataset"


def rate(samples: int, seconds: float) -> float:
    return samples / seconds if seconds > 0 else float("inf")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--dataset", default=None, help="an encoded dataset folder (default: write a synthetic one)")
    parser.add_argument("--size", type=int, default=84, help="frame size of the synthetic dataset")
    parser.add_argument("--episodes", type=int, default=4, help="synthetic episodes per task")
    parser.add_argument("--length", type=int, default=100, help="synthetic episode length (steps)")
    parser.add_argument("--steps", type=int, default=20, help="timed training steps")
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--workers", type=int, default=None)
    parser.add_argument("--device", default=None)
    parser.add_argument("--torch-threads", type=int, default=2)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import torch
    import webdataset as wds

    from models.heads import PretrainModel
    from pipeline.common.device import select_device
    from pipeline.config import load_params
    from pipeline.dataset import open_dataset
    from pipeline.dataset.stacked import make_loader
    from pipeline.pretrain.run import backbone_config, loss_arguments
    from pipeline.pretrain.trainer import make_optimizer, train

    torch.set_num_threads(args.torch_threads)
    overrides = {
        k: v
        for k, v in {"batch_size": args.batch_size, "workers": args.workers, "device": args.device}.items()
        if v is not None
    }
    params = load_params(args.params).pretrain.model_copy(update=overrides)
    device = select_device(params.device)

    with tempfile.TemporaryDirectory() as tmp:
        dataset = (
            Path(args.dataset) if args.dataset else write_dataset(Path(tmp), args.size, args.episodes, args.length)
        )
        info = open_dataset(dataset)
        batch = params.batch_size
        n_batches = args.steps

        # loader alone (first batch excluded: worker start-up)
        loader = make_loader(
            info.shards["train"],
            params.frame_stack,
            batch,
            workers=params.workers,
            seed=params.seed,
            shuffle_buffer=params.shuffle_buffer,
            repeat=True,
        )
        it = iter(loader)
        next(it)
        start = time.perf_counter()
        for _ in range(n_batches):
            next(it)
        loader_s = time.perf_counter() - start
        del it

        # bare reading: tar members only, one pass of the train split (repeated to the same count)
        start = time.perf_counter()
        count = 0
        while count < n_batches * batch:
            for _ in wds.DataPipeline(
                wds.SimpleShardList([str(s) for s in info.shards["train"]]), wds.tarfile_to_samples()
            ):
                count += 1
                if count >= n_batches * batch:
                    break
        bare_read_s = time.perf_counter() - start

        def model_and_optimizer() -> tuple[PretrainModel, torch.optim.Optimizer]:
            torch.manual_seed(params.seed)
            model = PretrainModel(
                backbone=backbone_config(params, info), clip_dim=info.embed_dim, head_hidden=params.head_hidden
            ).to(device)
            return model, make_optimizer(model, params.optimizer, params.lr, params.weight_decay)

        kwargs = dict(loss_arguments(params, info, device), show_progress=False)

        # bare training: one in-memory batch, repeated (warm-up step excluded)
        model, optimizer = model_and_optimizer()
        one = next(iter(make_loader(info.shards["train"], params.frame_stack, batch, workers=0, repeat=True)))
        train(model, iter([one]), steps=1, optimizer=optimizer, **kwargs)
        start = time.perf_counter()
        train(model, itertools.repeat(one), steps=n_batches, optimizer=optimizer, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        bare_train_s = time.perf_counter() - start

        # stage training: the loop fed by the stage's loader (worker start-up and warm-up step excluded)
        model, optimizer = model_and_optimizer()
        it = iter(
            make_loader(
                info.shards["train"],
                params.frame_stack,
                batch,
                workers=params.workers,
                seed=params.seed,
                shuffle_buffer=params.shuffle_buffer,
                repeat=True,
            )
        )
        train(model, it, steps=1, optimizer=optimizer, **kwargs)
        start = time.perf_counter()
        train(model, it, steps=n_batches, optimizer=optimizer, **kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize()
        train_s = time.perf_counter() - start

    samples = n_batches * batch
    loader_rate, read_rate = rate(samples, loader_s), rate(samples, bare_read_s)
    train_rate, bare_rate = rate(samples, train_s), rate(samples, bare_train_s)
    print(
        f"pretrain bench: {info.image_size}px, frame_stack {params.frame_stack}, batch {batch}, "
        f"workers {params.workers}, device {device}, torch threads {args.torch_threads}, {n_batches} batches"
    )
    print(f"  loader (stage)          {loader_rate:10.1f} samples/s")
    print(f"  bare tar reading        {read_rate:10.1f} samples/s   stage/bare = {loader_rate / read_rate:.3f}")
    print(f"  training (stage loop)   {train_rate:10.1f} samples/s")
    print(f"  bare training (memory)  {bare_rate:10.1f} samples/s   stage/bare = {train_rate / bare_rate:.3f}")
    print(f"  loader / training       {loader_rate / train_rate:10.2f}x   (> 1: the loader is not the bottleneck)")


if __name__ == "__main__":
    main()
