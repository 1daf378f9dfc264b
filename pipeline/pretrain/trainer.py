"""The pretraining loop, on one process or many (torchrun + DistributedDataParallel).

The same command runs either way: :func:`distributed_context` reads torchrun's ``WORLD_SIZE`` /
``RANK`` / ``LOCAL_RANK`` and joins the process group (gloo on CPU, nccl on CUDA). Each process
gets ``batch_size / world_size`` samples per step; every loss term is normalised by its count over
all processes (see :mod:`pipeline.pretrain.losses`), so N processes on N slices of a batch take
exactly the step one process takes on the whole batch.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from pipeline.common.logs import progress
from pipeline.pretrain.losses import FLOW_MOVING_THRESHOLD, FLOW_STATIC_SHARE, TERMS, ClipLoss, loss_terms

log = logging.getLogger(__name__)

TENSOR_FIELDS = ("obs", "flow", "flow_valid", "clip_image", "clip_text", "text_valid", "reward", "reward_valid")


@dataclass(frozen=True)
class DistContext:
    """This process's place in the job: rank, world size and local rank (GPU index)."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def distributed_context(device: torch.device) -> DistContext:
    """Join torchrun's process group when launched by it (gloo on CPU, nccl on CUDA); else a single process."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return DistContext(rank=rank, world_size=world, local_rank=local_rank)


def _gather(x: Tensor) -> Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Tensor]:
    return {k: batch[k].to(device, non_blocking=True) for k in TENSOR_FIELDS if k in batch}


def train(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    steps: int,
    optimizer: torch.optim.Optimizer,
    weights: Mapping[str, float],
    clip_loss: ClipLoss,
    temperature: float,
    device: torch.device,
    ctx: DistContext = DistContext(),
    flow_input: bool = False,
    grad_clip: float = 0.0,
    show_progress: bool = True,
    centres: Mapping[str, Tensor] | None = None,
    flow_moving_threshold: float = FLOW_MOVING_THRESHOLD,
    flow_static_share: float = FLOW_STATIC_SHARE,
    validate: Callable[[int], None] | None = None,
    validate_every: int = 0,
) -> list[dict[str, float]]:
    """Run ``steps`` optimiser steps on ``batches`` (this process's slice of each global batch).

    ``model`` is a :class:`models.heads.PretrainModel` already on ``device``; it is wrapped in
    DDP when ``ctx.distributed``. ``centres``, ``flow_moving_threshold``, ``flow_static_share``:
    see :func:`pipeline.pretrain.losses.loss_terms`. ``validate(step)`` is called on the main
    process after every ``validate_every``-th step but the last (the caller validates the final
    model itself); it must not draw from the training's random streams.

    Returns one record per step: ``step`` (1-based); each active term's global mean (``nan``
    where the term had no valid target in the batch); ``empty_terms``, how many active terms had
    no target (each such term sends no gradient that step); and ``total``, the weighted sum over
    the **fixed** set of active terms: ``nan`` on a step with an empty term (counted in
    ``empty_terms``), never a sum over whichever terms happened to have targets.
    """
    active = [t for t in TERMS if weights.get(t, 0.0) > 0]
    if not active:
        raise ValueError("every loss weight is zero: nothing to train")
    net: nn.Module = model
    if ctx.distributed:
        unused = len(active) < len(TERMS)  # heads of zero-weight terms get no gradient
        device_ids = [device.index] if device.type == "cuda" else None
        net = DistributedDataParallel(model, device_ids=device_ids, find_unused_parameters=unused)
    model.train()
    history: list[dict[str, float]] = []
    iterator: Iterator[Mapping[str, Any]] = iter(batches)
    bar = progress(range(steps), desc="pretrain", unit="step") if ctx.is_main and show_progress else range(steps)
    for step in bar:
        batch = to_device(next(iterator), device)
        local = batch["obs"].shape[0]
        outputs = net(batch["obs"], batch["flow"] if flow_input else None)
        gather, offset = (_gather, ctx.rank * local) if ctx.distributed else (lambda x: x, 0)
        terms = loss_terms(
            outputs,
            batch,
            weights,
            clip_loss,
            temperature,
            gather,
            offset,
            centres=centres,
            flow_moving_threshold=flow_moving_threshold,
            flow_static_share=flow_static_share,
        )
        names = list(terms)
        stats = torch.stack([terms[n][0].detach() for n in names] + [terms[n][1].detach() for n in names])
        if ctx.distributed:
            dist.all_reduce(stats)
        sums, counts = stats[: len(names)], stats[len(names) :]
        total = torch.zeros((), device=device)
        record: dict[str, float] = {"step": step + 1}
        for i, name in enumerate(names):
            count = counts[i].clamp(min=1.0)
            # DDP averages gradients over processes: scale by world_size so the result is the global mean's.
            total = total + weights[name] * terms[name][0] / count * ctx.world_size
            record[name] = float(sums[i] / count) if counts[i] > 0 else float("nan")
        optimizer.zero_grad(set_to_none=True)
        total.backward()
        if grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        optimizer.step()
        empty = [n for i, n in enumerate(names) if counts[i] == 0]
        record["empty_terms"] = len(empty)
        record["total"] = float("nan") if empty else sum(weights[n] * record[n] for n in names)
        history.append(record)
        if (
            validate is not None
            and validate_every > 0
            and ctx.is_main
            and (step + 1) % validate_every == 0
            and step + 1 < steps
        ):
            validate(step + 1)
        if ctx.is_main and (step + 1) % max(1, steps // 10) == 0:
            log.info(
                "step %d/%d: %s", step + 1, steps, ", ".join(f"{k}={v:.4f}" for k, v in record.items() if k != "step")
            )
    return history


@torch.no_grad()
def evaluate_losses(
    model: nn.Module,
    batches: Iterable[Mapping[str, Any]],
    *,
    weights: Mapping[str, float],
    clip_loss: ClipLoss,
    temperature: float,
    device: torch.device,
    flow_input: bool = False,
    centres: Mapping[str, Tensor] | None = None,
    flow_moving_threshold: float = FLOW_MOVING_THRESHOLD,
    flow_static_share: float = FLOW_STATIC_SHARE,
) -> dict[str, float]:
    """Each active term's mean over every batch of ``batches`` (one process, no gradient), and ``total``.

    A term's mean is its summed loss over the whole stream divided by its summed count (every
    target counts once, however the batches fall); InfoNCE's candidates are those of each batch.
    ``centres`` must be the **train** split's means, whatever split ``batches`` come from, so the
    targets are those the model was trained on. ``total`` is the weighted sum over the active
    terms, ``nan`` if one of them had no target in the whole stream.
    """
    active = [t for t in TERMS if weights.get(t, 0.0) > 0]
    sums = {t: 0.0 for t in active}
    counts = {t: 0.0 for t in active}
    was_training = model.training
    model.eval()
    try:
        for raw in batches:
            batch = to_device(raw, device)
            outputs = model(batch["obs"], batch["flow"] if flow_input else None)
            terms = loss_terms(
                outputs,
                batch,
                weights,
                clip_loss,
                temperature,
                centres=centres,
                flow_moving_threshold=flow_moving_threshold,
                flow_static_share=flow_static_share,
            )
            for name, (total, count) in terms.items():
                sums[name] += float(total)
                counts[name] += float(count)
    finally:
        model.train(was_training)
    out = {t: (sums[t] / counts[t] if counts[t] > 0 else float("nan")) for t in active}
    out["total"] = sum(weights[t] * out[t] for t in active)
    return out


def make_optimizer(model: nn.Module, name: str, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """``adam`` or ``adamw`` over every parameter of ``model``."""
    optimizers = {"adam": torch.optim.Adam, "adamw": torch.optim.AdamW}
    return optimizers[name](model.parameters(), lr=lr, weight_decay=weight_decay)
