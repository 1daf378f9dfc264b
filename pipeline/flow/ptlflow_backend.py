"""Any ptlflow model (RAFT and others) as a flow backend, batched, fp16 on CUDA.

ptlflow's convention: input ``{"images": (B, 2, 3, H, W)}`` float in [0, 1],
BGR channel order; the model pads to its stride itself; output ``["flows"]``
(B, 1, 2, H, W), forward flow in pixels (channel 0 dx, channel 1 dy) - the
pipeline's convention, so no conversion is needed on the way out.

Checkpoints go through :func:`pipeline.common.weights.resolve_weights`: a local file
(a dict holding ``state_dict``, as ptlflow saves), a file in ``weights.cache_dir``,
a ptlflow tag (``things``, ``sintel``, ...) found in ptlflow's own cache
(``$TORCH_HOME/hub/checkpoints``) or downloaded there by ptlflow when online,
or ``random``. ``import ptlflow`` takes tens of seconds and imports every model,
so it happens only when this backend is built.
"""

from __future__ import annotations

import contextlib
import difflib
import io
import logging
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import numpy as np

from pipeline.common.errors import UserError
from pipeline.common.weights import RANDOM, ResolvedWeights, resolve_weights
from pipeline.config import FlowParams, WeightsParams
from pipeline.flow.base import PairBackend

log = logging.getLogger(__name__)


class UnknownModelError(UserError, ValueError):
    """``flow.model`` is not a ptlflow model name."""


class CheckpointMismatchError(UserError, ValueError):
    """The checkpoint file does not fit the chosen model."""


def import_ptlflow() -> ModuleType:
    """Import ptlflow with its import-time chatter (xFormers, alt_cuda_corr warnings) sent to the debug log."""
    chatter = io.StringIO()
    logging.getLogger("dinov2").setLevel(logging.ERROR)  # "xFormers not available", harmless
    with contextlib.redirect_stdout(chatter), contextlib.redirect_stderr(chatter), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import ptlflow
    if chatter.getvalue().strip():
        log.debug("import ptlflow said: %s", chatter.getvalue().strip())
    from loguru import logger

    logger.disable("ptlflow")  # it logs every checkpoint restore at INFO through loguru
    return ptlflow


def ptlflow_checkpoint_dir() -> Path:
    """Where ptlflow caches its named checkpoints: ``$TORCH_HOME/hub/checkpoints``."""
    import torch

    return Path(torch.hub.get_dir()) / "checkpoints"


def _is_tag_like(source: str) -> bool:
    return source != RANDOM and not any(ch in source for ch in "/\\.~:")


def resolve_ptlflow_weights(
    ptlflow: ModuleType, model: str, source: str, weights: WeightsParams, param_key: str = "flow.weights"
) -> ResolvedWeights:
    """Resolve ``source`` for ptlflow model ``model`` (see the module docstring for the forms).

    Raises:
        UserError: ``source`` looks like a checkpoint tag that ``model`` does not have.
        pipeline.common.weights.WeightsNotFoundError: nothing found and ``weights.on_missing`` is ``error``.
    """
    ref = ptlflow.get_model_reference(model)
    tags: dict[str, str] = dict(getattr(ref, "pretrained_checkpoints", None) or {})
    found_locally = Path(source).expanduser().exists()
    if _is_tag_like(source) and source not in tags and not found_locally:
        in_cache = (Path(weights.cache_dir).expanduser() / source).exists()
        if not in_cache:
            choices = ", ".join(sorted(tags)) or "none (use a local checkpoint file or random)"
            raise UserError(
                f"{param_key} = {source!r} is not a checkpoint tag of ptlflow model {model!r} (tags: {choices}).\n"
                f"  Fix: set {param_key} to one of those tags, a local checkpoint file, or random."
            )
    extra_names = [Path(tags[source]).name] if source in tags else []

    def download(name: str, _cache: Path) -> Path:
        if name not in tags:
            raise ValueError(f"{name!r} is not a checkpoint tag of {model!r}")
        ptlflow.load_checkpoint(name, ref)  # downloads into the torch hub cache, hash-checked
        return ptlflow_checkpoint_dir() / Path(tags[name]).name

    return resolve_weights(
        source,
        what=f"ptlflow {model} checkpoint",
        param_key=param_key,
        on_missing=weights.on_missing,
        cache_dir=weights.cache_dir,
        offline=weights.offline,
        extra_cache_dirs=[ptlflow_checkpoint_dir()],
        extra_names=extra_names,
        downloader=download,
    )


def to_ptlflow_images(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:  # noqa: F821
    """ptlflow's input from two (N, H, W, 3) uint8 RGB tensors: (N, 2, 3, H, W) float32 in [0, 1], BGR."""
    import torch

    pair = torch.stack([first, second], dim=1)  # (N, 2, H, W, 3)
    return pair.permute(0, 1, 4, 2, 3).flip(2).float().div_(255.0)


class PtlflowBackend(PairBackend):
    """A ptlflow model by name, evaluated in batches on ``flow.device`` (fp16 autocast on CUDA)."""

    name: ClassVar[str] = "ptlflow"

    def __init__(
        self,
        model: str,
        weights_source: str,
        weights: WeightsParams,
        batch_size: int = 32,
        device: str = "auto",
        fp16: bool = True,
        min_size: int = 128,
    ) -> None:
        super().__init__(batch_size)
        self.min_size = min_size
        import torch

        from pipeline.common.device import autocast_dtype, select_device

        self.device = select_device(device, param_key="flow.device")
        self.amp_dtype = autocast_dtype(self.device, fp16)
        ptlflow = import_ptlflow()
        names = ptlflow.get_model_names()
        if model not in names:
            close = difflib.get_close_matches(model, names, n=3)
            hint = f" (did you mean {' or '.join(close)}?)" if close else ""
            raise UnknownModelError(
                f"flow.model = {model!r} is not a ptlflow model{hint}.\n"
                f"  Fix: set flow.model to one of: {', '.join(names)}"
            )
        self.model_name = model
        self.weights = resolve_ptlflow_weights(ptlflow, model, weights_source, weights)
        torch.manual_seed(0)  # a random initialisation is the same on every run
        ckpt = str(self.weights.path) if self.weights.path is not None else None
        try:
            net = ptlflow.get_model(model, ckpt_path=ckpt)
        except (KeyError, RuntimeError) as exc:
            raise CheckpointMismatchError(
                f"flow.weights = {weights_source!r} ({ckpt}) cannot be loaded into ptlflow model {model!r}: "
                f"{type(exc).__name__}: {exc}.\n"
                f"  Fix: give a checkpoint of {model!r} (a torch file holding a dict with 'state_dict'), "
                "or set flow.model to the model it belongs to."
            ) from exc
        self.net = net.eval().to(self.device)
        self.ptlflow_version = ptlflow.__version__

    @classmethod
    def from_params(cls, params: FlowParams, weights: WeightsParams) -> PtlflowBackend:
        return cls(
            params.model, params.weights, weights, params.batch_size, params.device, params.fp16, params.min_size
        )

    def _autocast(self) -> contextlib.AbstractContextManager[Any]:
        import torch

        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def forward(self, images: torch.Tensor) -> torch.Tensor:  # noqa: F821
        """The bare model: (N, 2, 3, H, W) float BGR in [0, 1] on the device -> (N, 2, H, W) float flow."""
        import torch

        with torch.inference_mode(), self._autocast():
            return self.net({"images": images})["flows"][:, 0]

    def input_size(self, height: int, width: int) -> tuple[int, int]:
        """(H', W') the model sees: upsampled so the shorter side is at least ``min_size``."""
        scale = max(1.0, self.min_size / min(height, width))
        return round(height * scale), round(width * scale)

    def pairs_flow(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        import torch
        import torch.nn.functional as F

        h, w = first.shape[1:3]
        a = torch.from_numpy(np.ascontiguousarray(first)).to(self.device, non_blocking=True)
        b = torch.from_numpy(np.ascontiguousarray(second)).to(self.device, non_blocking=True)
        images = to_ptlflow_images(a, b)
        size = self.input_size(h, w)
        if size != (h, w):
            images = F.interpolate(images.flatten(0, 1), size=size, mode="bilinear", align_corners=False).unflatten(
                0, (-1, 2)
            )
        try:
            flow = self.forward(images).float()
        except RuntimeError as exc:
            if "too small" not in str(exc):
                raise
            raise UserError(
                f"frames of {h}x{w} pixels (model input {size[0]}x{size[1]}) are too small "
                f"for ptlflow model {self.model_name!r} ({exc}).\n"
                f"  Fix: raise flow.min_size (128 for RAFT models), or use flow.backend: dis or simulator."
            ) from exc
        if size != (h, w):
            # back to frame pixels: resample the field and shrink the vectors by the same factors
            flow = F.interpolate(flow, size=(h, w), mode="bilinear", align_corners=False)
            flow = flow * torch.tensor([w / size[1], h / size[0]], device=flow.device).view(1, 2, 1, 1)
        if not torch.isfinite(flow).all():
            raise UserError(
                f"ptlflow model {self.model_name!r} returned non-finite flow for {h}x{w} frames "
                f"(model input {size[0]}x{size[1]}).\n"
                "  Fix: raise flow.min_size "
                "(RAFT models need 128: their coarsest correlation level is 1/64 of the input), "
                f"or check the checkpoint ({self.weights.source})."
            )
        return flow.cpu().numpy()

    def describe(self) -> dict[str, Any]:
        return {
            "backend": self.name,
            "model": self.model_name,
            "weights": self.weights.provenance(),
            "precision": "fp16" if self.amp_dtype is not None else "fp32",
            "min_size": self.min_size,
            "ptlflow": self.ptlflow_version,
        }
