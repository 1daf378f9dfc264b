"""Test support for the annotate stage: a real chat-completions server on 127.0.0.1, tiny real episodes,
a tiny VLM folder.

It speaks the protocol the ``openai`` annotate backend uses: ``GET /v1/models``
and ``POST /v1/chat/completions`` with a text part and a base64 PNG
``image_url`` part. Each request's frame is decoded from the PNG; a ``plan``
callable maps (frame pixels, how many times this frame was asked before,
request body) to what the server does: answer with content, sleep first,
return an HTTP error, send a malformed body, or drop the connection.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import requests

VALID_ANSWER = json.dumps(
    {
        "caption": "A cart with a pole on a rail.",
        "objects": [
            {"name": "cart", "description": "the cart on the rail", "box": [10, 20, 30, 28]},
            {"name": "pole", "description": "the pole hinged on the cart", "box": None},
        ],
        "motion": "The cart moves right.",
    }
)


@dataclass
class Action:
    """What the server does with one request.

    kind: ``answer`` (200 with ``content``), ``status`` (HTTP ``code`` with a JSON error body, or ``body``
    when it is set),
    ``malformed`` (200 with ``body`` as is), ``drop`` (close the connection without a response).
    ``delay_s`` is slept before acting; with ``dribble_s`` the response's bytes are sent one at a time,
    ``dribble_s`` apart (headers first, with the full Content-Length).
    """

    kind: str = "answer"
    content: str = VALID_ANSWER
    code: int = 500
    body: str | None = None  # "malformed" default: "{not json"
    delay_s: float = 0.0
    dribble_s: float = 0.0


Plan = Callable[[np.ndarray, int, dict[str, Any]], Action]


def frame_of(body: dict[str, Any]) -> np.ndarray:
    """The (H, W, 3) uint8 frame of a chat-completions request body."""
    from PIL import Image

    for part in body["messages"][0]["content"]:
        if part["type"] == "image_url":
            data = part["image_url"]["url"].split(",", 1)[1]
            return np.asarray(Image.open(io.BytesIO(base64.b64decode(data))).convert("RGB"))
    raise ValueError("no image in the request")


def pixels_digest(frame: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frame).tobytes()).hexdigest()


class ChatServer:
    """Start with :meth:`start` (``port=0`` picks a free one); :meth:`stop` closes it; usable as a context manager."""

    def __init__(
        self, model: str = "test-vlm", plan: Plan | None = None, port: int = 0, stop_after: int | None = None
    ) -> None:
        self.model = model
        self.plan: Plan = plan or (lambda frame, seen, body: Action())
        self.port = port
        self.stop_after = stop_after  # drop every chat request after this many (the server "goes away")
        self.chat_calls = 0
        self.calls_by_frame: Counter[str] = Counter()
        self.bodies: list[dict[str, Any]] = []
        self.auth_headers: list[str | None] = []
        self.gone = False
        self._lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def post_frame(self, session: requests.Session, frame: np.ndarray) -> dict[str, Any]:
        """One bare chat completion about ``frame`` (a one-word prompt and the PNG): the HTTP baseline of the
        benches, no backend involved."""
        from pipeline.annotate.openai_backend import png_data_url

        image = {"type": "image_url", "image_url": {"url": png_data_url(frame)}}
        body = {"model": self.model, "messages": [{"role": "user", "content": [{"type": "text", "text": "x"}, image]}]}
        return session.post(f"{self.base_url}/chat/completions", json=body, timeout=60).json()

    def start(self) -> ChatServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:  # keep test output clean
                pass

            def _send(self, code: int, body: str, dribble_s: float = 0.0) -> None:
                data = body.encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if not dribble_s:
                    self.wfile.write(data)
                    return
                self.wfile.flush()
                for i in range(len(data)):
                    if server.gone:
                        return
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(dribble_s)

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/v1/models":
                    self._send(200, json.dumps({"object": "list", "data": [{"id": server.model, "object": "model"}]}))
                else:
                    self._send(404, json.dumps({"error": {"message": "not found"}}))

            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                body = json.loads(self.rfile.read(length))
                if self.path.rstrip("/") != "/v1/chat/completions":
                    self._send(404, json.dumps({"error": {"message": "not found"}}))
                    return
                frame = frame_of(body)
                digest = pixels_digest(frame)
                with server._lock:
                    server.chat_calls += 1
                    gone = server.gone or (server.stop_after is not None and server.chat_calls > server.stop_after)
                    if gone and not server.gone:  # stop listening too: new connections are refused
                        server.gone = True
                        threading.Thread(target=server.stop, daemon=True).start()
                    if not gone:
                        seen = server.calls_by_frame[digest]
                        server.calls_by_frame[digest] += 1
                        server.bodies.append(body)
                        server.auth_headers.append(self.headers.get("Authorization"))
                if gone:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                action = server.plan(frame, seen, body)
                if action.delay_s:
                    time.sleep(action.delay_s)
                if action.kind == "answer":
                    reply = {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "model": server.model,
                        "choices": [
                            {
                                "index": 0,
                                "message": {"role": "assistant", "content": action.content},
                                "finish_reason": "stop",
                            }
                        ],
                    }
                    self._send(200, json.dumps(reply), action.dribble_s)
                elif action.kind == "status":
                    error = json.dumps({"error": {"message": f"scripted {action.code}"}})
                    self._send(action.code, error if action.body is None else action.body)
                elif action.kind == "malformed":
                    self._send(200, "{not json" if action.body is None else action.body)
                elif action.kind == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                else:
                    raise ValueError(action.kind)

        class Server(ThreadingHTTPServer):
            daemon_threads = True
            allow_reuse_address = True

            def handle_error(self, request: Any, client_address: Any) -> None:  # a client that timed out and left
                pass

        self._httpd = Server(("127.0.0.1", self.port), Handler)
        self.port = self._httpd.server_address[1]
        self._thread = threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening; requests on connections still open are dropped."""
        self.gone = True
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            httpd.shutdown()
            httpd.server_close()

    def __enter__(self) -> ChatServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def collect_episodes(
    out_dir: Any, task: str = "cartpole-swingup", episodes: int = 2, steps: int = 20, size: int = 48
) -> Any:
    """Record a few small real episodes (with segmentation) of ``task`` into ``out_dir``; return it."""
    from pipeline.collect import collect_task
    from pipeline.config import CollectParams

    params = CollectParams(
        tasks=[task],
        episodes_per_task=episodes,
        episode_steps=steps,
        image_size=size,
        workers=1,
        preview_episodes=0,
        depth=False,
        segmentation=True,
    )
    collect_task(task, params, out_dir, workers=1)
    return out_dir


def save_tiny_vlm(folder: str | Path, seed: int | None = None) -> Path:
    """The library's tiny random VLM (:func:`pipeline.annotate.tiny_vlm.build_tiny_vlm`) saved with
    ``save_pretrained`` (model + processor) into ``folder``: a local model folder for ``annotate.model``."""
    from pipeline.annotate.tiny_vlm import SEED, build_tiny_vlm

    folder = Path(folder)
    model, processor = build_tiny_vlm(SEED if seed is None else seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


def annotate(episodes: Any, out: Any, metrics: Any, params: Any, backend: Any = None) -> Any:
    """:func:`pipeline.annotate.run.run` with a whole :class:`pipeline.config.Params`
    (its annotate and weights sections)."""
    from pipeline.annotate.run import run

    return run(episodes, out, params.annotate, params.weights, metrics=metrics, backend=backend)


def scene_at_state(scene: Any, qpos: Any, qvel: Any, reader: Any = None) -> tuple[Any, Any]:
    """A recorded frame's :class:`~pipeline.annotate.truth.SceneTruth` moved to the state (``qpos``, ``qvel``), and
    its :class:`~pipeline.annotate.truth.PhysicsState`.

    Body poses come from ``mj_forward`` of the task's model at that state; the finite-difference velocities
    (what ``annotate.physics: false`` reads) are set to the physics' exact ones. The camera, what is in view
    and the boxes stay the recorded frame's. ``reader``: a :class:`PhysicsReader` to reuse (one is made and
    closed otherwise).
    """
    import dataclasses

    import mujoco

    from pipeline.annotate.simulator import PhysicsReader
    from pipeline.sim.task_physics import load_task_physics

    model, data, close = load_task_physics(scene.task, scene.suite)
    try:
        data.qpos[:] = qpos
        data.qvel[:] = qvel
        mujoco.mj_forward(model, data)
        moved = dataclasses.replace(
            scene,
            qpos=np.array(qpos, np.float64),
            qvel=np.array(qvel, np.float64),
            body_pos=data.xpos.copy(),
            body_quat=data.xquat.copy(),
        )
    finally:
        close()
    own = reader is None
    reader = reader or PhysicsReader()
    try:
        physics = reader.read(moved)
    finally:
        if own:
            reader.close()
    return dataclasses.replace(moved, body_vel=physics.lin_vel.copy(), body_ang_vel=physics.ang_vel.copy()), physics
