"""End to end under DVC: the whole graph on reduced params in a temporary copy of the project.

Asserts what users rely on: every declared output exists and is valid; a second
`dvc repro` runs nothing; a changed flow param reruns exactly flow and its
downstream stages; `dvc push` then `dvc pull` into a clean copy restores
byte-identical outputs.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow

TASK = "cartpole-swingup"
#: Small enough for CI (each stage also pays ~10 s of imports), large enough that every stage does real work.
REDUCED = {
    "collect": {"tasks": [TASK], "episodes_per_task": 3, "episode_steps": 12, "image_size": 48, "workers": 1},
    "flow": {"previews": 1},
    "annotate": {"every_k": 4},
    "encode": {"val_fraction": 0.34, "batch_size": 16},
    "pretrain": {"steps": 4, "batch_size": 8, "workers": 0},
    "finetune": {
        # action repeat: the benchmark value (8), as collect and evaluate use; another would be refused
        # (the backbone records 8)
        "task": TASK,
        "frames": 160,
        "episode_frames": 80,
        "seed_frames": 80,
        "eval_every_frames": 80,
        "eval_episodes": 1,
        "batch_size": 8,
        "checkpoint_dir": "data/cache/finetune",
    },
    "evaluate": {
        "tasks": [TASK],
        "heldout_episodes": 3,
        "heldout_frames": 48,
        "random_inits": 1,
        "frames": 96,
        "seed_frames": 48,
        "eval_every_frames": 48,
        "eval_episodes": 1,
        "episode_frames": 48,
        "workers": 1,
        "agent": {"batch_size": 8, "hidden_dim": 16},
        "probe": {"bootstrap": 100, "folds": 3},
    },
}


def _deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = _deep_update(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def _project_files() -> list[str]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"],
        cwd=ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    return [f for f in out.split("\0") if f and not f.startswith(("data/", "dvc.lock")) and (ROOT / f).is_file()]


def _copy_project(dest: Path) -> None:
    for rel in _project_files():
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / rel, target)
    subprocess.run(["git", "init", "-q"], cwd=dest, check=True)


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    env["SEMORE_OFFLINE"] = "1"
    env["HOME"] = env.get("HOME", "/tmp")
    return env


def _dvc(cwd: Path, *args: str) -> str:
    result = subprocess.run([sys.executable, "-m", "dvc", *args], cwd=cwd, env=_env(), capture_output=True, text=True)
    if result.returncode != 0:
        raise AssertionError(f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result.stdout + result.stderr


def _ran(output: str) -> set[str]:
    return set(re.findall(r"Running stage '([^']+)'", output))


def _digest_tree(root: Path, rels: list[str]) -> dict[str, str]:
    digests = {}
    for rel in rels:
        path = root / rel
        files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
        for file in files:
            digests[str(file.relative_to(root))] = hashlib.sha256(file.read_bytes()).hexdigest()
    return digests


def _declared_outputs(project: Path) -> list[str]:
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    outs: list[str] = []
    for stage in lock["stages"].values():
        outs += [o["path"] for o in stage.get("outs", [])]
    return sorted(set(outs))


def _check_readmes_first_look(project: Path) -> None:
    """README's first command prints the table README shows (same columns) and fits 120 columns."""
    shown = _dvc(project, "metrics", "show", "data/metrics/headline.json").splitlines()
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"dvc metrics show data/metrics/headline.json\n```\n```\n(.*?)```", readme, re.S)
    assert block is not None, "README lost its first-look table"
    assert shown[0].split() == block.group(1).splitlines()[0].split()
    assert shown[1].split()[0] == "data/metrics/headline.json"
    assert all(len(line.rstrip()) <= 120 for line in shown), shown
    headline = json.loads((project / "data/metrics/headline.json").read_text())
    assert headline["flow_epe"] < 0.01 and headline["annot_acc"] == 1.0  # simulator flow and oracle annotations
    assert set(headline["iqm"]) == {"state", "pretrained", "random"}


def test_dvc_repro_rerun_and_remote_round_trip(tmp_path: Path) -> None:
    project = tmp_path / "project"
    _copy_project(project)
    params = yaml.safe_load((project / "params.yaml").read_text())
    (project / "params.yaml").write_text(yaml.safe_dump(_deep_update(params, REDUCED), sort_keys=False))

    all_stages = {
        f"collect@{TASK}",
        f"flow@{TASK}",
        f"annotate@{TASK}",
        "encode",
        "pretrain",
        "finetune",
        "evaluate",
        "headline",
    }
    assert _ran(_dvc(project, "repro")) == all_stages

    # Every declared output exists and holds what the next stage needs.
    outs = _declared_outputs(project)
    for rel in outs:
        path = project / rel
        assert path.exists() and (path.is_file() or any(path.iterdir())), f"missing or empty output {rel}"
    episode = project / "data/episodes" / TASK / "episode_000000.npz"
    with np.load(episode) as npz:
        assert npz["frames"].shape == (13, 48, 48, 3)
    with np.load(project / "data/flow" / TASK / "episode_000000.npz") as npz:
        assert npz["flow"].shape == (12, 2, 48, 48) and npz["flow"].dtype == np.float16
    assert list((project / "data/dataset/train").glob("shard-*.tar"))
    assert (project / "data/pretrain/backbone/model.safetensors").is_file()
    metrics = json.loads(_dvc(project, "metrics", "show", "--json"))
    assert metrics, "dvc metrics show reported nothing"
    assert (project / "data/evaluation/report.md").is_file()
    assert "data/evaluation/dvclive/metrics.json" in json.dumps(metrics)  # DVCLive's logs are DVC metrics
    _check_readmes_first_look(project)

    # Nothing changed: nothing runs.
    assert _ran(_dvc(project, "repro")) == set()

    # A flow param that changes the flow reruns flow and everything downstream of it, never
    # collect or annotate. (A param that leaves the flow bytes unchanged, e.g. flow.previews,
    # stops at flow: DVC sees encode's inputs unchanged.)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["flow"]["backend"] = "dis"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _ran(_dvc(project, "repro")) == {f"flow@{TASK}", "encode", "pretrain", "finetune", "evaluate", "headline"}

    # Push to a local-directory remote, pull into a clean copy: byte-identical outputs.
    remote = tmp_path / "remote"
    _dvc(project, "remote", "add", "-d", "local", str(remote))
    _dvc(project, "push")
    clone = tmp_path / "clone"
    _copy_project(clone)
    shutil.copy2(project / "params.yaml", clone / "params.yaml")
    shutil.copy2(project / "dvc.lock", clone / "dvc.lock")
    shutil.copy2(project / ".dvc/config", clone / ".dvc/config")
    _dvc(clone, "pull")
    assert _digest_tree(clone, outs) == _digest_tree(project, outs)
    assert _ran(_dvc(clone, "repro")) == set()
