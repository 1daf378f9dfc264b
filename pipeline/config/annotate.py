"""The ``annotate`` params section: which VLM backend, which frames, which prompt."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator

from pipeline.config.base import Bool, DeviceName, Float, Int, Section

#: Asks a VLM for what the simulator backend says (:mod:`pipeline.annotate.describe`): the state a controller
#: needs, in coarse words, under the answer schema's keys (caption, objects, motion).
DEFAULT_PROMPT = (
    "You see one frame of a simulated {task} control task. Say what a controller needs to know, in a few plain words "
    "each, not numbers. Reply with a JSON object only, with keys: "
    "caption (one sentence on the state: the pose of each moving part, e.g. a pole upright, tilted a little or a lot "
    "to the left or right, horizontal or hanging down; a body level, nose up or down, upright, leaning or fallen; "
    "where things are in the frame and relative to each other, e.g. left of the middle, above the cup, "
    "near the target; and which parts touch the ground or each other), "
    "objects (a list of {{name, description, box}} for the objects that matter for the task: name is a short noun, "
    "description gives its pose, place, motion and contacts in a few words, box is [x0, y0, x1, y1] in pixels or null) "
    "and motion (one short sentence on which way and how fast things move or turn: still, slowly or fast; "
    "left, right, up or down; clockwise or counter-clockwise)."
)
#: Why every frame by default (cost against coverage, not results): with the default backend (simulator) a frame
#: costs 0.2-0.35 ms to describe, and the stage on the default data (4 episodes x 101 frames per task) took 2.0-2.7 s
#: per task at k = 1 against 1.4-1.6 s at k = 10 (loading episodes and writing JSON dominate), far below what
#: collecting those frames cost. In exchange every frame gets a text target (at k = 10, 90% had none and some
#: pretraining batches held no annotated frame), and short states (a pole swinging through upright in a few frames)
#: are not skipped. A VLM backend costs per frame: raise it there (the README's full-scale run uses 5).
DEFAULT_EVERY_K = 1


class AnnotateParams(Section):
    backend: Literal["simulator", "transformers", "openai"] = Field(
        "simulator",
        description="'simulator': grounded in recorded physics (no weights); 'transformers': in-process "
        "image-text-to-text model; 'openai': an OpenAI-compatible server (vLLM, Ollama).",
    )
    every_k: Int = Field(
        DEFAULT_EVERY_K,
        ge=1,
        description="Annotate every k-th frame of each episode (frame 0, k, 2k, ...). 1: every frame (the simulator "
        "describes a frame in under 1 ms); raise it for a VLM backend, which costs per frame.",
    )
    prompt: str = Field(
        DEFAULT_PROMPT,
        min_length=1,
        description="Prompt template (str.format): {task} is replaced by the task name; "
        "write {{ and }} for literal braces.",
    )
    model: str = Field(
        "random",
        min_length=1,
        description="'transformers': a local folder, a name in weights.cache_dir, a hub id (owner/name) or 'random' "
        "(tiny random model); 'openai': the served model name.",
    )
    device: DeviceName = Field("auto", description="'auto', 'cpu', 'cuda' or 'cuda:N' ('transformers').")
    batch_size: Int = Field(4, ge=1, le=1024, description="Frames per generate() call ('transformers').")
    max_new_tokens: Int = Field(
        256, ge=1, le=8192, description="Most tokens an answer may have ('transformers', 'openai')."
    )
    base_url: str = Field("http://127.0.0.1:8000/v1", description="Server base URL, up to /v1 ('openai').")
    api_key_env: str = Field(
        "OPENAI_API_KEY",
        description="Environment variable that holds the API key ('openai'); may be unset for local servers.",
    )
    concurrency: Int = Field(8, ge=1, le=1024, description="Requests in flight at once ('openai').")
    timeout_s: Float = Field(
        60.0, gt=0, description="Timeout of a whole request in seconds, response read included ('openai')."
    )
    max_retries: Int = Field(
        3, ge=0, le=100, description="Retries per frame after a failed request or an invalid answer."
    )
    retry_backoff_s: Float = Field(
        0.5,
        ge=0,
        le=60,
        description="Wait before the first retry of a request, doubled at each retry (at most 30 s) ('openai').",
    )
    retry_temperature: Float = Field(
        0.7,
        gt=0,
        le=2,
        description="Sampling temperature of retries after an invalid answer (the first try is greedy).",
    )
    max_invalid_runs: Int = Field(
        3,
        ge=1,
        le=100,
        description="Runs that may ask a frame again after its answers were invalid (cached as failures); "
        "after this many the failure is final.",
    )
    max_failure_rate: Float = Field(
        0.05,
        ge=0,
        le=1,
        description="Largest share of failed frames a run may end with; above it the stage exits with an error "
        "(DVC records nothing).",
    )
    cache_dir: str = Field(
        "data/cache/annotate", description="Content-addressed answer cache; survives reruns and interruptions."
    )
    min_visible_pixels: Int = Field(
        4,
        ge=1,
        description="Pixels of a body in the segmentation for it to count as in view "
        "('simulator' answers, accuracy metric).",
    )
    physics: Bool = Field(
        True,
        description="'simulator': restore each annotated frame's qpos/qvel into the task's physics for contacts and "
        "exact centre-of-mass velocities; false: only the episode file (body_pos differences, no contacts).",
    )

    @field_validator("prompt")
    @classmethod
    def _prompt_formats(cls, value: str) -> str:
        import string

        try:
            fields = [(name, spec, conv) for _, name, spec, conv in string.Formatter().parse(value) if name is not None]
        except ValueError as exc:
            raise ValueError(f"not a valid template ({exc}); write {{{{ and }}}} for literal braces") from None
        for name, spec, conversion in fields:
            if name != "task" or spec or conversion:
                # attribute or index access, format specs (padding to any width) and conversions are refused
                shown = "{" + name + (f"!{conversion}" if conversion else "") + (f":{spec}" if spec else "") + "}"
                raise ValueError(
                    f"{shown}: only {{task}} may be used, plain (no attribute, index, conversion or format spec); "
                    "write {{{{ and }}}} for literal braces"
                )
        return value

    @field_validator("base_url")
    @classmethod
    def _no_credentials_in_url(cls, value: str) -> str:
        from urllib.parse import urlsplit

        parts = urlsplit(value)
        if parts.username or parts.password:
            # a secret in params would be recorded in dvc.lock, provenance and every log line naming the URL
            raise ValueError(
                "holds credentials (user:password@); secrets come from the environment only: "
                "put the key in the variable named by annotate.api_key_env and drop it from the URL"
            )
        return value
