"""The ``annotate`` params section: which VLM backend, which frames, which prompt."""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipeline.config.base import DeviceName, Section

DEFAULT_PROMPT = (
    "You see one frame of a simulated {task} control task. "
    "Reply with a JSON object only, with keys: caption (one short sentence), "
    "objects (a list of {{name, description, box}} for the objects that matter for the task; "
    "box is [x0, y0, x1, y1] in pixels or null) and motion (one short sentence on how things move)."
)


class AnnotateParams(Section):
    backend: Literal["simulator", "transformers", "openai"] = Field(
        "simulator",
        description="'simulator': grounded in recorded physics (no weights); 'transformers': in-process image-text-to-text model; 'openai': an OpenAI-compatible server (vLLM, Ollama).",
    )
    every_k: int = Field(10, ge=1, description="Annotate every k-th frame of each episode (frame 0, k, 2k, ...).")
    prompt: str = Field(DEFAULT_PROMPT, min_length=1, description="Prompt template; {task} is replaced by the task name.")
    model: str = Field("random", description="Model: a local folder or hub id ('transformers'), or the served model name ('openai').")
    device: DeviceName = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N' ('transformers').")
    batch_size: int = Field(4, ge=1, le=1024, description="Frames per generate() call ('transformers').")
    max_new_tokens: int = Field(256, ge=1, le=8192)
    base_url: str = Field("http://127.0.0.1:8000/v1", description="Server base URL ('openai').")
    api_key_env: str = Field("OPENAI_API_KEY", description="Environment variable that holds the API key ('openai'); may be unset for local servers.")
    concurrency: int = Field(8, ge=1, le=1024, description="Requests in flight at once ('openai').")
    timeout_s: float = Field(60.0, gt=0, description="Per-request timeout in seconds ('openai').")
    max_retries: int = Field(3, ge=0, le=100, description="Retries per frame after a failed request or an invalid answer.")
    cache_dir: str = Field("data/cache/annotate", description="Content-addressed answer cache; survives reruns and interruptions.")
