"""Pretraining loss terms, as (sum over the local batch, count) pairs.

The trainer divides each sum by the count **over all processes**, so the loss (and its gradient)
is the same whether a batch is processed by one process or split over many (DDP averages
gradients over processes, which the trainer compensates for). A term whose weight is zero is not
computed at all, so it sends no gradient anywhere.

Terms (name -> weight param -> target):

* ``clip_image`` (``weight_clip_image``): semantic projection vs the frame's CLIP image embedding.
* ``clip_caption``, ``clip_objects`` (``weight_clip_text`` each): semantic projections vs the CLIP
  text embeddings of the VLM caption and key-objects text, annotated frames only.
* ``clip_motion`` (``weight_clip_motion``): the motion path's projection vs the CLIP text embedding
  of the VLM's motion sentence, annotated frames only.
* ``flow`` (``weight_flow``): end-point error (pixels) of the decoded flow between the last two
  frames, a weighted mean over valid pixels in which moving pixels count (:func:`flow_loss`).
* ``reward`` (``weight_reward``): squared error of the predicted reward of the transition into
  the current frame, frames that have one.

**CLIP targets are centred.** A random (or any) CLIP puts every frame of a task in a narrow cone
(on the default data the image embeddings' mean pairwise cosine is 0.9992), so the raw targets
are mostly one shared direction, which a constant prediction matches. With a train-split mean
``m`` per field (``stats.json``, ``clip.npy`` ``image`` / ``caption`` / ``objects`` / ``motion``) the target is
``normalize(raw - m)`` (:func:`centre_targets`): what is left is how a frame differs from the
others, and a constant prediction scores about chance. Rows that are all zero (no annotation)
stay zero and are not targets.

CLIP alignment (``clip_loss``): ``cosine`` = 1 - cos(pred, target) per sample; ``infonce`` =
multi-positive cross-entropy of the prediction against every valid target of the (global)
batch, logits = cos / temperature: ``-log(sum over positives exp / sum over all exp)``. The
positives of a row are its own target **and every duplicate of it** (:func:`duplicates`: the
same caption, the same frame), because a duplicate is not a different answer; with duplicates
as negatives even a perfect predictor cannot go below ``log(number of duplicates)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Literal

import torch
from torch import Tensor
from torch.nn import functional as F

TERMS = ("clip_image", "clip_caption", "clip_objects", "clip_motion", "flow", "reward")
#: Text loss terms, in the order of ``clip.npy``'s text rows (``pipeline.dataset.schema.TEXT_ROWS``).
TEXT_TERMS = ("clip_caption", "clip_objects", "clip_motion")
ClipLoss = Literal["cosine", "infonce"]

#: Gathers a tensor's rows from every process (identity on one process); no gradient needed.
Gather = Callable[[Tensor], Tensor]

#: Two raw (uncentred) CLIP targets are duplicates when their unit vectors are at most this far
#: apart (Euclidean), i.e. cosine >= 1 - DUPLICATE_DISTANCE**2 / 2 (about 1 - 1.9e-6). Why this
#: value: targets are stored in float16, whose rounding moves each component of a unit vector by
#: at most 2**-11 of its value, so one stored copy is within 2**-11 of the exact vector and two
#: stored copies of the same embedding within 2**-10; twice that leaves room for float32 noise
#: upstream. A coarser rule (cosine > 1 - 1e-3) would call half of all pairs of *different*
#: random-CLIP frames duplicates on the default data (their mean pairwise cosine is 0.9992),
#: while different captions there are at most 0.986 apart in cosine: far from either threshold.
DUPLICATE_DISTANCE = 2.0**-9

#: Default of ``pretrain.flow_moving_threshold`` (pixels); see :func:`flow_loss`.
FLOW_MOVING_THRESHOLD = 1.0 / 16.0
#: Default of ``pretrain.flow_static_share``; see :func:`flow_loss`.
FLOW_STATIC_SHARE = 0.5


def _identity(x: Tensor) -> Tensor:
    return x


def centre_targets(target: Tensor, mean: Tensor) -> Tensor:
    """``normalize(target - mean)`` per row of a (B, D) float tensor; all-zero rows stay zero.

    ``mean`` (D,) is the train split's mean of the same field (``stats.json``), used for every
    split, so the targets of a frame do not depend on which split it is in.
    """
    present = (target.norm(dim=1, keepdim=True) > 0).to(target.dtype)
    return F.normalize(target - mean.to(target), dim=1) * present


def duplicates(target: Tensor, others: Tensor) -> Tensor:
    """(B, N) bool: row i of ``target`` (B, D) and row j of ``others`` (N, D) are the same target up
    to float16 rounding (unit vectors within :data:`DUPLICATE_DISTANCE`; raw, before centring).

    Computed in float64, where the cosine's own rounding (about 1e-16) is far below the threshold.
    All-zero rows are duplicates of nothing.
    """
    a, b = F.normalize(target.double(), dim=1), F.normalize(others.double(), dim=1)
    return (a @ b.T) >= 1.0 - DUPLICATE_DISTANCE**2 / 2.0


def alignment(
    pred: Tensor,
    target: Tensor,
    valid: Tensor,
    kind: ClipLoss,
    temperature: float,
    gather: Gather = _identity,
    offset: int = 0,
    centre: Tensor | None = None,
) -> tuple[Tensor, Tensor]:
    """Alignment of (B, D) predictions to (B, D) targets over rows where ``valid`` (B,) bool.

    ``centre`` (D,): subtract it from the targets and renormalise (:func:`centre_targets`); None
    uses the raw targets, unit-normalised. Returns ``(sum of per-row losses over valid rows,
    number of valid rows)``. For ``infonce`` the candidates are every valid target gathered from
    all processes, the positives a row's own target and its duplicates (:func:`duplicates`, decided
    on the raw targets); ``offset`` is the index of this process's first row in the gathered batch.
    """
    valid = valid & (target.norm(dim=1) > 0)
    weight = valid.to(pred.dtype)
    pred_n = F.normalize(pred, dim=1)

    def prepare(raw: Tensor) -> Tensor:
        return centre_targets(raw, centre) if centre is not None else F.normalize(raw, dim=1)

    if kind == "cosine":
        per_row = 1.0 - (pred_n * prepare(target)).sum(dim=1)
    elif kind == "infonce":
        all_raw = gather(target.detach())
        all_valid = gather(valid.to(torch.uint8)).bool()
        logits = pred_n @ prepare(all_raw).T / temperature
        own = torch.zeros_like(logits, dtype=torch.bool)
        own[
            torch.arange(pred.shape[0], device=pred.device), torch.arange(pred.shape[0], device=pred.device) + offset
        ] = True
        positive = (duplicates(target, all_raw) | own) & all_valid[None, :]
        logits = logits.masked_fill(~all_valid[None, :], float("-inf"))
        # A row without a valid target would be all -inf (NaN loss and gradient): give it zero
        # logits and only itself as positive; its weight is zero anyway.
        logits = torch.where(valid[:, None], logits, torch.zeros_like(logits))
        positive = torch.where(valid[:, None], positive, own)
        per_row = torch.logsumexp(logits, dim=1) - torch.logsumexp(logits.masked_fill(~positive, float("-inf")), dim=1)
    else:
        raise ValueError(f"clip_loss={kind!r}: expected 'cosine' or 'infonce'")
    return (per_row * weight).sum(), weight.sum()


def flow_epe(pred: Tensor, target: Tensor, valid: Tensor) -> tuple[Tensor, Tensor]:
    """Plain end-point error of (B, 2, H, W) flows in pixels over (B, H, W) valid pixels: (sum, count)."""
    epe = torch.sqrt(((pred - target) ** 2).sum(dim=1) + 1e-12)
    weight = valid.to(pred.dtype)
    return (epe * weight).sum(), weight.sum()


def flow_weights(
    target: Tensor,
    valid: Tensor,
    moving_threshold: float = FLOW_MOVING_THRESHOLD,
    static_share: float = FLOW_STATIC_SHARE,
    gather: Gather = _identity,
) -> Tensor:
    """(B, H, W) per-pixel weights of :func:`flow_loss` for (B, 2, H, W) target flow, (B, H, W) valid mask.

    A valid pixel is *moving* when its target displacement is above ``moving_threshold`` pixels,
    else *static*. Moving pixels weigh 1. Static pixels weigh ``w = min(1, r * M / S)`` with
    ``r = static_share / (1 - static_share)`` and M, S the moving and static pixel counts of the
    global batch (summed over processes with ``gather``), so static pixels carry at most
    ``static_share`` of the batch's weight and never weigh more than a moving pixel. A batch in
    which nothing moves keeps w = 1 (there is nothing to protect); ``static_share`` 1 gives w = 1,
    the plain mean EPE.
    """
    valid = valid.bool()
    moving = valid & (target.norm(dim=1) > moving_threshold)
    static = valid & ~moving
    if static_share >= 1.0:
        return valid.to(target.dtype)
    counts = gather(torch.stack([moving.sum(), static.sum()]).to(torch.float64)[None, :]).sum(dim=0)
    m, s = float(counts[0]), float(counts[1])
    w_static = 1.0 if m == 0 or s == 0 else min(1.0, static_share / (1.0 - static_share) * m / s)
    return moving.to(target.dtype) + static.to(target.dtype) * w_static


def flow_loss(
    pred: Tensor,
    target: Tensor,
    valid: Tensor,
    moving_threshold: float = FLOW_MOVING_THRESHOLD,
    static_share: float = FLOW_STATIC_SHARE,
    gather: Gather = _identity,
) -> tuple[Tensor, Tensor]:
    """End-point error (pixels) of (B, 2, H, W) flows, weighted by :func:`flow_weights`: (weighted sum, sum of weights).

    Why: the plain mean EPE over valid pixels is dominated by pixels that do not move (on the
    default data 96% of cartpole's valid pixels have zero flow, mean |flow| 0.015 px), so
    predicting zero everywhere is nearly optimal and the motion path learns little about the
    bodies that move. Per-sample normalisation by the mean target magnitude would not help
    (it rescales a sample, not its moving pixels against its static ones) and divides by almost
    zero on still frames. Bounding the static pixels' share keeps every pixel's error in pixels
    (the unit stays interpretable) and makes moving pixels at least half of the weight (at the
    default share) whenever anything moves, while static pixels still teach "this does not move".
    The balance is over the global batch, so under DDP every process uses the same weights.
    """
    weight = flow_weights(target, valid, moving_threshold, static_share, gather)
    epe = torch.sqrt(((pred - target) ** 2).sum(dim=1) + 1e-12)
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
    *,
    centres: Mapping[str, Tensor] | None = None,
    flow_moving_threshold: float = FLOW_MOVING_THRESHOLD,
    flow_static_share: float = FLOW_STATIC_SHARE,
) -> dict[str, tuple[Tensor, Tensor]]:
    """(sum, count) of every term whose weight is non-zero; see the module docstring.

    ``outputs`` is :meth:`models.heads.PretrainModel.forward`'s dict; ``batch`` holds the loader's
    tensors (``clip_image``, ``clip_text``, ``text_valid``, ``flow``, ``flow_valid``, ``reward``,
    ``reward_valid``); ``weights`` maps term name -> weight. ``centres`` maps a CLIP term name
    (``clip_image`` or one of :data:`TEXT_TERMS`) to its (D,) train mean; a term absent from
    it (or None) is not centred.
    """
    centres = centres or {}
    terms: dict[str, tuple[Tensor, Tensor]] = {}
    rows = torch.ones(batch["clip_image"].shape[0], dtype=torch.bool, device=batch["clip_image"].device)
    if weights.get("clip_image", 0.0) > 0:
        terms["clip_image"] = alignment(
            outputs["clip_image"],
            batch["clip_image"],
            rows,
            clip_loss,
            temperature,
            gather,
            offset,
            centres.get("clip_image"),
        )
    for i, name in enumerate(TEXT_TERMS):
        if weights.get(name, 0.0) > 0:
            terms[name] = alignment(
                outputs[name],
                batch["clip_text"][:, i],
                batch["text_valid"].bool(),
                clip_loss,
                temperature,
                gather,
                offset,
                centres.get(name),
            )
    if weights.get("flow", 0.0) > 0:
        terms["flow"] = flow_loss(
            outputs["flow"], batch["flow"], batch["flow_valid"], flow_moving_threshold, flow_static_share, gather
        )
    if weights.get("reward", 0.0) > 0:
        terms["reward"] = reward_mse(outputs["reward"], batch["reward"].float(), batch["reward_valid"].bool())
    return terms


def term_weights(
    weight_clip_image: float,
    weight_clip_text: float,
    weight_flow: float,
    weight_reward: float,
    weight_clip_motion: float,
) -> dict[str, float]:
    """Map the params' loss weights onto the term names (caption and objects share ``weight_clip_text``)."""
    return {
        "clip_image": weight_clip_image,
        "clip_caption": weight_clip_text,
        "clip_objects": weight_clip_text,
        "clip_motion": weight_clip_motion,
        "flow": weight_flow,
        "reward": weight_reward,
    }
