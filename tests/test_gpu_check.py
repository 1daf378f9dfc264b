"""The prepared GPU check (bench/gpu_check.py, issue 17) in its CPU mode: every section measured or skipped,
with a reason.

The device check gets one try on a GPU machine, so its CPU mode runs here first: the same code
paths at a tiny size, what needs CUDA skipped and saying so.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "bench" / "gpu_check.py"
SECTIONS = ("flow", "clip", "vlm", "pretrain", "sac", "e2e")


@pytest.fixture(scope="module")
def cpu_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any], str]:
    """One ``--cpu-tiny`` run: (process, gpu_check.json, gpu_check.md)."""
    tmp = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-tiny", "--out", str(tmp / "out"), "--work", str(tmp / "work")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=1200,
        check=False,
    )
    report = tmp / "out" / "gpu_check.json"
    assert report.exists(), f"no report; exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc, json.loads(report.read_text()), (tmp / "out" / "gpu_check.md").read_text()


@pytest.mark.slow
def test_cpu_mode_has_every_section_measured_or_skipped_with_a_reason(
    cpu_run: tuple[subprocess.CompletedProcess[str], dict[str, Any], str],
) -> None:
    proc, report, markdown = cpu_run
    errors = [
        (s, r["name"], r["reason"])
        for s, body in report["sections"].items()
        for r in body["rows"]
        if r["status"] == "error"
    ]
    assert not errors, f"error rows: {errors}\n{proc.stdout[-2000:]}"
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert report["meta"]["mode"] == "cpu-tiny" and report["meta"]["cuda"] is False
    assert tuple(report["sections"]) == SECTIONS
    for section, body in report["sections"].items():
        ok = [r for r in body["rows"] if r["status"] == "ok"]
        assert ok, f"{section}: nothing measured on the CPU"
        for row in body["rows"]:
            assert row["status"] in ("ok", "skipped"), row
            if row["status"] == "skipped":
                assert row["reason"].startswith("skipped: ") and len(row["reason"]) > len("skipped: "), row
                continue
            assert row["figures"], row
            for name, value in row["figures"].items():
                assert math.isfinite(value) and value > 0, f"{section} / {row['name']}: {name} = {value}"
        assert body["title"] in markdown
    skipped = [r["reason"] for body in report["sections"].values() for r in body["rows"] if r["status"] == "skipped"]
    assert any(
        "needs CUDA" in reason for reason in skipped
    )  # fp16 flow and CLIP, the bf16 VLM: said, not silently dropped
    assert "needs CUDA" in markdown


@pytest.mark.slow
def test_cpu_mode_checks_what_the_gpu_run_must_check(
    cpu_run: tuple[subprocess.CompletedProcess[str], dict[str, Any], str],
) -> None:
    _, report, _ = cpu_run
    rows = {(s, r["name"]): r for s, body in report["sections"].items() for r in body["rows"] if r["status"] == "ok"}

    def one(section: str, words: str) -> dict[str, Any]:
        found = [r for (s, name), r in rows.items() if s == section and words in name]
        assert len(found) == 1, (section, words, [name for s, name in rows if s == section])
        return found[0]

    flow = one("flow", "raft_small 128px fp32")
    assert flow["checks"]["finite"] is True and flow["checks"]["pairs"] >= 1
    clip = one("clip", ": images")
    assert clip["checks"]["finite"] is True and clip["checks"]["unit_norm"] is True
    openai = one("vlm", "openai backend")
    assert openai["checks"]["ok_frames"] == openai["checks"]["frames"] > 0  # the stand-in server's answers parse
    assert one("vlm", "transformers backend")["checks"]["frames"] >= 1
    torchrun = one("pretrain", "torchrun")
    assert (
        torchrun["checks"]["process_group"] == "gloo"
        and torchrun["checks"]["allreduce_ok"]
        and torchrun["checks"]["ddp_step_ok"]
    )
    assert torchrun["checks"]["losses_match"] is True
    for encoder in ("dual-path", "drq-v2"):
        assert one("sac", f"{encoder}, batch 8, fp32")["checks"]["losses_finite"] is True
        assert one("sac", f"{encoder}, batch 8, bf16 autocast")["checks"]["losses_finite"] is True
    online = one("sac", "online SAC")
    assert online["figures"]["acting_frames_s"] > 0 and online["checks"]["updates"] >= 1
    stages = [r["name"].split()[1] for (s, _), r in rows.items() if s == "e2e"]
    assert stages == ["collect", "flow", "annotate", "annotate", "encode", "pretrain"]
    assert one("e2e", "annotate (transformers")["checks"]["outputs"] >= 1
    assert all("device auto -> cpu" in r["name"] for (s, _), r in rows.items() if s == "e2e")


def test_unknown_section_is_refused_before_any_work(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--sections", "flow,warp", "--out", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "warp" in proc.stderr and "e2e" in proc.stderr  # names the culprit and the valid values
    assert not (tmp_path / "gpu_check.json").exists()


@pytest.mark.parametrize("script", ["gpu_check.sh", "gpu_wheels.sh"])
def test_shell_entry_points_parse(script: str) -> None:
    proc = subprocess.run(["bash", "-n", str(ROOT / "bench" / script)], capture_output=True, text=True, check=False)
    assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize("section", SECTIONS)
def test_each_measurement_module_runs_alone_as_its_section(section: str, tmp_path: Path) -> None:
    """``python -m gpu.<section>`` is the driver restricted to that section: an unknown extra section is refused
    by name, so the module's own section is the one it would run."""
    proc = subprocess.run(
        [sys.executable, "-m", f"gpu.{section}", "--sections", f"{section},warp", "--out", str(tmp_path)],
        cwd=ROOT / "bench",
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "unknown warp" in proc.stderr
    assert not (tmp_path / "gpu_check.json").exists()
