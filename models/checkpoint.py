"""Module checkpoints: a folder with ``config.json`` and ``model.safetensors`` (torch + safetensors only).

``config.json`` holds ``{"class": "package.module:ClassName", "config": {...}, "meta": {...}}``;
the class is rebuilt as ``ClassName(**config)`` and the weights (safetensors: tensors only, no
pickle) are loaded strictly. The backbone checkpoint of the pretrain stage and the actor
checkpoint of the finetune stage (read by the collect stage's ``checkpoint`` policy) use it.

**A checkpoint cannot run code.** Checkpoints are what people download, so ``config.json`` may
only name a class in :data:`CHECKPOINT_CLASSES` (this project's models) or one that the calling
program registered itself with :func:`register_checkpoint_class` (passing the class object, so
nothing is imported by name). Any other name is refused *before any import*, with a
:class:`UntrustedClassError` naming it; the same rule covers every class name inside a config
(:class:`models.actor.PixelPolicy`'s ``encoder_class``), through :func:`resolve_class`.

Errors are :class:`CheckpointError` (a ``ValueError``) naming the folder and the fix; this
package depends on nothing in ``pipeline/``, whose loaders turn them into user errors.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

#: The classes a checkpoint's ``config.json`` may name: this project's models, as ``module:QualName``.
CHECKPOINT_CLASSES: tuple[str, ...] = (
    "models.backbone:DualPathBackbone",
    "models.heads:PretrainModel",
    "models.actor:PixelPolicy",
)

#: Classes the running program registered itself (``module:QualName`` -> the class object).
_REGISTERED: dict[str, type[nn.Module]] = {}

M = TypeVar("M", bound=type)


class CheckpointError(ValueError):
    """A checkpoint folder that cannot be used; the message names the folder (or class) and the fix."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """The folder has no ``config.json`` or no ``model.safetensors``."""


class UntrustedClassError(CheckpointError):
    """A checkpoint names a class outside the allow-list; refused before importing anything."""


def class_path(cls: type) -> str:
    """``'package.module:QualName'`` of a class: what ``config.json`` records."""
    return f"{cls.__module__}:{cls.__qualname__}"


def register_checkpoint_class(cls: M) -> M:
    """Allow checkpoints of ``cls`` (an ``nn.Module`` subclass your own code defines) to be loaded.

    Usable as a class decorator. Registration holds for this process only (a spawned worker
    process must import the defining module itself)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_checkpoint_class({cls!r}): expected an nn.Module subclass")
    _REGISTERED[class_path(cls)] = cls
    return cls


def allowed_classes() -> list[str]:
    """Every class name a checkpoint may use now: the project's models, then registered ones."""
    return [*CHECKPOINT_CLASSES, *(p for p in _REGISTERED if p not in CHECKPOINT_CLASSES)]


def resolve_class(path: str) -> type[nn.Module]:
    """The class named ``'package.module:QualName'``, if it is allowed; the one place a name becomes a class.

    Raises:
        UntrustedClassError: ``path`` is not in :func:`allowed_classes` (nothing was imported).
        CheckpointError: an allowed name that does not resolve to an ``nn.Module`` subclass.
    """
    if not isinstance(path, str):
        raise UntrustedClassError(f"class {path!r} is not a 'package.module:ClassName' string")
    if path in _REGISTERED:
        return _REGISTERED[path]
    if path not in CHECKPOINT_CLASSES:
        raise UntrustedClassError(
            f"class {path!r} is not allowed in a checkpoint: only {', '.join(allowed_classes())} can be built "
            "(a checkpoint may not import or call anything else); if this is your own model, "
            "call models.checkpoint.register_checkpoint_class(YourClass) before loading"
        )
    module_name, _, qualname = path.partition(":")
    obj: Any = importlib.import_module(module_name)
    for part in qualname.split("."):
        obj = getattr(obj, part)
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise CheckpointError(f"class {path!r} is not an nn.Module subclass")
    return obj


def _json_default(obj: Any) -> Any:
    if hasattr(obj, "tolist"):  # numpy scalars and arrays
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def _dumps(record: dict[str, Any]) -> str:
    """Deterministic JSON: sorted keys, 2-space indent, trailing newline."""
    return json.dumps(record, sort_keys=True, indent=2, default=_json_default) + "\n"


def save_module(
    folder: str | Path, module: nn.Module, config: dict[str, Any], meta: dict[str, Any] | None = None
) -> None:
    """Write ``module`` (constructible as ``type(module)(**config)``) to ``folder`` atomically.

    The folder is written as a temporary sibling (``.<name>.XXXX.tmp``) and renamed into place,
    replacing any previous one; same module, config and meta give the same bytes."""
    folder = Path(folder)
    record = {"class": class_path(type(module)), "config": config, "meta": meta or {}}
    state = {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()}
    text = _dumps(record)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    tmp.rmdir()  # recreated with the default permissions (mkdtemp's are 0700)
    try:
        tmp.mkdir()
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"class": record["class"]})
        (tmp / CONFIG_FILE).write_text(text)
        if folder.is_dir() and not folder.is_symlink():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def read_checkpoint_config(folder: str | Path) -> dict[str, Any]:
    """The ``config.json`` record of a checkpoint folder (structure checked), without building anything.

    Returns ``{"class": str, "config": dict, "meta": dict}``.

    Raises:
        CheckpointNotFoundError: no ``config.json`` in ``folder``.
        CheckpointError: the file is not JSON or lacks those fields.
    """
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{folder}: not a checkpoint folder (no {CONFIG_FILE}); "
            "expected the output of the pretrain or finetune stage"
        )
    try:
        record = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CheckpointError(
            f"{path}: not valid JSON ({exc}); restore the checkpoint folder written by the pretrain or finetune stage"
        ) from None
    if (
        not isinstance(record, dict)
        or not isinstance(record.get("class"), str)
        or not isinstance(record.get("config", {}), dict)
        or not isinstance(record.get("meta", {}), dict)
    ):
        raise CheckpointError(
            f'{path}: expected {{"class": "package.module:ClassName", "config": {{...}}, "meta": {{...}}}}; '
            "restore the checkpoint folder written by the pretrain or finetune stage"
        )
    return {"class": record["class"], "config": record.get("config", {}), "meta": record.get("meta") or {}}


def build_module(path: str, config: dict[str, Any], source: str | Path = "checkpoint") -> nn.Module:
    """``Class(**config)`` for an allowed class name (random weights); ``source`` names the origin in errors.

    Raises:
        UntrustedClassError: the class (or a class named inside ``config``) is not allowed.
        CheckpointError: ``config`` does not fit the class's constructor.
    """
    try:
        return resolve_class(path)(**config)
    except CheckpointError as exc:
        raise type(exc)(f"{source}: {exc}") from None
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"{source}: cannot build {path} from its config ({type(exc).__name__}: {exc}); "
            f"the {CONFIG_FILE} was edited or comes from another version of this project"
        ) from None


def load_module(folder: str | Path, map_location: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load the module saved in ``folder``; returns ``(module, meta)``.

    Raises:
        CheckpointNotFoundError: ``config.json`` or ``model.safetensors`` missing.
        UntrustedClassError: the class is not allowed (refused before any import).
        CheckpointError: config and weights do not match, or the weights are unreadable.
    """
    folder = Path(folder)
    record = read_checkpoint_config(folder)
    weights = folder / WEIGHTS_FILE
    if not weights.is_file():
        raise CheckpointNotFoundError(
            f"{folder}: no {WEIGHTS_FILE} beside {CONFIG_FILE}; copy the whole checkpoint folder"
        )
    module = build_module(record["class"], record["config"], source=folder / CONFIG_FILE)
    try:
        state = load_file(str(weights), device=str(map_location))
    except (SafetensorError, OSError) as exc:
        raise CheckpointError(
            f"{weights}: unreadable weights ({exc}); the file is damaged: "
            "restore the checkpoint folder or rerun the stage that wrote it"
        ) from None
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = " ".join(str(exc).split())
        if len(detail) > 400:
            detail = detail[:400] + " ..."
        raise CheckpointError(
            f"{folder}: {CONFIG_FILE} does not match {WEIGHTS_FILE} ({detail}); "
            "the two files come from different checkpoints, "
            "or the folder was written by a version of this project whose module had other layers "
            "(a pretrain model/ from before the clip_motion head, say): use a folder written in one piece "
            "by the pretrain or finetune stage of this version (or rerun that stage)"
        ) from None
    return module, record["meta"]
