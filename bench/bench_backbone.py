"""Benchmark (not a test): the dual-path backbone's cost in SAC against a DrQ-v2-style encoder.

For each batch size, on one CPU thread (``--threads``) and without ``torch.compile``, it times:

* forward+backward: the encoder on randomly shifted (B, 3k, 84, 84) uint8 stacks, the gradient
  of the features' sum back to every encoder weight (what the critic's loss makes it do);
* full update: :meth:`pipeline.finetune.sac.SAC.update` (critic with the encoder, target, actor
  every 2nd update, temperature, target critics) on a random batch, the finetune defaults
  otherwise (hidden 256, depth 2, random shift of 4 px).

The bare baseline is the DrQ-v2 pixel encoder with the actor's trunk (4 unpadded 3x3 convs of 32
channels, the first with stride 2, then Linear -> 50, LayerNorm, tanh: ``bench_finetune.DrQEncoder``),
measured in the same run, interleaved with the backbone, and each figure is printed beside it
with the ratio (backbone / baseline: lower is better; the goal is <= 2.2 for the full update at
batch 32 and 256). Times are the fastest of ``--repeats`` rounds (on a shared machine the
minimum is the figure least disturbed by other load; medians are printed too), in CPU seconds
of this process by default (``--clock cpu``: on one thread that is the wall time of an idle
machine, and it does not count the time other processes hold the cores; ``--clock wall`` for
wall time). The last column is the spread of the full update's ratio taken within each round
(median [min, max]): on a loaded machine one run's ratio moved by up to 0.4 between runs, so read
a figure near the goal against its spread.

    python bench/bench_backbone.py                                  # default backbone vs DrQ-v2
    python bench/bench_backbone.py --variant gated='{"interaction_kind": "gated"}' \\
        --variant off='{"interaction": false}'
    python bench/bench_backbone.py --batch-sizes 32 --channels-last
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from bench_finetune import DrQEncoder  # the bare baseline, one definition for both benchmarks
from torch import nn

from models.backbone import DualPathBackbone
from pipeline.config.finetune import FinetuneParams
from pipeline.finetune.augment import random_shift
from pipeline.finetune.sac import SAC


def random_batch(
    batch_size: int, frame_stack: int, image_size: int, action_dim: int, rng: np.random.Generator
) -> dict[str, np.ndarray]:
    """A replay batch as :meth:`ReplayBuffer.sample` returns it: uint8 stacks, float32 scalars."""
    shape = (batch_size, 3 * frame_stack, image_size, image_size)
    return {
        "obs": rng.integers(0, 256, shape, dtype=np.uint8),
        "action": rng.uniform(-1, 1, (batch_size, action_dim)).astype(np.float32),
        "reward": rng.uniform(0, 1, batch_size).astype(np.float32),
        "discount": np.full(batch_size, 0.99, np.float32),
        "terminated": np.zeros(batch_size, np.float32),
        "next_obs": rng.integers(0, 256, shape, dtype=np.uint8),
    }


class Case:
    """One encoder under test: its forward+backward step and its SAC update step, each timed per call."""

    def __init__(
        self,
        name: str,
        make: Callable[[], nn.Module],
        batch: dict[str, np.ndarray],
        params: FinetuneParams,
        channels_last: bool,
        clock: Callable[[], float],
    ) -> None:
        torch.manual_seed(0)
        self.clock = clock
        self.name = name
        self.encoder = make()
        self.agent = SAC(make(), int(batch["action"].shape[1]), params, torch.device("cpu"))
        if channels_last:
            self.encoder.to(memory_format=torch.channels_last)
            self.agent.encoder.to(memory_format=torch.channels_last)
        self.batch = batch
        self.obs = torch.from_numpy(batch["obs"])
        self.pad = params.aug_pad
        self.times: dict[str, list[float]] = {"fwd_bwd": [], "update": []}

    def forward_backward(self) -> None:
        self.encoder.zero_grad(set_to_none=True)
        self.encoder(random_shift(self.obs.float(), self.pad)).sum().backward()

    def update(self) -> None:
        self.agent.update(self.batch)

    def timed(self, what: str, fn: Callable[[], None], calls: int) -> None:
        start = self.clock()
        for _ in range(calls):
            fn()
        self.times[what].append((self.clock() - start) / calls * 1000.0)


def parse_variant(text: str) -> tuple[str, dict[str, Any]]:
    name, sep, config = text.partition("=")
    if not sep:
        raise SystemExit(f'--variant {text!r}: expected NAME=JSON, e.g. gated=\'{{"interaction_kind": "gated"}}\'')
    return name, json.loads(config)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[32, 256], help="(default: %(default)s)")
    parser.add_argument(
        "--repeats",
        type=int,
        default=5,
        help="timed rounds per figure; the fastest is the figure (default: %(default)s)",
    )
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    parser.add_argument("--frame-stack", type=int, default=3)
    parser.add_argument("--image-size", type=int, default=84)
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=JSON",
        help="a DualPathBackbone config (overrides of its defaults) to time; repeatable "
        "(default: the default backbone)",
    )
    parser.add_argument("--channels-last", action="store_true", help="run every encoder in channels_last memory format")
    parser.add_argument(
        "--clock",
        choices=["cpu", "wall"],
        default="cpu",
        help="CPU time of this process or wall time (default: %(default)s)",
    )
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    clock = time.process_time if args.clock == "cpu" else time.perf_counter
    k, size = args.frame_stack, args.image_size
    variants = [parse_variant(v) for v in args.variant] or [("dual-path (default)", {})]
    print(
        f"SAC encoder cost: {k}x3x{size}x{size} uint8 stacks, {torch.get_num_threads()} thread(s), "
        f"torch {torch.__version__}, channels_last={args.channels_last}, no torch.compile; "
        f"fastest of {args.repeats} rounds, {args.clock} ms per call"
    )
    rows = []
    for batch_size in args.batch_sizes:
        params = FinetuneParams(batch_size=batch_size)
        batch = random_batch(batch_size, k, size, 1, np.random.default_rng(0))
        cases = [Case("DrQ-v2 encoder+trunk", lambda: DrQEncoder(k, size), batch, params, args.channels_last, clock)]
        cases += [
            Case(
                name,
                lambda c=config: DualPathBackbone(frame_stack=k, image_size=size, **c),
                batch,
                params,
                args.channels_last,
                clock,
            )
            for name, config in variants
        ]
        for case in cases:  # warm-up: allocator, oneDNN kernels, optimiser state
            case.forward_backward()
            case.update()
            case.update()
        for _ in range(args.repeats):  # interleaved, so load on the machine hits every case alike
            for case in cases:
                case.timed("fwd_bwd", case.forward_backward, 1)
                case.timed("update", case.update, 2)  # the actor updates every 2nd call: time a pair
        base = {w: min(cases[0].times[w]) for w in ("fwd_bwd", "update")}
        for case in cases:
            best = {w: min(case.times[w]) for w in ("fwd_bwd", "update")}
            med = {w: statistics.median(case.times[w]) for w in ("fwd_bwd", "update")}
            params_count = sum(p.numel() for p in case.encoder.parameters())
            # The same round's times are taken back to back, so their ratio shares its load: the
            # spread of these per-round ratios says how far one run's figure can be trusted.
            rounds = sorted(u / b for u, b in zip(case.times["update"], cases[0].times["update"], strict=True))
            rows.append(
                (
                    batch_size,
                    case.name,
                    params_count,
                    best["fwd_bwd"],
                    best["fwd_bwd"] / base["fwd_bwd"],
                    best["update"],
                    best["update"] / base["update"],
                    rounds,
                )
            )
            print(
                f"  batch {batch_size}: {case.name}: "
                f"forward+backward {best['fwd_bwd']:.0f} ms (median {med['fwd_bwd']:.0f}), "
                f"full update {best['update']:.0f} ms (median {med['update']:.0f})",
                flush=True,
            )

    print(
        f"\n{'batch':>5}  {'encoder':<28} {'params':>9}  {'fwd+bwd ms':>10} {'ratio':>6}  "
        f"{'update ms':>10} {'ratio':>6}  {'per-round update ratio':>24}"
    )
    for batch_size, name, count, fb, fb_ratio, up, up_ratio, rounds in rows:
        spread = f"{statistics.median(rounds):.2f} [{rounds[0]:.2f}, {rounds[-1]:.2f}]"
        print(
            f"{batch_size:>5}  {name:<28} {count:>9,}  {fb:>10.0f} {fb_ratio:>6.2f}  "
            f"{up:>10.0f} {up_ratio:>6.2f}  {spread:>24}"
        )
    print(
        "ratio = encoder / DrQ-v2 encoder+trunk in the same run, fastest against fastest "
        "(goal for the dual-path backbone: full update <= 2.2); "
        "per-round: median [min, max] over the rounds of the ratio within one round"
    )


if __name__ == "__main__":
    main()
