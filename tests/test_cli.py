"""The semore command line: --help on every stage, clean errors for bad params."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.cli import STAGES, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("stage", sorted(STAGES))
def test_every_stage_has_help(stage: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        build_parser().parse_args([stage, "--help"])
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert f"semore {stage}" in out and "--help" in out


def test_top_level_help_lists_every_stage() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--help"], capture_output=True, text=True, cwd=ROOT, check=True
    )
    for stage in STAGES:
        assert stage in result.stdout


def test_bad_params_exit_2_with_message_and_no_traceback(tmp_path: Path) -> None:
    params = tmp_path / "params.yaml"
    params.write_text("collect:\n  episodes_per_task: -3\n")
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "--params", str(params), "validate"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 2
    assert "collect.episodes_per_task = -3" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("encode:\n  seed: 1.0e+30\n", "encode.seed = 1e+30"),
        ("collect:\n  workers: true\n", "collect.workers = True"),
        ("annotate:\n  timeout_s: .inf\n", "annotate.timeout_s = inf"),
    ],
)
def test_loose_params_exit_2_naming_the_key(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, expected: str
) -> None:
    params = tmp_path / "params.yaml"
    params.write_text(text)
    assert main(["--params", str(params), "validate"]) == 2
    err = capsys.readouterr().err
    assert expected in err and "Traceback" not in err


def test_validate_prints_effective_section(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--params", str(ROOT / "params.yaml"), "validate", "--section", "flow"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("flow:") and "backend:" in out
    assert main(["--params", str(ROOT / "params.yaml"), "validate", "--section", "nope"]) == 2


#: A stage's arguments with its output folder as ``{out}`` (the inputs need not exist: the check comes first).
_OUT_ARGS = {
    "encode": ["--episodes", "e", "--flow", "f", "--annotations", "a", "--out", "{out}"],
    "pretrain": ["--dataset", "d", "--out", "{out}", "--metrics", "m.json", "--plots", "plots"],
    "finetune": ["--backbone", "b", "--out", "{out}", "--metrics", "m.json", "--plots", "plots"],
    "evaluate": ["--backbone", "b", "--out", "{out}", "--metrics", "m.json"],
}


@pytest.mark.parametrize("stage", sorted(_OUT_ARGS))
def test_an_out_that_is_a_users_folder_or_the_working_directory_is_refused_untouched(
    stage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "ideas.md").write_text("mine")
    monkeypatch.chdir(tmp_path)
    params = str(ROOT / "params.yaml")
    for out, says in (("notes", "notes: not an earlier output"), (".", "working directory")):
        argv = [a.replace("{out}", out) for a in _OUT_ARGS[stage]]
        assert main(["--params", params, stage, *argv]) == 2
        err = capfd.readouterr().err
        assert says in err and "Traceback" not in err
    assert (tmp_path / "notes" / "ideas.md").read_text() == "mine" and (tmp_path / ".git").is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == [".git", "notes"]
