"""Annotate backends end to end: a tiny random VLM in process, and a real chat-completions server on 127.0.0.1."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from support.annotate import VALID_ANSWER, Action, ChatServer, annotate, collect_episodes, pixels_digest, save_tiny_vlm

from pipeline.annotate.base import FrameItem, FrameResult
from pipeline.annotate.openai_backend import OpenAIBackend
from pipeline.annotate.run import AnnotateFailed, AnnotateIncomplete
from pipeline.annotate.schema import Annotation
from pipeline.common.errors import UserError
from pipeline.config import parse_params
from pipeline.sim.episodes import list_episodes, load_episode

STEPS = [0, 5, 10, 15, 20]  # every_k = 5 over 20-step episodes


@pytest.fixture(scope="module")
def episodes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return collect_episodes(tmp_path_factory.mktemp("annotate_backends") / "episodes")


@pytest.fixture(scope="module")
def frame_ids(episodes: Path) -> dict[str, tuple[int, int]]:
    """Pixel digest of each annotated frame -> (episode, step)."""
    out = {}
    for i, path in enumerate(list_episodes(episodes)):
        frames = load_episode(path, fields_=["frames"]).frames
        for t in STEPS:
            out[pixels_digest(frames[t])] = (i, t)
    assert len(out) == 2 * len(STEPS), "annotated frames must be distinct for these tests"
    return out


def params(tmp: Path, **annotate: Any):
    return parse_params(
        {
            "annotate": {"cache_dir": str(tmp / "cache"), **annotate},
            "weights": {"on_missing": "error", "cache_dir": str(tmp / "w")},
        }
    )


def records(out: Path) -> dict[tuple[int, int], dict[str, Any]]:
    result = {}
    for f in sorted(out.glob("episode_*.json")):
        doc = json.loads(f.read_text())
        assert [r["step"] for r in doc["records"]] == sorted(r["step"] for r in doc["records"])
        for r in doc["records"]:
            result[(doc["episode"], r["step"])] = r
    return result


def check_record(record: dict[str, Any]) -> None:
    """Every record is a schema-valid annotation or a failure with its reason."""
    if record["status"] == "ok":
        Annotation.model_validate(record["annotation"])
        assert record["error"] is None
    else:
        assert record["status"] == "failed" and record["annotation"] is None and record["error"]


# -- in-process transformers ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_tiny_vlm(tmp_path_factory.mktemp("vlm") / "tiny-vlm")


def test_transformers_backend_end_to_end(
    episodes: Path, tiny_vlm: Path, tmp_path: Path, torch_one_thread: None
) -> None:
    # A random model's answers are noise: accept any failure rate, and make each failure final after one run.
    p = params(
        tmp_path,
        backend="transformers",
        model=str(tiny_vlm),
        device="cpu",
        every_k=10,
        batch_size=4,
        max_new_tokens=24,
        max_retries=1,
        max_failure_rate=1.0,
        max_invalid_runs=1,
    )
    summary = annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
    recs = records(tmp_path / "out")
    assert sorted(recs) == [(e, t) for e in (0, 1) for t in (0, 10, 20)]
    for record in recs.values():
        check_record(record)
        if record["status"] == "failed":  # a random model: the raw answer is kept with the reason
            assert record["raw"] is not None and record["error"].startswith("invalid answer")
    failed = sum(r["status"] == "failed" for r in recs.values())
    assert failed > 0  # random weights do not write schema-valid JSON
    assert summary.backend_frames == 6 and summary.backend_calls >= 6 + failed  # each failure was retried once
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["frames"], metrics["failed"], metrics["failed_invalid_answer"]) == (6, failed, failed)
    doc = json.loads((tmp_path / "out" / "episode_000000.json").read_text())
    assert doc["backend"] == "transformers" and doc["model"] == str(tiny_vlm)
    assert doc["weights"]["random_init"] is False and len(doc["weights"]["sha256"]) == 64

    # Rerun: everything from the cache, nothing generated, same bytes.
    before = {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir()}
    again = annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
    assert (again.backend_frames, again.cache_hits) == (0, 6)
    assert {f.name: f.read_bytes() for f in (tmp_path / "out").iterdir()} == before


def test_transformers_random_model_and_bad_folder(episodes: Path, tmp_path: Path, torch_one_thread: None) -> None:
    p = params(
        tmp_path,
        backend="transformers",
        model="random",
        device="cpu",
        every_k=20,
        max_new_tokens=8,
        max_retries=0,
        max_failure_rate=1.0,
    )
    annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
    doc = json.loads((tmp_path / "out" / "episode_000001.json").read_text())
    assert doc["weights"]["random_init"] is True and [r["step"] for r in doc["records"]] == [0, 20]
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="cannot be loaded as an image-text-to-text model"):
        annotate(
            episodes,
            tmp_path / "out2",
            tmp_path / "m2.json",
            params(tmp_path, backend="transformers", model=str(tmp_path / "empty")),
        )
    assert not (tmp_path / "out2").exists()


# -- OpenAI-compatible HTTP server -------------------------------------------------------------------------
FENCED = "Here you go:\n```json\n" + VALID_ANSWER + "\n```"
INVALID = "It is a cart, I think."
TIMEOUT = 1.0  # seconds, in the fault test: generous for a loaded 2-core machine
SLOW = 2.5  # seconds, past the timeout


def fault_plan(frame_ids: dict[str, tuple[int, int]]):
    """Per frame (episode, step): what the server does at its n-th request."""
    scripts = {
        (0, 0): lambda n: Action(),
        (0, 5): lambda n: Action(delay_s=SLOW) if n == 0 else Action(),  # slow once, then fine
        (0, 10): lambda n: Action("status", code=500) if n == 0 else Action(),  # 500 once
        (0, 15): lambda n: Action("malformed"),  # always malformed JSON: transient failure
        (0, 20): lambda n: Action(content=INVALID),  # always an invalid answer: final failure
        (1, 0): lambda n: Action(content=FENCED),
        (1, 5): lambda n: Action(content=INVALID) if n == 0 else Action(),  # invalid once, then valid
        (1, 10): lambda n: Action("status", code=500),  # always 500
        (1, 15): lambda n: Action(delay_s=SLOW),  # always past the timeout
        (1, 20): lambda n: Action("status", code=400),  # a client error: not retried
    }
    return lambda frame, n, body: scripts[frame_ids[pixels_digest(frame)]](n)


def http_params(tmp: Path, server: ChatServer, **extra: Any):
    settings = {"concurrency": 4, "timeout_s": 10.0, "max_retries": 2, "retry_backoff_s": 0.01, **extra}
    return params(tmp, backend="openai", model=server.model, base_url=server.base_url, every_k=5, **settings)


def test_http_backend_faults_then_resume(
    episodes: Path, frame_ids: dict[str, tuple[int, int]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SEMORE_TEST_KEY", "sk-test")
    with ChatServer(plan=fault_plan(frame_ids)) as server:
        p = http_params(tmp_path, server, api_key_env="SEMORE_TEST_KEY", timeout_s=TIMEOUT)
        with pytest.raises(AnnotateIncomplete, match="4 of 10 frames failed"):
            annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
        port = server.port
    assert set(server.auth_headers) == {"Bearer sk-test"}
    recs = records(tmp_path / "out")
    assert len(recs) == 10
    for record in recs.values():
        check_record(record)
    ok = {k for k, r in recs.items() if r["status"] == "ok"}
    assert ok == {(0, 0), (0, 5), (0, 10), (1, 0), (1, 5)}
    assert recs[(0, 15)]["raw"] == "{not json" and "malformed" in recs[(0, 15)]["error"]
    assert recs[(0, 20)]["raw"] == INVALID and recs[(0, 20)]["error"].startswith("invalid answer")
    assert (
        "HTTP 500" in recs[(1, 10)]["error"]
        and "timed out" in recs[(1, 15)]["error"]
        and "HTTP 400" in recs[(1, 20)]["error"]
    )
    calls = {frame_ids[d]: n for d, n in server.calls_by_frame.items()}
    assert calls[(0, 0)] == calls[(1, 0)] == 1 and calls[(0, 5)] == calls[(0, 10)] == calls[(1, 5)] == 2
    assert calls[(0, 15)] == calls[(0, 20)] == calls[(1, 10)] == calls[(1, 15)] == 3  # 1 + max_retries
    assert calls[(1, 20)] == 1
    temperatures = [b["temperature"] for b in server.bodies if frame_ids[pixels_digest(_frame(b))] == (1, 5)]
    assert temperatures == [0.0, 0.7]  # greedy first, sampled retry after the invalid answer
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["ok"], metrics["failed"], metrics["failed_invalid_answer"], metrics["failed_unreachable"]) == (
        5,
        5,
        1,
        4,
    )
    assert metrics["accuracy"]["named_objects"] == 10 and metrics["accuracy"]["named_in_view"] == 10

    # The server comes back healthy on the same port: only the 4 unreachable frames and the frame whose answer
    # was invalid (cached as a failure with runs left) are asked again.
    with ChatServer(port=port) as healthy:
        summary = annotate(episodes, tmp_path / "out", tmp_path / "m.json", http_params(tmp_path, healthy))
    assert healthy.chat_calls == 5
    assert {frame_ids[d] for d in healthy.calls_by_frame} == {(0, 15), (0, 20), (1, 10), (1, 15), (1, 20)}
    assert summary.cache_hits == 5
    assert all(r["status"] == "ok" for r in records(tmp_path / "out").values())

    # Cache hit on rerun: zero backend calls.
    with ChatServer(port=port) as idle:
        again = annotate(episodes, tmp_path / "out", tmp_path / "m.json", http_params(tmp_path, idle))
    assert idle.chat_calls == 0 and again.cache_hits == 10 and again.backend_frames == 0


def _frame(body: dict[str, Any]) -> np.ndarray:
    from support.annotate import frame_of

    return frame_of(body)


def test_a_frame_recurring_in_a_later_episode_is_asked_once(episodes: Path, tmp_path: Path) -> None:
    """The next episode is loaded while the backend answers this one, but its cache lookups wait
    for this one's answers: a frame seen again in the next episode comes from the cache."""
    import shutil

    from pipeline.sim.episodes import save_episode

    copy = tmp_path / "episodes"
    shutil.copytree(episodes, copy)
    first, second = list_episodes(copy)
    episode = load_episode(second)
    episode.frames[0] = load_episode(first, fields_=["frames"]).frames[0]
    save_episode(second, episode)
    with ChatServer() as server:
        summary = annotate(copy, tmp_path / "out", tmp_path / "m.json", http_params(tmp_path, server, concurrency=1))
    assert server.chat_calls == 2 * len(STEPS) - 1 and max(server.calls_by_frame.values()) == 1
    assert summary.cache_hits == 1 and summary.ok == 2 * len(STEPS)


def test_http_server_goes_away_mid_run(episodes: Path, frame_ids: dict[str, tuple[int, int]], tmp_path: Path) -> None:
    with ChatServer(stop_after=4) as server:
        p = http_params(tmp_path, server, concurrency=2)
        with pytest.raises(AnnotateIncomplete):
            annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
        port = server.port
    recs = records(tmp_path / "out")
    assert len(recs) == 10
    for record in recs.values():
        check_record(record)
    done = {k for k, r in recs.items() if r["status"] == "ok"}
    assert len(done) == 4  # exactly the answered requests
    with ChatServer(port=port) as back:
        annotate(episodes, tmp_path / "out", tmp_path / "m.json", http_params(tmp_path, back))
    asked = {frame_ids[d] for d in back.calls_by_frame}
    assert back.chat_calls == 6 and asked.isdisjoint(done)  # finished frames are not redone
    assert all(r["status"] == "ok" for r in records(tmp_path / "out").values())


def test_interrupt_keeps_finished_frames(episodes: Path, frame_ids: dict[str, tuple[int, int]], tmp_path: Path) -> None:
    class Interrupted(OpenAIBackend):
        def annotate(self, items: Iterable[FrameItem]) -> Iterator[FrameResult]:
            for i, result in enumerate(super().annotate(items)):
                if i == 3:
                    raise KeyboardInterrupt
                yield result

    with ChatServer() as server:
        p = http_params(tmp_path, server)
        with pytest.raises(KeyboardInterrupt):
            annotate(episodes, tmp_path / "out", tmp_path / "m.json", p, backend=Interrupted(p.annotate, p.weights))
        assert (
            not any(f.name.startswith(".") for f in (tmp_path / "out").glob("*"))
            if (tmp_path / "out").exists()
            else True
        )
        first = server.chat_calls
    with ChatServer(port=server.port) as again:
        annotate(episodes, tmp_path / "out", tmp_path / "m.json", http_params(tmp_path, again))
    assert first >= 3 and again.chat_calls == 10 - 3


def test_http_preflight_errors(tmp_path: Path, episodes: Path) -> None:
    with ChatServer(model="served-vlm") as server:
        p = params(tmp_path, backend="openai", model="other-vlm", base_url=server.base_url)
        with pytest.raises(UserError, match="not served.*served-vlm"):
            annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
        port = server.port
    p = params(tmp_path, backend="openai", model="served-vlm", base_url=f"http://127.0.0.1:{port}/v1", timeout_s=1.0)
    with pytest.raises(UserError, match="no server answers"):
        annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
    assert server.chat_calls == 0 and not (tmp_path / "out").exists()


# -- invalid answers: the failure-rate limit, and retries across runs ---------------------------------------
def invalid_for(frames: set[tuple[int, int]], frame_ids: dict[str, tuple[int, int]]):
    """A server plan: an unparseable answer for ``frames``, a valid one for the others."""
    return lambda frame, n, body: Action(content=INVALID) if frame_ids[pixels_digest(frame)] in frames else Action()


def cache_entries(tmp: Path) -> dict[str, bytes]:
    return {str(f.relative_to(tmp / "cache")): f.read_bytes() for f in sorted((tmp / "cache").rglob("*.json"))}


def test_all_answers_unparseable_exits_nonzero_naming_rate_and_answer(
    episodes: Path, frame_ids: dict[str, tuple[int, int]], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from pipeline.cli import main

    with ChatServer(plan=lambda frame, n, body: Action(content=INVALID)) as server:
        params_file = tmp_path / "params.yaml"
        params_file.write_text(
            "annotate:\n  backend: openai\n  every_k: 5\n  max_retries: 1\n  retry_backoff_s: 0.01\n"
            f"  model: {server.model}\n  base_url: {server.base_url}\n  cache_dir: {tmp_path / 'cache'}\n"
        )
        metrics = tmp_path / "m.json"
        argv = [
            "--params",
            str(params_file),
            "annotate",
            "--episodes",
            str(episodes),
            "--out",
            str(tmp_path / "out"),
            "--metrics",
            str(metrics),
        ]
        assert main(argv) == 2  # non-zero: DVC records nothing
    err = capsys.readouterr().err
    assert "10 of 10 frames (100.0%)" in err and "annotate.max_failure_rate = 0.05" in err
    assert repr(INVALID) in err and "no JSON object" in err  # a sample raw answer and why it is invalid
    assert "Fix:" in err and "Traceback" not in err
    assert json.loads(metrics.read_text())["failure_rate"] == 1.0  # the metrics still say what happened
    assert all(r["status"] == "failed" and r["raw"] == INVALID for r in records(tmp_path / "out").values())


def test_half_invalid_is_refused_then_a_fixed_server_completes_from_the_cache(
    episodes: Path, frame_ids: dict[str, tuple[int, int]], tmp_path: Path
) -> None:
    bad = {(0, t) for t in STEPS}  # every frame of episode 0: half the frames
    with ChatServer(plan=invalid_for(bad, frame_ids)) as server:
        p = http_params(tmp_path, server, max_retries=0, max_failure_rate=0.25)
        with pytest.raises(AnnotateFailed, match=r"5 of 10 frames \(50.0%\).*max_failure_rate = 0.25"):
            annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
        port = server.port
    assert {k for k, r in records(tmp_path / "out").items() if r["status"] == "failed"} == bad
    before = cache_entries(tmp_path)
    assert len(before) == 10  # the 5 answers and the 5 invalid answers, all cached

    # Fixed: the rerun asks only the 5 failed frames, deletes nothing, and completes the dataset.
    with ChatServer(port=port) as fixed:
        summary = annotate(
            episodes,
            tmp_path / "out",
            tmp_path / "m.json",
            http_params(tmp_path, fixed, max_retries=0, max_failure_rate=0.25),
        )
    assert fixed.chat_calls == 5 and {frame_ids[d] for d in fixed.calls_by_frame} == bad
    assert (summary.ok, summary.failed, summary.cache_hits) == (10, 0, 5)
    assert all(r["status"] == "ok" for r in records(tmp_path / "out").values())
    after = cache_entries(tmp_path)
    assert set(after) == set(before)  # same entries: none deleted, the failed ones overwritten
    assert sum(after[k] == before[k] for k in before) == 5  # the 5 answers untouched
    # The rerun samples past the first run's seed.
    assert {(b["temperature"], b["seed"]) for b in fixed.bodies} == {(0.7, 1)}


def test_below_the_limit_passes_with_failures_recorded(
    episodes: Path, frame_ids: dict[str, tuple[int, int]], tmp_path: Path
) -> None:
    with ChatServer(plan=invalid_for({(1, 20)}, frame_ids)) as server:
        summary = annotate(
            episodes,
            tmp_path / "out",
            tmp_path / "m.json",
            http_params(tmp_path, server, max_retries=0, max_failure_rate=0.1),
        )
    assert (summary.failed, summary.failure_rate) == (1, 0.1)  # not above the limit
    assert records(tmp_path / "out")[(1, 20)]["raw"] == INVALID


def test_retry_budget_across_runs_is_bounded_recorded_and_reported(
    episodes: Path, frame_ids: dict[str, tuple[int, int]], tmp_path: Path
) -> None:
    stubborn = (0, 20)
    with ChatServer(plan=invalid_for({stubborn}, frame_ids)) as server:
        p = http_params(tmp_path, server, max_retries=0, max_invalid_runs=2, max_failure_rate=0.0)
        with pytest.raises(AnnotateFailed, match="the 1 failed frames are asked again") as first:
            annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
        assert "used all" not in str(first.value)
        assert server.chat_calls == 10
        with pytest.raises(AnnotateFailed, match="1 frames have used all 2 runs.*raise annotate.max_invalid_runs"):
            annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
        assert server.chat_calls == 11  # the second run asked only the stubborn frame
        with pytest.raises(AnnotateFailed, match="used all 2 runs"):
            annotate(episodes, tmp_path / "out", tmp_path / "m.json", p)
        assert server.chat_calls == 11  # budget spent: the third run asks nothing
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert (metrics["failed"], metrics["failed_invalid_answer"], metrics["failed_retries_exhausted"]) == (1, 1, 1)
    entries = [json.loads(v) for v in cache_entries(tmp_path).values()]
    assert sorted((e["status"], e["runs"]) for e in entries if e["status"] == "failed") == [
        ("failed", 2)
    ]  # recorded in the cache
    assert records(tmp_path / "out")[stubborn]["raw"] == INVALID
