"""DDP on CPU (gloo): two processes on two halves of each batch take the one-process step."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.nn import functional as F

from models.heads import PretrainModel
from pipeline.dataset.schema import TEXT_ROWS
from pipeline.pretrain.losses import TERMS
from pipeline.pretrain.trainer import DistContext, train

TINY = dict(frame_stack=2, image_size=12, feature_dim=8, channels=4, depth=2)
CLIP_DIM = 6
STEPS = 3
BATCH = 8


def batches(seed: int = 0) -> list[dict[str, torch.Tensor]]:
    """STEPS global batches; text annotations and valid flow unevenly spread over the two halves."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(STEPS):
        text_valid = torch.rand(BATCH, generator=g) < 0.4
        text_valid[0] = True
        out.append(
            {
                "obs": torch.randint(0, 256, (BATCH, 6, 12, 12), generator=g, dtype=torch.uint8),
                "flow": torch.randn(BATCH, 2, 12, 12, generator=g),
                "flow_valid": torch.rand(BATCH, 12, 12, generator=g) < torch.linspace(0.1, 0.9, BATCH)[:, None, None],
                "clip_image": F.normalize(torch.randn(BATCH, CLIP_DIM, generator=g), dim=1),
                "clip_text": F.normalize(torch.randn(BATCH, len(TEXT_ROWS), CLIP_DIM, generator=g), dim=2)
                * text_valid[:, None, None],
                "text_valid": text_valid,
                "reward": torch.randn(BATCH, generator=g),
                "reward_valid": torch.rand(BATCH, generator=g) < 0.8,
            }
        )
    return out


def run_training(ctx: DistContext, weights: dict[str, float], clip_loss: str) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    model = PretrainModel(backbone=TINY, clip_dim=CLIP_DIM, head_hidden=16)
    half = BATCH // ctx.world_size
    local = [{k: v[ctx.rank * half : (ctx.rank + 1) * half] for k, v in b.items()} for b in batches()]
    train(
        # plain SGD: unlike Adam, it would expose a gradient that is off by a constant factor
        model,
        iter(local),
        steps=STEPS,
        optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
        weights=weights,
        clip_loss=clip_loss,
        temperature=0.2,
        device=torch.device("cpu"),
        ctx=ctx,
        grad_clip=100.0,
        show_progress=False,
    )
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


#: (clip_loss, weights) cases, run in one spawn (each child process pays torch's import once).
CASES = [
    ("infonce", {t: 1.0 for t in TERMS}),
    ("cosine", {**{t: 1.0 for t in TERMS}, "flow": 0.0}),  # a zero weight leaves a head unused
]


def _worker(rank: int, world: int, rendezvous: str, out: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world)
    try:
        for case, (clip_loss, weights) in enumerate(CASES):
            state = run_training(DistContext(rank=rank, world_size=world), weights, clip_loss)
            torch.save(state, f"{out}.{case}.{rank}")
    finally:
        dist.destroy_process_group()


def test_two_gloo_processes_match_one_process_on_the_combined_batch(tmp_path: Path) -> None:
    mp.spawn(_worker, args=(2, str(tmp_path / "rdv"), str(tmp_path / "state")), nprocs=2, join=True)
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    initial = PretrainModel(backbone=TINY, clip_dim=CLIP_DIM, head_hidden=16).state_dict()
    try:
        for case, (clip_loss, weights) in enumerate(CASES):
            single = run_training(DistContext(), weights, clip_loss)
            for rank in range(2):
                state = torch.load(tmp_path / f"state.{case}.{rank}", weights_only=True)
                moved = 0
                for name, value in single.items():
                    torch.testing.assert_close(
                        state[name], value, atol=1e-5, rtol=1e-5, msg=f"{clip_loss} rank {rank} {name}"
                    )
                    moved += int(not torch.equal(value, initial[name]))
                assert moved > len(single) // 2  # the weights really changed
    finally:
        torch.set_num_threads(old)
