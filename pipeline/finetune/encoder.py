"""The encoder the SAC agent starts from: the pretrain stage's backbone, pretrained, scratch or frozen."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    build_module,
    load_module,
    read_checkpoint_config,
    resolve_class,
)
from pipeline.common.errors import UserError

log = logging.getLogger(__name__)

#: Sub-folder of the pretrain stage's output that holds the backbone checkpoint.
BACKBONE_SUBDIR = "backbone"


class BackboneError(UserError, FileNotFoundError):
    """The backbone checkpoint is missing or unusable."""


@dataclass(frozen=True)
class EncoderSpec:
    """Everything needed to rebuild the encoder, and where it came from.

    Attributes:
        folder: the checkpoint folder read.
        class_path: ``'package.module:ClassName'``.
        config: the constructor kwargs (JSON-able).
        frame_stack, image_size: the observation the encoder takes: (3 * frame_stack, image_size, image_size).
        sha256: hash of the checkpoint's weights file (provenance; part of the run key).
    """

    folder: Path
    class_path: str
    config: dict[str, Any]
    frame_stack: int
    image_size: int
    sha256: str


def resolve_backbone(path: str | Path) -> Path:
    """The checkpoint folder under ``path``: ``path/backbone`` (the pretrain stage's output) or ``path`` itself."""
    path = Path(path)
    for candidate in (path / BACKBONE_SUBDIR, path):
        if (candidate / CONFIG_FILE).is_file() and (candidate / WEIGHTS_FILE).is_file():
            return candidate
    raise BackboneError(
        f"--backbone {path}: no backbone checkpoint there "
        f"(expected {path / BACKBONE_SUBDIR}/{CONFIG_FILE} and {WEIGHTS_FILE}); "
        "run the pretrain stage first (dvc repro pretrain), "
        "or point --backbone at a folder written by models.checkpoint.save_module"
    )


def read_spec(path: str | Path) -> EncoderSpec:
    """Read the backbone checkpoint's config (not its weights) into an :class:`EncoderSpec`."""
    folder = resolve_backbone(path)
    try:
        record = read_checkpoint_config(folder)
        resolve_class(record["class"])  # refuse a class outside the allow-list before any work
    except CheckpointError as exc:
        raise BackboneError(f"--backbone: {exc}") from None
    config = dict(record["config"])
    missing = [k for k in ("frame_stack", "image_size") if k not in config]
    if missing:
        raise BackboneError(
            f"{folder}/{CONFIG_FILE}: the encoder config lacks {', '.join(missing)}; "
            "the finetune stage needs them to build its observations"
        )
    if config.get("flow_input"):
        raise BackboneError(
            f"{folder}: this backbone was pretrained with flow_input=true and needs optical flow as input, "
            "which the online agent does not compute; pretrain with pretrain.flow_input: false"
        )
    digest = hashlib.sha256((folder / WEIGHTS_FILE).read_bytes()).hexdigest()
    return EncoderSpec(folder, record["class"], config, int(config["frame_stack"]), int(config["image_size"]), digest)


def build_encoder(spec: EncoderSpec, encoder_init: str) -> nn.Module:
    """The encoder for ``encoder_init``: 'pretrained' / 'frozen' load the weights, 'scratch' builds
    the same architecture with torch's current RNG (seed it first). Freezing is the agent's job."""
    if encoder_init not in ("pretrained", "scratch", "frozen"):
        raise ValueError(f"encoder_init={encoder_init!r}: expected 'pretrained', 'scratch' or 'frozen'")
    try:
        if encoder_init == "scratch":
            encoder = build_module(spec.class_path, spec.config, source=spec.folder / CONFIG_FILE)
        else:
            encoder, _ = load_module(spec.folder)
    except CheckpointError as exc:
        raise BackboneError(f"--backbone: {exc}") from None
    if not hasattr(encoder, "feature_dim"):
        raise BackboneError(
            f"{spec.folder}: {spec.class_path} has no attribute feature_dim; the SAC heads need the size of its output"
        )
    log.info(
        "encoder %s (%s) from %s: %d parameters, input %d x %dpx frames",
        spec.class_path,
        encoder_init,
        spec.folder,
        sum(p.numel() for p in encoder.parameters()),
        spec.frame_stack,
        spec.image_size,
    )
    return encoder.to(torch.float32)
