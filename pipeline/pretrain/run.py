"""The pretrain stage end to end: dataset -> trained backbone, metrics, loss curves.

Outputs (written by rank 0 only, each atomically):

* ``<out>/backbone/``: :class:`models.backbone.DualPathBackbone` (``models.checkpoint`` format),
  what the finetune stage loads; ``<out>/model/``: the backbone with every head
  (:class:`models.heads.PretrainModel`).
  Their meta records ``targets``: the train-split CLIP means the targets were centred on.
* ``<metrics>``: JSON, final loss per term (mean over the last tenth of the steps), the loss per
  term on the validation split (``validation_loss``, with the train split's CLIP means), the
  steps in which each term had no target (``empty_term_steps``; ``total`` is NaN in those steps)
  and the probe R^2 of the pretrained backbone and of the same backbone at its random
  initialisation.
* ``<plots>/``: DVCLive logs of the loss per term and optimiser step
  (``plots/metrics/loss/<term>.tsv``: ``step``, ``<term>``; steps where a term had no target, and
  for ``total`` steps where any term had none, are left out of its curve).

Entry: ``run(dataset, out, section, *, metrics, plots) -> PretrainSummary``.
"""

from __future__ import annotations

import copy
import logging
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import distributed as dist

from models.checkpoint import save_module
from models.heads import PretrainModel
from pipeline.common.device import select_device
from pipeline.common.errors import UserError
from pipeline.common.io import atomic_path, check_replaceable, write_json_atomic
from pipeline.common.stage import StageSummary
from pipeline.config import PretrainParams
from pipeline.dataset import Dataset, open_dataset
from pipeline.dataset.stacked import make_loader
from pipeline.pretrain.losses import TERMS, term_weights
from pipeline.pretrain.probe import probe
from pipeline.pretrain.trainer import DistContext, distributed_context, evaluate_losses, make_optimizer, train
from pipeline.sim.observation import ObservationMeta

log = logging.getLogger(__name__)

BACKBONE_DIR = "backbone"
MODEL_DIR = "model"


def backbone_config(params: PretrainParams, info: Dataset) -> dict[str, Any]:
    """The JSON-able kwargs of :class:`DualPathBackbone` for these params and this dataset."""
    return {
        "frame_stack": params.frame_stack,
        "image_size": info.image_size,
        "feature_dim": params.feature_dim,
        "channels": params.channels,
        "semantic_channels": params.semantic_channels,
        "depth": params.depth,
        "interaction": params.interaction,
        "interaction_kind": params.interaction_kind,
        "flow_input": params.flow_input,
        "paths": params.paths,
        "semantic_stride": params.semantic_stride,
        "padding": params.padding,
    }


def observation_meta(params: PretrainParams, info: Dataset) -> dict[str, Any]:
    """``meta["observation"]`` of the checkpoints (:class:`pipeline.sim.observation.ObservationMeta`):
    the dataset's per-task action repeat, camera and render mode, its frame size, and the frame stack."""
    return ObservationMeta.from_dataset(
        info.stats, image_size=info.image_size, frame_stack=params.frame_stack
    ).to_dict()


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def finite_or_none(obj: Any) -> Any:
    """``obj`` with every NaN / inf float replaced by None (JSON has no NaN; DVC would reject it)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite_or_none(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite_or_none(v) for v in obj]
    return obj


def final_losses(history: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each term over the last tenth of the steps (at least one), NaN-free steps only."""
    tail = history[-max(1, len(history) // 10) :]
    out: dict[str, float] = {}
    for name in ("total", *TERMS):
        values = [r[name] for r in tail if name in r and not math.isnan(r[name])]
        if values:
            out[name] = float(np.mean(values))
    return out


def write_curves(folder: str | Path, history: list[dict[str, float]], validation: list[dict[str, float]] = ()) -> None:
    """The loss curves as DVCLive logs in ``folder``, atomically: one ``loss/<term>`` metric per
    term (step = optimiser step; steps where the term had no target are left out) and, at the
    steps of ``validation`` records, ``validation/<term>``."""
    from pipeline.common.curves import open_live

    validated = {int(r["step"]): r for r in validation}
    with atomic_path(folder, owner="pretrain plots") as tmp, open_live(tmp) as live:
        for record in history:
            live.step = int(record["step"])
            for name in ("total", *TERMS):
                if name in record and not math.isnan(record[name]):
                    live.log_metric(f"loss/{name}", float(record[name]))
            for name, value in validated.get(live.step, {}).items():
                if name != "step" and not math.isnan(value):
                    live.log_metric(f"validation/{name}", float(value))


@dataclass(frozen=True)
class PretrainSummary(StageSummary):
    """What a pretrain run wrote: the metrics dict (final losses, probe R^2, sizes) as written to
    ``--metrics``, or None on a non-main DDP rank."""

    values: dict[str, Any] | None

    def metrics(self) -> dict[str, Any]:
        return dict(self.values or {})

    def line(self) -> str:
        if self.values is None:
            return f"pretrain: worker rank done -> {self.out}"
        r2 = {
            k: "n/a" if v is None else f"{v:.3f}" for k, v in self.values["probe_r2"].items()
        }  # None: no task could be probed
        total = self.values["loss"].get("total")
        return (
            f"pretrain: {self.values['steps']} steps, final total loss {'n/a' if total is None else f'{total:.4f}'}, "
            f"probe R^2 pretrained {r2['pretrained']} vs random {r2['random']} -> {self.out}"
        )


def run(
    dataset: str | Path, out: str | Path, section: PretrainParams, *, metrics: str | Path, plots: str | Path
) -> PretrainSummary:
    """Train the backbone on ``dataset`` and write every output (rank 0 only under DDP)."""
    check_replaceable(out, "pretrain")  # before any work: never a user's folder
    check_replaceable(plots, "pretrain plots")
    values = pretrain(dataset, out, metrics, plots, section)
    return PretrainSummary(stage="pretrain", out=str(out), values=values)


def _check_text_targets(info: Dataset, params: PretrainParams) -> None:
    """Refuse a dataset whose train split has no valid annotation while the text losses are on
    (they would silently train on nothing)."""
    train = info.stats.get("stats", {}).get("train", {})
    if params.text_terms_on and train.get("annotated_frames", 1) == 0:
        tasks = ", ".join(sorted(info.stats.get("provenance", {}).get("tasks", {}))) or "?"
        raise UserError(
            f"{info.folder}: the train split has no frame with a valid annotation (tasks: {tasks}; "
            f"{train.get('failed_annotations', 0)} failed), so the caption, object and motion losses have no target. "
            "Rerun annotate (and encode) with a working backend, "
            "or set pretrain.weight_clip_text: 0 and pretrain.weight_clip_motion: 0 to train without them"
        )


#: CLIP loss term -> its field in ``stats.json``'s ``clip.npy`` statistics.
CLIP_FIELDS = {"clip_image": "image", "clip_caption": "caption", "clip_objects": "objects", "clip_motion": "motion"}


def clip_means(info: Dataset) -> dict[str, list[float] | None]:
    """term -> the train split's mean (D floats) of its CLIP field from ``stats.json``; None where
    the split has no such target (no annotated frame): that term is then not centred.

    The train means serve every split (validation included), so a frame's target does not depend
    on the split it landed in; they are recorded in the checkpoint meta (``targets``).
    """
    fields = info.field_stats("train").get("clip.npy", {})
    out: dict[str, list[float] | None] = {}
    for term, field in CLIP_FIELDS.items():
        mean = fields.get(field, {}).get("mean")
        if mean is not None and (len(mean) != info.embed_dim or any(m is None for m in mean)):
            raise UserError(
                f"{info.folder}/stats.json: stats.train.fields.clip.npy.{field}.mean has {len(mean)} values, "
                f"the CLIP dimension is {info.embed_dim}; "
                "rebuild the dataset (semore encode), or set pretrain.centre_clip_targets: false"
            )
        out[term] = [float(m) for m in mean] if mean is not None else None
    return out


def loss_arguments(params: PretrainParams, info: Dataset, device: torch.device) -> dict[str, Any]:
    """The loss keyword arguments of :func:`~pipeline.pretrain.trainer.train` and ``evaluate_losses``
    (``weights`` included) that ``params`` set for the dataset ``info``."""
    means = clip_means(info) if params.centre_clip_targets else {t: None for t in CLIP_FIELDS}
    return dict(
        weights=term_weights(
            params.weight_clip_image,
            params.weight_clip_text,
            params.weight_flow,
            params.weight_reward,
            params.weight_clip_motion,
        ),
        clip_loss=params.clip_loss,
        temperature=params.temperature,
        device=device,
        flow_input=params.flow_input,
        centres={t: torch.tensor(m, dtype=torch.float32, device=device) for t, m in means.items() if m is not None},
        flow_moving_threshold=params.flow_moving_threshold,
        flow_static_share=params.flow_static_share,
    )


def annotated_per_process(params: PretrainParams, world_size: int) -> int:
    """Annotated frames each process's batch holds at least: ``ceil(annotated_per_batch / world_size)``
    (so the global batch holds at least ``annotated_per_batch``), 0 while the text terms are off."""
    if not params.text_terms_on or params.annotated_per_batch == 0:
        return 0
    if params.annotated_per_batch > params.batch_size:
        raise UserError(
            f"pretrain.annotated_per_batch = {params.annotated_per_batch} "
            f"is more than pretrain.batch_size = {params.batch_size}; "
            "lower it (or raise the batch size)"
        )
    return -(-params.annotated_per_batch // world_size)


def empty_term_steps(history: list[dict[str, float]]) -> dict[str, int]:
    """term -> number of steps in which it had no target (its loss is NaN there, and so is ``total``)."""
    names = [t for t in TERMS if history and t in history[0]]
    return {t: sum(1 for r in history if math.isnan(r[t])) for t in names}


def pretrain(
    dataset: str | Path, out: str | Path, metrics_path: str | Path, plots_dir: str | Path, params: PretrainParams
) -> dict[str, Any] | None:
    """Train the backbone on ``dataset`` and write every output; returns the metrics (rank 0) or None."""
    info = open_dataset(dataset)  # validated here: stats.json, shard list, sizes and SHA-256, first sample
    if not info.shards["validation"]:
        raise UserError(
            f"{info.folder}: no validation shards, which the probe needs; re-encode with encode.val_fraction > 0"
        )
    _check_text_targets(info, params)
    device = select_device(params.device, param_key="pretrain.device")
    ctx = distributed_context(device)
    if device.type == "cuda" and ctx.distributed:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    try:
        return _pretrain(info, Path(out), Path(metrics_path), Path(plots_dir), params, device, ctx)
    finally:
        if ctx.distributed and dist.is_initialized():
            dist.destroy_process_group()


def _pretrain(
    info: Dataset,
    out: Path,
    metrics_path: Path,
    plots_dir: Path,
    params: PretrainParams,
    device: torch.device,
    ctx: DistContext,
) -> dict[str, Any] | None:
    if params.batch_size % ctx.world_size:
        raise UserError(
            f"pretrain.batch_size = {params.batch_size} does not split evenly over {ctx.world_size} processes; "
            "make it a multiple of pretrain.nproc"
        )
    config = backbone_config(params, info)
    if params.threads:
        torch.set_num_threads(params.threads)
    seed_everything(params.seed)
    model_config = {"backbone": config, "clip_dim": info.embed_dim, "head_hidden": params.head_hidden}
    model = PretrainModel(**model_config)
    initial_backbone = copy.deepcopy(model.backbone)  # the "random weights" baseline of the probe
    model.to(device)
    log.info(
        "backbone: %d parameters, fused features %d, %d-frame stacks of %dpx; %d process(es), device %s",
        model.backbone.num_parameters,
        params.feature_dim,
        params.frame_stack,
        info.image_size,
        ctx.world_size,
        device,
    )
    if params.batch_size > info.samples["train"]:
        log.warning(
            "pretrain.batch_size = %d is larger than the dataset's %d train samples (%s): every batch repeats samples; "
            "lower pretrain.batch_size or encode more episodes",
            params.batch_size,
            info.samples["train"],
            info.folder,
        )
    loader = make_loader(
        info.shards["train"],
        params.frame_stack,
        params.batch_size // ctx.world_size,
        workers=params.workers,
        seed=params.seed,
        shuffle_buffer=params.shuffle_buffer,
        repeat=True,
        rank=ctx.rank,
        world_size=ctx.world_size,
        annotated_per_batch=annotated_per_process(params, ctx.world_size),
    )
    loss_args = loss_arguments(params, info, device)
    if not any(w > 0 for w in loss_args["weights"].values()):
        raise UserError("every pretrain.weight_* is 0: set at least one loss weight above 0")
    optimizer = make_optimizer(model, params.optimizer, params.lr, params.weight_decay)
    validation_curve: list[dict[str, float]] = []

    def validate(step: int) -> None:
        batches = make_loader(info.shards["validation"], params.frame_stack, params.batch_size, workers=0, repeat=False)
        validation_curve.append({"step": step, **evaluate_losses(model, batches, **loss_args)})
        log.info(
            "step %d validation: %s",
            step,
            ", ".join(f"{k}={v:.4f}" for k, v in validation_curve[-1].items() if k != "step"),
        )

    history = train(
        model,
        loader,
        steps=params.steps,
        optimizer=optimizer,
        ctx=ctx,
        grad_clip=params.grad_clip,
        validate=validate,
        validate_every=params.validate_every,
        **loss_args,
    )
    if not ctx.is_main:
        return None
    validate(params.steps)
    validation_loss = {k: v for k, v in validation_curve[-1].items() if k != "step"}

    probe_args = dict(alpha=params.probe_alpha, max_per_task=params.probe_max_per_task, flow_input=params.flow_input)
    trained = probe(
        model.backbone, info.shards["train"], info.shards["validation"], params.frame_stack, device, **probe_args
    )
    baseline = probe(
        initial_backbone.to(device),
        info.shards["train"],
        info.shards["validation"],
        params.frame_stack,
        device,
        **probe_args,
    )
    log.info(
        "probe R^2 (state from frozen features): pretrained %.3f, random weights %.3f", trained["r2"], baseline["r2"]
    )

    metrics = finite_or_none(
        {
            "loss": final_losses(history),
            "validation_loss": validation_loss,
            "validation_curve": validation_curve,
            "empty_term_steps": empty_term_steps(history),
            "probe_r2": {"pretrained": trained["r2"], "random": baseline["r2"]},
            "probe_r2_per_task": {"pretrained": trained["per_task"], "random": baseline["per_task"]},
            "feature_dim": params.feature_dim,
            "backbone_parameters": model.backbone.num_parameters,
            "steps": params.steps,
            "samples_seen": params.steps * params.batch_size,
            "processes": ctx.world_size,
            "threads": torch.get_num_threads(),
            "probe_alpha": {"pretrained": trained["alpha"], "random": baseline["alpha"]},
        }
    )
    meta = {
        "stage": "pretrain",
        "input": (
            f"obs (B, {3 * params.frame_stack}, {info.image_size}, {info.image_size}) RGB pixels in [0, 255], "
            "oldest frame first"
        ),
        "output": f"(B, {params.feature_dim}) float32 fused features",
        "clip_dim": info.embed_dim,
        "params": params.model_dump(mode="json"),
        "probe_r2": metrics["probe_r2"],
        "final_loss": metrics["loss"],
        "observation": observation_meta(params, info),
    }
    centres = loss_args["centres"]
    means = clip_means(info) if params.centre_clip_targets else {t: None for t in CLIP_FIELDS}
    meta["targets"] = {  # what the CLIP heads were trained to predict, reproducible from the raw clip.npy rows
        "clip_centring": "normalize(raw - mean) per field with the train split's mean; all-zero rows stay zero"
        if centres
        else "none",
        "clip_mean": {t: (m if t in centres else None) for t, m in means.items()},
    }
    model.cpu()
    with atomic_path(out, clean_stale=True, owner="pretrain") as tmp:
        tmp.mkdir()
        save_module(tmp / BACKBONE_DIR, model.backbone, config, meta)
        save_module(tmp / MODEL_DIR, model, model_config, meta)
    write_json_atomic(metrics_path, metrics)
    write_curves(plots_dir, history, validation_curve)
    log.info("wrote %s (backbone/, model/), %s, %s", out, metrics_path, plots_dir)
    return metrics
