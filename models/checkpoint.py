"""Generic module checkpoints: a folder with ``config.json`` and ``model.safetensors``.

``config.json`` holds ``{"class": "package.module:ClassName", "config": {...}, "meta": {...}}``;
the class is rebuilt as ``ClassName(**config)`` and the weights loaded strictly.
The backbone checkpoint of the pretrain stage and the actor checkpoint of the
finetune stage (read by the collect stage's ``checkpoint`` policy) use it.
"""
from __future__ import annotations

import importlib
import json
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from pipeline.io import atomic_path, dumps_json

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_module(folder: str | Path, module: nn.Module, config: dict[str, Any], meta: dict[str, Any] | None = None) -> None:
    """Write ``module`` (constructible as ``type(module)(**config)``) to ``folder`` atomically."""
    cls = type(module)
    record = {"class": f"{cls.__module__}:{cls.__qualname__}", "config": config, "meta": meta or {}}
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    with atomic_path(folder) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"class": record["class"]})
        (tmp / CONFIG_FILE).write_text(dumps_json(record))


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` record of a checkpoint folder, without loading weights."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: not a checkpoint folder (no {CONFIG_FILE}); expected the output of the pretrain or finetune stage")
    return json.loads(path.read_text())


def load_module(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load the module saved in ``folder``; returns ``(module, meta)``."""
    record = read_checkpoint_config(folder)
    module_name, _, qualname = record["class"].partition(":")
    cls: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        cls = getattr(cls, part)
    module = cls(**record["config"])
    state = load_file(str(Path(folder) / WEIGHTS_FILE), device=str(map_location))
    module.load_state_dict(state, strict=True)
    return module, record.get("meta", {})
