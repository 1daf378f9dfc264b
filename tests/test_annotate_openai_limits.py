"""Reliability kind 6: a hostile OpenAI-compatible server cannot hang the annotate stage, crash it, or make it store
a huge answer. A real server on 127.0.0.1; the stage runs through the CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml
from support.annotate import VALID_ANSWER, Action, ChatServer, collect_episodes, pixels_digest

from pipeline.annotate.openai_backend import MAX_RESPONSE_BYTES
from pipeline.annotate.schema import AnnotationError, parse_annotation
from pipeline.cli import main
from pipeline.sim.episodes import list_episodes, load_episode

TIMEOUT_S = 1.5


def test_a_hostile_server_fails_frames_within_the_timeout_without_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    episodes = collect_episodes(tmp_path / "episodes", episodes=1, steps=6)
    frames = load_episode(list_episodes(episodes)[0], fields_=["frames"]).frames
    order = {pixels_digest(frames[t]): t for t in (0, 2, 4, 6)}
    deep = "{" + '"a": ' + "[" * 100_000 + "]" * 100_000 + "}"  # nesting deeper than Python's stack
    plans = {
        0: Action("answer", dribble_s=0.05),  # ~400 bytes at 20 bytes/s: 20 s, far past the timeout
        2: Action("malformed", body="x" * (MAX_RESPONSE_BYTES + 10)),
        4: Action("answer", content=deep),
        6: Action("answer", content=VALID_ANSWER),
    }

    def plan(frame: np.ndarray, seen: int, body: dict[str, Any]) -> Action:
        return plans[order[pixels_digest(frame)]]

    with ChatServer(plan=plan) as server:
        settings = {
            "backend": "openai",
            "model": server.model,
            "base_url": server.base_url,
            "every_k": 2,
            "max_retries": 0,
            "timeout_s": TIMEOUT_S,
            "cache_dir": str(tmp_path / "cache"),
        }
        params = tmp_path / "params.yaml"
        params.write_text(yaml.safe_dump({"annotate": settings}))
        out = tmp_path / "annotations"
        argv = ["--params", str(params), "annotate", "--episodes", str(episodes), "--out", str(out)]
        capsys.readouterr()  # only the stage's own output below (an earlier test's log handler may linger)
        start = time.monotonic()
        code = main([*argv, "--metrics", str(tmp_path / "m.json")])
        wall = time.monotonic() - start
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err and "RecursionError" not in err
    assert wall < 4 * TIMEOUT_S + 5, f"the stage took {wall:.1f} s"
    records = {r["step"]: r for f in out.glob("*.json") for r in json.loads(f.read_text())["records"]}
    assert records[6]["status"] == "ok"
    assert "timed out" in records[0]["error"]
    assert "refused" in records[2]["error"] and records[2]["raw"] is None  # not stored
    assert records[4]["status"] == "failed" and records[4]["error"] == "invalid answer: no JSON object in the answer"
    assert sum(f.stat().st_size for f in out.rglob("*")) < 100_000 + len(deep)


@pytest.mark.parametrize(
    "text",
    [
        "{" * 300_000,  # every brace opens, none closes
        '{"a": [' * 100_000,  # each start parses far before it fails
        '{"x": "' + '\\"{' * 100_000 + '"}',  # braces inside a string
    ],
)
def test_finding_json_in_an_answer_stays_linear(text: str) -> None:
    start = time.perf_counter()
    with pytest.raises(AnnotationError):
        parse_annotation(text)
    assert time.perf_counter() - start < 3.0


def test_an_annotation_is_found_after_a_stray_brace_and_inside_a_broken_object() -> None:
    good = json.loads(VALID_ANSWER)
    assert parse_annotation("Here { is my answer: " + VALID_ANSWER).caption == good["caption"]
    assert parse_annotation('{"thoughts": nope, "answer": ' + VALID_ANSWER + "}").caption == good["caption"]
    assert parse_annotation('{"caption": "a } brace", "objects": [], "motion": "none"}').caption == "a } brace"
