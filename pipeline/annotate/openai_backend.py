"""Annotate through an OpenAI-compatible chat-completions server (vLLM, Ollama, llama.cpp, ...).

Each frame is one ``POST {base_url}/chat/completions`` with the prompt and the
frame as a base64 PNG ``image_url``. Requests run on a bounded thread pool
(``annotate.concurrency``), each with a timeout (``annotate.timeout_s``) and up
to ``annotate.max_retries`` retries with exponential backoff
(``annotate.retry_backoff_s`` x 2^attempt, at most 30 s) after a timeout, a
connection error, HTTP 408/429/5xx, a malformed response or an answer that does
not match the schema. Retries after an invalid answer sample at
``annotate.retry_temperature`` (the first try is greedy); so does every try of a
later run that asks a frame again after invalid answers (``FrameItem.rerun``),
with request seeds that continue past the earlier runs' seeds.

The API key is read from the environment variable named by
``annotate.api_key_env`` (sent as ``Authorization: Bearer``; may be unset for a
local server). The key never reaches an output: every answer, error body and error
message is passed through :class:`~pipeline.common.secrets.Redactor` before it is stored,
cached or logged (a server may echo the request). Before any frame, ``GET {base_url}/models`` checks that the
server answers, accepts the key and serves ``annotate.model``.
"""

from __future__ import annotations

import base64
import dataclasses
import io
import json
import logging
import os
import threading
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TYPE_CHECKING, Any

import requests

from pipeline.annotate.base import Backend, FrameItem, FrameResult, result_from_text
from pipeline.common.errors import UserError
from pipeline.common.secrets import Redactor

if TYPE_CHECKING:
    from pipeline.config import AnnotateParams, WeightsParams

log = logging.getLogger(__name__)

MAX_BACKOFF_S = 30.0
#: Largest response body read (bytes): an annotation is a few KiB and ``max_new_tokens`` <= 8192
#: tokens; a larger body is refused unread (it would be stored twice: the file and the cache).
MAX_RESPONSE_BYTES = 1 << 20
#: HTTP statuses worth retrying: the server may answer later.
RETRY_STATUSES = frozenset({408, 409, 425, 429}) | frozenset(range(500, 600))


def png_data_url(image: Any) -> str:
    """A ``data:image/png;base64,...`` URL of an (H, W, 3) uint8 RGB frame."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG", compress_level=1)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def message_text(content: Any) -> str:
    """The text of a chat message ``content``: a string, or a list of parts (OpenAI's newer format)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(p.get("text", "") for p in content if isinstance(p, dict) and isinstance(p.get("text", ""), str))
    raise TypeError(f"message content is a {type(content).__name__}")


class ResponseTooLarge(Exception):
    """A server's response body over :data:`MAX_RESPONSE_BYTES`."""


class OpenAIBackend(Backend):
    """Frames to an OpenAI-compatible server, ``concurrency`` requests in flight."""

    name = "openai"

    def __init__(self, params: AnnotateParams, weights: WeightsParams) -> None:
        self.base_url = params.base_url.rstrip("/")
        self.model = params.model
        self.model_key = params.model
        self.concurrency = params.concurrency
        self.timeout_s = params.timeout_s
        self.max_retries = params.max_retries
        self.backoff_s = params.retry_backoff_s
        self.max_tokens = params.max_new_tokens
        self.retry_temperature = params.retry_temperature
        key = os.environ.get(params.api_key_env, "").strip()
        self.headers = {"Content-Type": "application/json"}
        if key:
            self.headers["Authorization"] = f"Bearer {key}"
        self._api_key_env = params.api_key_env
        self._redact = Redactor([params.api_key_env])
        self._local = threading.local()
        self._sessions: list[requests.Session] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        #: chat-completions requests sent (all frames, all attempts).
        self.requests_sent = 0
        self._preflight()

    # -- setup ---------------------------------------------------------------
    def _preflight(self) -> None:
        """Fail before any work when the server is absent, refuses the key, or lacks the model."""
        url = f"{self.base_url}/models"
        fix = (
            "start the server (e.g. `vllm serve <model>` or `ollama serve`) or set annotate.base_url; "
            "or use annotate.backend: simulator or transformers"
        )
        try:
            response = self._session().get(url, headers=self.headers, timeout=min(self.timeout_s, 30.0))
        except requests.RequestException as exc:
            raise UserError(
                f"annotate.base_url = {self.base_url!r}: no server answers "
                f"({type(exc).__name__}: {self._redact(str(exc))}).\n"
                f"  Fix: {fix}."
            ) from None
        if response.status_code in (401, 403):
            raise UserError(
                f"annotate.base_url = {self.base_url!r} refused the API key (HTTP {response.status_code}).\n"
                f"  Fix: put the key in the environment variable {self._api_key_env} (annotate.api_key_env)."
            )
        try:
            served = sorted(m["id"] for m in response.json()["data"]) if response.ok else None
        except (ValueError, KeyError, TypeError):
            served = None
        if served is None:
            log.warning(
                "annotate: %s did not list its models (HTTP %s); not checking annotate.model", url, response.status_code
            )
        elif self.model not in served:
            raise UserError(
                f"annotate.model = {self.model!r} is not served at {self.base_url} "
                f"(served: {', '.join(served) or 'none'}).\n"
                f"  Fix: set annotate.model to one of the served models."
            )

    def _session(self) -> requests.Session:
        session = getattr(self._local, "session", None)
        if session is None:
            session = requests.Session()
            self._local.session = session
            with self._lock:
                self._sessions.append(session)
        return session

    # -- one frame -------------------------------------------------------------
    def _payload(self, item: FrameItem, image_url: str, temperature: float, seed: int) -> dict[str, Any]:
        return {
            "model": self.model,
            "messages": [
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": item.prompt},
                        {"type": "image_url", "image_url": {"url": image_url}},
                    ],
                }
            ],
            "max_tokens": self.max_tokens,
            "temperature": temperature,
            "seed": seed,
        }

    def _annotate_one(self, item: FrameItem) -> FrameResult:
        """Query one frame with retries; always returns a result (ok, or failed with the reason), with the
        API key redacted from its raw answer and error."""
        result = self._query(item)
        return dataclasses.replace(result, raw=self._redact(result.raw), error=self._redact(result.error))

    def _query(self, item: FrameItem) -> FrameResult:
        url = f"{self.base_url}/chat/completions"
        image_url = png_data_url(item.image)
        session = self._session()
        failure: FrameResult | None = None
        invalid_answers = 0
        calls = 0
        first_seed = item.rerun * (self.max_retries + 1)  # a rerun samples past the seeds earlier runs used
        for attempt in range(self.max_retries + 1):
            if attempt:
                delay = min(self.backoff_s * 2 ** (attempt - 1), MAX_BACKOFF_S)
                if self._stop.wait(delay):
                    break
            temperature = self.retry_temperature if invalid_answers or item.rerun else 0.0
            payload = self._payload(item, image_url, temperature, seed=first_seed + attempt)
            calls += 1
            with self._lock:
                self.requests_sent += 1
            try:
                status, text = self._post(session, url, payload)
            except requests.Timeout:
                failure = self._transport(item, None, f"request timed out after {self.timeout_s:g} s", calls)
                continue
            except ResponseTooLarge as exc:
                failure = self._transport(item, None, str(exc), calls)
                break  # the same request would get the same answer
            except requests.RequestException as exc:
                failure = self._transport(item, None, f"request failed: {type(exc).__name__}: {exc}", calls)
                continue
            text = self._redact(text)
            if status != 200:
                failure = self._transport(item, text[:2000] or None, f"HTTP {status} from the server", calls)
                if status in RETRY_STATUSES:
                    continue
                break  # 400/404/...: the request itself is wrong, retrying cannot help
            try:
                content = message_text(json.loads(text)["choices"][0]["message"]["content"])
            except (ValueError, KeyError, IndexError, TypeError, RecursionError) as exc:
                failure = self._transport(
                    item,
                    text[:2000] or None,
                    f"malformed chat-completions response: {type(exc).__name__}: {exc}",
                    calls,
                )
                continue
            result = result_from_text(item, self._redact(content), calls)
            if result.status == "ok":
                return result
            invalid_answers += 1
            failure = result
        assert failure is not None
        if failure.calls != calls:
            failure = FrameResult(item, failure.status, None, failure.raw, failure.error, failure.final, calls)
        if failure.final:
            log.debug(
                "annotate: %s/%d/%d invalid after %d tries: %s",
                item.task,
                item.episode,
                item.step,
                calls,
                failure.error,
            )
        return failure

    def _post(self, session: requests.Session, url: str, payload: dict[str, Any]) -> tuple[int, str]:
        """POST ``payload``; the status and the body text, read within ``timeout_s`` in all (a server that
        sends a byte now and then is cut off: ``requests``' own timeout bounds each read, not the request).

        Raises:
            requests.Timeout: the response did not arrive within ``timeout_s`` (each socket read is also
                bounded by it, so the call returns within about twice ``timeout_s``).
            ResponseTooLarge: the body is over :data:`MAX_RESPONSE_BYTES`.
        """
        deadline = time.monotonic() + self.timeout_s
        with session.post(url, json=payload, headers=self.headers, timeout=self.timeout_s, stream=True) as response:
            declared = response.headers.get("Content-Length", "")
            if declared.isdigit() and int(declared) > MAX_RESPONSE_BYTES:
                raise ResponseTooLarge(f"response of {int(declared)} bytes refused (over {MAX_RESPONSE_BYTES})")
            body = bytearray()
            while chunk := response.raw.read1(65536, decode_content=True):
                body += chunk
                if len(body) > MAX_RESPONSE_BYTES:
                    raise ResponseTooLarge(f"response over {MAX_RESPONSE_BYTES} bytes refused")
                if time.monotonic() > deadline:
                    raise requests.Timeout(f"response still arriving after {self.timeout_s:g} s")
            return response.status_code, body.decode(response.encoding or "utf-8", errors="replace")

    @staticmethod
    def _transport(item: FrameItem, raw: str | None, error: str, calls: int) -> FrameResult:
        return FrameResult(item, "failed", None, raw, error, final=False, calls=calls)

    # -- many frames -----------------------------------------------------------
    def annotate(self, items: Iterable[FrameItem]) -> Iterator[FrameResult]:
        source = iter(items)
        self._stop.clear()
        pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="annotate-http")
        pending: set[Future[FrameResult]] = set()
        exhausted = False
        try:
            while True:
                while not exhausted and len(pending) < 2 * self.concurrency:
                    item = next(source, None)
                    if item is None:
                        exhausted = True
                    else:
                        pending.add(pool.submit(self._annotate_one, item))
                if not pending:
                    return
                done, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in sorted(done, key=lambda f: (f.result().item.episode, f.result().item.step)):
                    yield future.result()
        finally:
            if pending:  # interrupted: stop retrying, drop queued frames, don't wait for requests in flight
                self._stop.set()
            pool.shutdown(wait=not pending, cancel_futures=True)

    def close(self) -> None:
        self._stop.set()
        with self._lock:
            for session in self._sessions:
                session.close()
            self._sessions.clear()
