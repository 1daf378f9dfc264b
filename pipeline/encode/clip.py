"""CLIP image and text embeddings behind a small interface; open_clip is the one backend.

A backend maps frames (N, H, W, 3) uint8 and texts to L2-normalised float32
embeddings (N, D). It is chosen by ``encode.clip_backend`` from :data:`BACKENDS`;
a new backend is one class and one registry line.

Weights always go through :func:`pipeline.common.weights.resolve_weights`:
``encode.weights`` is an open_clip pretrained tag of ``encode.clip_model``
(downloaded by open_clip when online, found in its caches offline), a local
checkpoint file, ``local-dir:/path`` (``open_clip_config.json`` plus weights:
the folder's config wins over ``clip_model``), ``hf://...``, or ``random``.
The project ships ``semore-tiny-clip`` (``model_configs/``), a tiny ViT + text
tower for offline CPU runs, registered with ``open_clip.add_model_config``.
"""

from __future__ import annotations

import difflib
import logging
import os
import pickle
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from pipeline.common.errors import UserError
from pipeline.common.registry import Registry
from pipeline.common.weights import ResolvedWeights, resolve_weights
from pipeline.config import EncodeParams, WeightsParams

log = logging.getLogger(__name__)

MODEL_CONFIG_DIR = Path(__file__).parent / "model_configs"
LOCAL_DIR = "local-dir:"
_registered = False


class ClipEncoder(Protocol):
    """What the encode stage needs from a CLIP model."""

    dim: int

    def encode_images(self, frames: np.ndarray) -> np.ndarray:
        """(N, H, W, 3) uint8 RGB -> (N, D) float32, L2-normalised rows."""

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        """N strings -> (N, D) float32, L2-normalised rows."""

    def provenance(self) -> dict[str, Any]:
        """JSON-ready record of the model, its weights (hash or random init) and the preprocessing."""


class ClipModelError(UserError, ValueError):
    """The CLIP model name or its weights cannot be used; the message says what to change."""


def register_project_configs() -> None:
    """Make the project's model configs (``semore-tiny-clip``) known to open_clip (once per process)."""
    global _registered
    if not _registered:
        import open_clip

        open_clip.add_model_config(MODEL_CONFIG_DIR)
        _registered = True


def _tag_lookup(model: str, tag: str) -> tuple[list[Path], list[str]]:
    """Folders and file names where open_clip would have cached the weights of ``tag`` (for offline use)."""
    import huggingface_hub
    from open_clip.pretrained import HF_WEIGHTS_NAME, _get_safe_alternatives, get_pretrained_cfg

    cfg = get_pretrained_cfg(model, tag)
    dirs: list[Path] = []
    names: list[str] = []
    if cfg.get("hf_hub"):
        repo_id, filename = os.path.split(cfg["hf_hub"])  # open_clip's own convention: "org/repo/[file]"
        filename = filename or HF_WEIGHTS_NAME
        for candidate in [*_get_safe_alternatives(filename), filename]:
            cached = huggingface_hub.try_to_load_from_cache(repo_id, candidate)
            if isinstance(cached, str):
                dirs.append(Path(cached).parent)
                names.append(Path(cached).name)
    if cfg.get("url"):
        dirs.append(Path("~/.cache/clip").expanduser())  # open_clip's download folder for URLs
        names.append(Path(cfg["url"]).name)
    return dirs, names


def _tag_downloader(model: str) -> Callable[[str, Path], Path]:
    def download(tag: str, cache_dir: Path) -> Path:
        from open_clip.pretrained import download_pretrained, get_pretrained_cfg

        cfg = get_pretrained_cfg(model, tag)
        if not cfg:
            raise FileNotFoundError(f"{tag!r} is not an open_clip pretrained tag of {model}")
        return Path(download_pretrained(cfg))

    return download


class OpenClipEncoder:
    """open_clip model + tokenizer, batched on the selected device."""

    def __init__(self, params: EncodeParams, weights: WeightsParams) -> None:
        import open_clip
        import torch

        from pipeline.common.device import select_device

        register_project_configs()
        self.params = params
        self.device = select_device(params.device, param_key="encode.device")
        self.amp = params.fp16 and self.device.type == "cuda"
        model_name, pretrained, resolved, extra = self._resolve(params, weights)
        self.model_name = model_name
        self.resolved = resolved
        self.extra = extra
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(params.seed)  # random init (and any init-time randomness) is reproducible
            try:
                model, _, self._pil_preprocess = open_clip.create_model_and_transforms(
                    model_name, pretrained=pretrained, device=self.device, **extra.get("create_kwargs", {})
                )
            except (RuntimeError, ValueError, KeyError, OSError, EOFError, pickle.UnpicklingError) as exc:
                raise ClipModelError(
                    f"encode: open_clip could not build {model_name!r} with weights {params.weights!r} "
                    f"({type(exc).__name__}: {exc}).\n"
                    "  Fix: check that encode.weights holds weights of encode.clip_model, "
                    f"or set encode.weights: random."
                ) from exc
        model.eval()
        self.model = model
        self.tokenizer = open_clip.get_tokenizer(model_name)
        self.preprocess_cfg = dict(model.visual.preprocess_cfg)
        self.dim = self._probe_dim()
        mean = torch.tensor(self.preprocess_cfg["mean"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        std = torch.tensor(self.preprocess_cfg["std"], dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
        self._mean, self._std = mean, std
        if resolved.random_init:
            log.warning(
                "!!! encode: CLIP %s has RANDOM WEIGHTS (%s); its embeddings carry no semantics. "
                "Recorded in provenance. "
                "For real targets set encode.clip_model: ViT-B-32 and encode.weights: laion2b_s34b_b79k "
                "(or a local file).",
                model_name,
                resolved.reason,
            )

    def _probe_dim(self) -> int:
        import torch

        with torch.inference_mode():
            return int(self.model.encode_text(self.tokenizer([""]).to(self.device)).shape[-1])

    @staticmethod
    def _resolve(
        params: EncodeParams, weights: WeightsParams
    ) -> tuple[str, str | None, ResolvedWeights, dict[str, Any]]:
        """(open_clip model name, pretrained file or None, resolved weights, extra create kwargs and notes)."""
        import open_clip

        common = dict(
            what=f"CLIP {params.clip_model} weights",
            param_key="encode.weights",
            on_missing=weights.on_missing,
            cache_dir=weights.cache_dir,
            offline=weights.offline,
        )
        source = params.weights
        if source.startswith(LOCAL_DIR):
            folder = source[len(LOCAL_DIR) :]
            resolved = resolve_weights(folder, **common)
            if resolved.path is not None:
                if not (resolved.path / "open_clip_config.json").is_file():
                    raise ClipModelError(
                        f"encode.weights = {source!r}: {resolved.path} has no open_clip_config.json; "
                        f"a local-dir folder holds open_clip_config.json and the weights"
                    )
                return LOCAL_DIR + str(resolved.path), None, resolved, {}
            _check_model_name(params.clip_model)
            return params.clip_model, None, resolved, {}

        _check_model_name(params.clip_model)
        model = params.clip_model
        from open_clip.pretrained import get_pretrained_cfg

        tag_cfg = get_pretrained_cfg(model, source) if source != "random" else {}
        dirs, names = _tag_lookup(model, source) if tag_cfg else ([], [])
        resolved = resolve_weights(
            source,
            **common,
            extra_cache_dirs=dirs,
            extra_names=names,
            downloader=_tag_downloader(model) if tag_cfg else None,
        )
        if resolved.path is None:
            return model, None, resolved, {}
        if resolved.path.is_dir():
            if (resolved.path / "open_clip_config.json").is_file():
                return LOCAL_DIR + str(resolved.path), None, resolved, {}
            raise ClipModelError(
                f"encode.weights = {source!r} resolved to the folder {resolved.path}, "
                "which has no open_clip_config.json; "
                f"point encode.weights at the checkpoint file, or use local-dir:<folder with open_clip_config.json>"
            )
        extra: dict[str, Any] = {}
        if tag_cfg:
            # The tag's own preprocessing, as open_clip applies it when given the tag by name; and its
            # activation: open_clip only warns on a QuickGELU mismatch, we build the matching model.
            kwargs: dict[str, Any] = {}
            for key, arg in (
                ("mean", "image_mean"),
                ("std", "image_std"),
                ("interpolation", "image_interpolation"),
                ("resize_mode", "image_resize_mode"),
            ):
                if key in tag_cfg:
                    kwargs[arg] = tag_cfg[key]
            if tag_cfg.get("quick_gelu", False) and not open_clip.get_model_config(model).get("quick_gelu", False):
                kwargs["force_quick_gelu"] = True
            extra = {"create_kwargs": kwargs, "pretrained_tag": source}
        return model, str(resolved.path), resolved, extra

    def _preprocess(self, frames: np.ndarray) -> torch.Tensor:  # noqa: F821
        """open_clip's eval transform, batched on the device: resize (uint8, antialiased), centre crop, normalise."""
        import torch
        from torchvision.transforms.v2 import InterpolationMode
        from torchvision.transforms.v2 import functional as F

        cfg = self.preprocess_cfg
        size = cfg["size"] if isinstance(cfg["size"], (tuple, list)) else (cfg["size"], cfg["size"])
        x = torch.from_numpy(np.ascontiguousarray(frames)).to(self.device).permute(0, 3, 1, 2)
        interpolation = InterpolationMode.BICUBIC if cfg["interpolation"] == "bicubic" else InterpolationMode.BILINEAR
        if tuple(x.shape[-2:]) != tuple(size):
            if cfg["resize_mode"] == "squash":
                x = F.resize(x, list(size), interpolation=interpolation, antialias=True)
            elif cfg["resize_mode"] == "shortest":
                x = F.resize(
                    x, size[0] if size[0] == size[1] else list(size), interpolation=interpolation, antialias=True
                )
                x = F.center_crop(x, list(size))
            else:
                return torch.stack([self._pil_preprocess(_to_pil(f)) for f in frames]).to(self.device)
        x = x.float().div_(255.0)
        return (x - self._mean) / self._std

    def encode_images(self, frames: np.ndarray) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            for start in range(0, len(frames), self.params.batch_size):
                x = self._preprocess(frames[start : start + self.params.batch_size])
                out.append(self.model.encode_image(x, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def encode_texts(self, texts: Sequence[str]) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode(), torch.autocast(self.device.type, dtype=torch.float16, enabled=self.amp):
            for start in range(0, len(texts), self.params.batch_size):
                tokens = self.tokenizer(list(texts[start : start + self.params.batch_size])).to(self.device)
                out.append(self.model.encode_text(tokens, normalize=True).float().cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, self.dim), np.float32)

    def provenance(self) -> dict[str, Any]:
        import open_clip
        import torch

        config = open_clip.get_model_config(self.model_name)
        return {
            "backend": "open_clip",
            "open_clip_version": open_clip.__version__,
            "torch_version": torch.__version__.split("+")[0],
            "model": self.params.clip_model if not self.model_name.startswith(LOCAL_DIR) else self.model_name,
            "model_config": config,
            "weights_param": self.params.weights,
            "pretrained_tag": self.extra.get("pretrained_tag"),
            "weights": self.resolved.provenance(),
            "random_init": self.resolved.random_init,
            "init_seed": self.params.seed if self.resolved.random_init else None,
            "embed_dim": self.dim,
            "preprocess": {
                **{k: list(v) if isinstance(v, tuple) else v for k, v in self.preprocess_cfg.items()},
                "implementation": (
                    "open_clip eval transform, batched in torch: "
                    "uint8 resize (antialiased) + centre crop + /255 + normalise(mean, std)"
                ),
            },
            "tokenizer": (
                f"{type(self.tokenizer).__name__}(context_length={getattr(self.tokenizer, 'context_length', None)})"
            ),
            "precision": "fp16 autocast" if self.amp else "fp32",
            "normalize": "L2 (unit norm), stored as float16",
        }


def _to_pil(frame: np.ndarray) -> Any:
    from PIL import Image

    return Image.fromarray(frame, mode="RGB")


def _check_model_name(name: str) -> None:
    import open_clip

    register_project_configs()
    known = open_clip.list_models()
    if name not in known:
        close = difflib.get_close_matches(name, known, n=5)
        hint = f" Close matches: {', '.join(close)}." if close else ""
        raise ClipModelError(
            f"encode.clip_model = {name!r} is not an open_clip model.{hint} "
            "Use a name from open_clip.list_models() (e.g. ViT-B-32), semore-tiny-clip, "
            "or encode.weights: local-dir:/path."
        )


#: encode.clip_backend -> constructor ``(EncodeParams, WeightsParams) -> ClipEncoder``, imported lazily.
BACKENDS: Registry[Callable[[EncodeParams, WeightsParams], ClipEncoder]] = Registry(
    "encode.clip_backend",
    {
        "open_clip": "pipeline.encode.clip:OpenClipEncoder",
    },
)


def load_clip(params: EncodeParams, weights: WeightsParams) -> ClipEncoder:
    """Build the CLIP encoder chosen by ``params.clip_backend``."""
    return BACKENDS.get(params.clip_backend)(params, weights)
