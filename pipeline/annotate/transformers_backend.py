"""Annotate in-process with any image-text-to-text model of transformers.

``AutoModelForImageTextToText`` + ``AutoProcessor`` loaded from the folder that
:func:`pipeline.common.weights.resolve_weights` finds for ``annotate.model`` (a local
folder saved with ``save_pretrained``, a name in ``weights.cache_dir``, or a
hub id ``owner/name`` / ``hf://owner/name`` downloaded when online). Prompts go
through the model's own chat template (one image, then the prompt text);
frames are generated ``annotate.batch_size`` at a time, greedy, on
``annotate.device`` (CUDA when present, in bfloat16 there). Frames whose answer
does not match the schema are retried up to ``annotate.max_retries`` times with
sampling at ``annotate.retry_temperature`` (seeded from the frames' cache keys,
so reruns repeat), then recorded as failed with the raw text. A later run that
asks such frames again (``FrameItem.rerun``) samples from its first try, with
seeds past those of the earlier runs.

``annotate.model: random`` (or weights missing with ``weights.on_missing:
random``) runs the tiny random model of :mod:`pipeline.annotate.tiny_vlm`: the
same code path, no download, answers that are noise.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pipeline.annotate.base import Backend, FrameItem, FrameResult, result_from_text
from pipeline.annotate.tiny_vlm import SEED as TINY_SEED
from pipeline.common.errors import UserError
from pipeline.common.weights import resolve_weights

if TYPE_CHECKING:
    from pipeline.config import AnnotateParams, WeightsParams

log = logging.getLogger(__name__)

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def weights_source(model: str) -> str:
    """``annotate.model`` as a weights source: a bare hub id ``owner/name`` becomes ``hf://owner/name``."""
    if _HUB_ID_RE.match(model) and not Path(model).expanduser().exists():
        return f"hf://{model}"
    return model


class TransformersBackend(Backend):
    """A transformers image-text-to-text model, batched, greedy with sampled retries."""

    name = "transformers"

    def __init__(self, params: AnnotateParams, weights: WeightsParams) -> None:
        import torch

        from pipeline.common.device import select_device

        self.device = select_device(params.device, param_key="annotate.device")
        self.batch_size = params.batch_size
        self.max_new_tokens = params.max_new_tokens
        self.max_retries = params.max_retries
        self.retry_temperature = params.retry_temperature
        self.model = params.model
        self.resolved = resolve_weights(
            weights_source(params.model),
            what="annotate VLM (image-text-to-text)",
            param_key="annotate.model",
            on_missing=weights.on_missing,
            cache_dir=weights.cache_dir,
            offline=weights.offline,
        )
        if self.resolved.random_init:
            from pipeline.annotate.tiny_vlm import build_tiny_vlm

            log.warning("annotate: running the tiny RANDOM vision-language model: its answers are noise")
            model, processor = build_tiny_vlm()
            self.model_key = f"tiny-random-vlm-seed{TINY_SEED}"
        else:
            model, processor = self._load(self.resolved.path)
            self.model_key = f"sha256:{self.resolved.sha256}" if self.resolved.sha256 else str(self.resolved.path)
        tokenizer = getattr(processor, "tokenizer", None)
        if getattr(processor, "chat_template", None) is None and getattr(tokenizer, "chat_template", None) is None:
            raise UserError(
                f"annotate.model = {params.model!r}: the processor has no chat template.\n"
                "  Fix: use an instruction-tuned (chat) image-text-to-text model, "
                "or add a chat_template to its processor."
            )
        if tokenizer is not None:
            tokenizer.padding_side = "left"  # decoder-only batched generation: prompts must end together
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            model = model.to(dtype)
        self.net = model.to(self.device).eval()
        self.processor = processor

    def _load(self, path: Path | None) -> tuple[Any, Any]:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        if path is None or not path.is_dir():
            raise UserError(
                f"annotate.model = {self.model!r}: {path} is not a model folder.\n"
                "  Fix: point annotate.model at a folder written by save_pretrained "
                "(config.json, weights, processor files)."
            )
        try:
            processor = AutoProcessor.from_pretrained(path)
            model = AutoModelForImageTextToText.from_pretrained(path)
        except (OSError, ValueError, KeyError) as exc:
            raise UserError(
                f"annotate.model = {self.model!r}: {path} cannot be loaded as an image-text-to-text model "
                f"({type(exc).__name__}: {exc}).\n"
                "  Fix: use a model that AutoModelForImageTextToText and AutoProcessor load (e.g. a Llava, Qwen2-VL, "
                "Idefics3/SmolVLM or Gemma 3 checkpoint)."
            ) from None
        return model, processor

    def provenance(self) -> dict[str, Any]:
        return self.resolved.provenance()

    # -- generation --------------------------------------------------------------
    def _generate(self, items: list[FrameItem], temperature: float | None, seed: int) -> list[str]:
        """Answer texts for ``items`` (one generate call); greedy when ``temperature`` is None."""
        import torch
        from PIL import Image

        texts = []
        for item in items:
            messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": item.prompt}]}]
            texts.append(self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False))
        images = [Image.fromarray(item.image) for item in items]
        inputs = self.processor(images=images, text=texts, padding=True, return_tensors="pt").to(self.device)
        if "pixel_values" in inputs and inputs["pixel_values"].is_floating_point():
            inputs["pixel_values"] = inputs["pixel_values"].to(self.net.dtype)
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": temperature is not None}
        if temperature is not None:
            kwargs["temperature"] = temperature
            torch.manual_seed(seed)
        try:
            with torch.inference_mode():
                out = self.net.generate(**inputs, **kwargs)
        except torch.OutOfMemoryError as exc:
            raise UserError(
                f"annotate: out of memory generating a batch of {len(items)} frames ({exc}).\n"
                "  Fix: lower annotate.batch_size."
            ) from None
        new_tokens = out[:, inputs["input_ids"].shape[1] :]
        return self.processor.batch_decode(new_tokens, skip_special_tokens=True)

    def _annotate_batch(self, batch: list[FrameItem]) -> Iterator[FrameResult]:
        todo = batch
        last: dict[int, FrameResult] = {}
        first = max(item.rerun for item in batch) * (self.max_retries + 1)  # a rerun samples past earlier runs' seeds
        for attempt in range(self.max_retries + 1):
            temperature = None if first + attempt == 0 else self.retry_temperature
            seed = int(
                hashlib.sha256(("".join(i.key for i in todo) + str(first + attempt)).encode()).hexdigest()[:15], 16
            )
            answers = self._generate(todo, temperature, seed)
            still = []
            for item, raw in zip(todo, answers, strict=True):
                result = result_from_text(item, raw, calls=attempt + 1)
                if result.status == "ok":
                    yield result
                else:
                    last[id(item)] = result
                    still.append(item)
            todo = still
            if not todo:
                return
        for item in todo:
            yield last[id(item)]

    def annotate(self, items: Iterable[FrameItem]) -> Iterator[FrameResult]:
        source = iter(items)
        while batch := list(itertools.islice(source, self.batch_size)):
            yield from self._annotate_batch(batch)

    def close(self) -> None:
        self.net = None
        if self.device.type == "cuda":
            import torch

            torch.cuda.empty_cache()
