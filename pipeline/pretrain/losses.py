"""Pretraining loss terms, as (sum over the local batch, count) pairs.

The trainer divides each sum by the count **over all processes**, so the loss (and its gradient)
is the same whether a batch is processed by one process or split over many (DDP averages
gradients over processes, which the trainer compensates for). A term whose weight is zero is not
computed at all, so it sends no gradient anywhere.

Terms (name -> weight param -> target):

* ``clip_image`` (``weight_clip_image``): semantic projection vs the frame's CLIP image embedding.
* ``clip_caption``, ``clip_objects`` (``weight_clip_text`` each): semantic projections vs the CLIP
  text embeddings of the VLM caption and key-objects text, annotated frames only.
* ``flow`` (``weight_flow``): end-point error (pixels) of the decoded flow between the last two
  frames, averaged over valid pixels.
* ``reward`` (``weight_reward``): squared error of the predicted reward of the transition into
  the current frame, frames that have one.

CLIP alignment (``clip_loss``): ``cosine`` = 1 - cos(pred, target) per sample; ``infonce`` =
cross-entropy of the prediction against every valid target of the (global) batch, logits =
cos / temperature, the positive being its own frame's target.
"""
from __future__ import annotations

from typing import Callable, Literal, Mapping

import torch
from torch import Tensor
from torch.nn import functional as F

TERMS = ("clip_image", "clip_caption", "clip_objects", "flow", "reward")
ClipLoss = Literal["cosine", "infonce"]

#: Gathers a tensor's rows from every process (identity on one process); no gradient needed.
Gather = Callable[[Tensor], Tensor]


def _identity(x: Tensor) -> Tensor:
    return x


def alignment(pred: Tensor, target: Tensor, valid: Tensor, kind: ClipLoss, temperature: float, gather: Gather = _identity, offset: int = 0) -> tuple[Tensor, Tensor]:
    """Alignment of (B, D) predictions to (B, D) targets over rows where ``valid`` (B,) bool.

    Returns ``(sum of per-row losses over valid rows, number of valid rows)``. For ``infonce``
    the negatives are every valid target gathered from all processes; ``offset`` is the index of
    this process's first row in the gathered batch.
    """
    valid = valid & (target.norm(dim=1) > 0)
    weight = valid.to(pred.dtype)
    pred_n = F.normalize(pred, dim=1)
    target_n = F.normalize(target, dim=1)
    if kind == "cosine":
        per_row = 1.0 - (pred_n * target_n).sum(dim=1)
    elif kind == "infonce":
        all_targets = gather(target_n.detach())
        all_valid = gather(valid.to(torch.uint8)).bool()
        logits = pred_n @ all_targets.T / temperature
        logits = logits.masked_fill(~all_valid[None, :], float("-inf"))
        labels = torch.arange(pred.shape[0], device=pred.device) + offset
        # Rows without a valid target would be all -inf against a -inf positive: neutralise them.
        logits = torch.where(valid[:, None], logits, torch.zeros_like(logits))
        per_row = F.cross_entropy(logits, labels, reduction="none")
    else:
        raise ValueError(f"clip_loss={kind!r}: expected 'cosine' or 'infonce'")
    return (per_row * weight).sum(), weight.sum()


def flow_epe(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """End-point error of (B, 2, H, W) flows in pixels over (B, H, W) valid pixels: (sum, count)."""
    epe = torch.sqrt(((pred - target) ** 2).sum(dim=1) + 1e-12)
    weight = valid.to(pred.dtype)
    return (epe * weight).sum(), weight.sum()


def reward_mse(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Squared error of (B,) rewards over (B,) valid rows: (sum, count)."""
    weight = valid.to(pred.dtype)
    return (((pred - target) ** 2) * weight).sum(), weight.sum()


def loss_terms(
    outputs: Mapping[str, Tensor],
    batch: Mapping[str, Tensor],
    weights: Mapping[str, float],
    clip_loss: ClipLoss = "cosine",
    temperature: float = 0.1,
    gather: Gather = _identity,
    offset: int = 0,
) -> dict[str, tuple[Tensor, Tensor]]:
    """(sum, count) of every term whose weight is non-zero; see the module docstring.

    ``outputs`` is :meth:`models.heads.PretrainModel.forward`'s dict; ``batch`` holds the loader's
    tensors (``clip_image``, ``clip_text``, ``text_valid``, ``flow``, ``flow_valid``, ``reward``,
    ``reward_valid``); ``weights`` maps term name -> weight.
    """
    terms: dict[str, tuple[Tensor, Tensor]] = {}
    rows = torch.ones(batch["clip_image"].shape[0], dtype=torch.bool, device=batch["clip_image"].device)
    if weights.get("clip_image", 0.0) > 0:
        terms["clip_image"] = alignment(outputs["clip_image"], batch["clip_image"], rows, clip_loss, temperature, gather, offset)
    for i, name in enumerate(("clip_caption", "clip_objects")):
        if weights.get(name, 0.0) > 0:
            terms[name] = alignment(outputs[name], batch["clip_text"][:, i], batch["text_valid"].bool(), clip_loss, temperature, gather, offset)
    if weights.get("flow", 0.0) > 0:
        terms["flow"] = flow_epe(outputs["flow"], batch["flow"], batch["flow_valid"].bool())
    if weights.get("reward", 0.0) > 0:
        terms["reward"] = reward_mse(outputs["reward"], batch["reward"].float(), batch["reward_valid"].bool())
    return terms


def term_weights(weight_clip_image: float, weight_clip_text: float, weight_flow: float, weight_reward: float) -> dict[str, float]:
    """Map the params' loss weights onto the term names (both text terms share ``weight_clip_text``)."""
    return {
        "clip_image": weight_clip_image,
        "clip_caption": weight_clip_text,
        "clip_objects": weight_clip_text,
        "flow": weight_flow,
        "reward": weight_reward,
    }
