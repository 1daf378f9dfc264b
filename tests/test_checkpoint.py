"""Module checkpoints cannot run code, and a broken checkpoint is a clear error on every loading path.

Loading paths: ``models.checkpoint.load_module`` (and ``build_module``), the finetune stage's
backbone loader (``read_spec`` / ``build_encoder``) and the collect stage's checkpoint policy.
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from models.actor import ActorMeta, PixelPolicy
from models.backbone import DualPathBackbone
from models.checkpoint import (
    CONFIG_FILE,
    WEIGHTS_FILE,
    CheckpointError,
    UntrustedClassError,
    build_module,
    load_module,
    register_checkpoint_class,
    resolve_class,
    save_module,
)
from pipeline.collect.errors import PolicyError
from pipeline.collect.policies import make_policy
from pipeline.common.errors import UserError
from pipeline.config.collect import PolicyParams
from pipeline.finetune.encoder import EncoderSpec, build_encoder, read_spec

REPO = Path(__file__).resolve().parents[1]
BACKBONE = dict(frame_stack=2, image_size=16, feature_dim=8, channels=4, depth=2)
ACTOR_META = ActorMeta(task="cartpole-swingup", action_dim=1, frame_stack=2, image_size=16, action_repeat=2)


def write_checkpoint(folder: Path, cls: str, config: dict, meta: dict | None = None) -> Path:
    """A hand-written checkpoint folder (what a downloaded, hostile one looks like): any config.json."""
    folder.mkdir(parents=True)
    (folder / CONFIG_FILE).write_text(json.dumps({"class": cls, "config": config, "meta": meta or {}}))
    torch.manual_seed(0)
    save_module(folder.parent / "donor", DualPathBackbone(**BACKBONE), BACKBONE)
    (folder / WEIGHTS_FILE).write_bytes((folder.parent / "donor" / WEIGHTS_FILE).read_bytes())
    return folder


def via_load_module(folder: Path) -> None:
    load_module(folder)


def via_finetune_read_spec(folder: Path) -> None:
    read_spec(folder)


def via_finetune_scratch(folder: Path) -> None:
    record = json.loads((folder / CONFIG_FILE).read_text())
    build_encoder(EncoderSpec(folder, record["class"], record["config"], 2, 16, "0" * 64), "scratch")


def via_finetune_pretrained(folder: Path) -> None:
    record = json.loads((folder / CONFIG_FILE).read_text())
    build_encoder(EncoderSpec(folder, record["class"], record["config"], 2, 16, "0" * 64), "pretrained")


def via_collect_policy(folder: Path) -> None:
    params = PolicyParams(kind="checkpoint", checkpoint=str(folder))
    make_policy(
        params,
        np.array([-1.0], np.float32),
        np.array([1.0], np.float32),
        task="cartpole-swingup",
        image_size=16,
        action_repeat=2,
    )


LOADERS: dict[str, Callable[[Path], None]] = {
    "load_module": via_load_module,
    "finetune_read_spec": via_finetune_read_spec,
    "finetune_scratch": via_finetune_scratch,
    "finetune_pretrained": via_finetune_pretrained,
    "collect_policy": via_collect_policy,
}
#: What each pipeline-side loader raises: a user error (CLI exit 2), or the models-level one.
RAISES: dict[str, type[Exception]] = {
    "load_module": CheckpointError,
    "finetune_read_spec": UserError,
    "finetune_scratch": UserError,
    "finetune_pretrained": UserError,
    "collect_policy": PolicyError,
}


def hostile_configs(tmp_path: Path) -> dict[str, tuple[str, dict]]:
    """(class, config) pairs that would run ``touch <tmp>/PWNED`` if a loader built them."""
    command = f"touch {tmp_path / 'PWNED'}"
    return {
        "os:system": ("os:system", {"command": command}),
        # A class name nested in an allowed class's config is held to the same rule.
        "nested encoder_class": (
            "models.actor:PixelPolicy",
            {
                "encoder_class": "os:system",
                "encoder_config": {"command": command},
                "actor_config": {"feature_dim": 8, "action_dim": 1},
            },
        ),
        "builtin eval": ("builtins:eval", {"source": f"__import__('os').system({command!r})"}),
    }


@pytest.mark.parametrize("loader", list(LOADERS))
@pytest.mark.parametrize("case", ["os:system", "nested encoder_class", "builtin eval"])
def test_a_checkpoint_naming_a_foreign_class_is_refused_without_running_it(
    tmp_path: Path, loader: str, case: str
) -> None:
    cls, config = hostile_configs(tmp_path)[case]
    folder = write_checkpoint(tmp_path / "ckpt", cls, config, ACTOR_META.to_meta())
    with pytest.raises(RAISES[loader]) as info:
        LOADERS[loader](folder)
    assert not (tmp_path / "PWNED").exists()
    if (loader, case) == ("finetune_read_spec", "nested encoder_class"):
        return  # read_spec builds nothing; it stops at the missing frame_stack (building refuses: other cases)
    named = "os:system" if case == "nested encoder_class" else cls
    assert f"class {named!r} is not allowed in a checkpoint" in str(info.value)
    assert "register_checkpoint_class" in str(info.value)  # the fix for one's own model


def test_a_foreign_module_is_refused_before_it_is_imported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Importing a module runs its top level: the refusal must come before any import."""
    (tmp_path / "semore_pwned_module.py").write_text(
        f"open({str(tmp_path / 'PWNED')!r}, 'w').close()\nclass Evil:\n    pass\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    folder = write_checkpoint(tmp_path / "ckpt", "semore_pwned_module:Evil", {}, ACTOR_META.to_meta())
    for loader in LOADERS:
        with pytest.raises(RAISES[loader], match="'semore_pwned_module:Evil' is not allowed"):
            LOADERS[loader](folder)
    assert "semore_pwned_module" not in sys.modules
    assert not (tmp_path / "PWNED").exists()


def test_allowed_classes_still_load_and_own_classes_can_be_registered(tmp_path: Path) -> None:
    torch.manual_seed(0)
    policy_config = {"encoder_config": BACKBONE, "actor_config": {"feature_dim": 8, "action_dim": 1}}
    policy = PixelPolicy(**policy_config)
    save_module(tmp_path / "policy", policy, policy_config, ACTOR_META.to_meta(seed=3))
    loaded, meta = load_module(tmp_path / "policy")
    obs = torch.randint(0, 256, (2, 6, 16, 16), dtype=torch.uint8)
    torch.testing.assert_close(loaded.act(obs), policy.act(obs), rtol=0, atol=0)
    assert ActorMeta.from_meta(meta) == ACTOR_META and meta["seed"] == 3

    class Mine(nn.Module):
        def __init__(self, width: int) -> None:
            super().__init__()
            self.layer = nn.Linear(width, 1)

    save_module(tmp_path / "mine", Mine(3), {"width": 3})
    with pytest.raises(UntrustedClassError, match="Mine' is not allowed"):
        load_module(tmp_path / "mine")
    register_checkpoint_class(Mine)
    mine, _ = load_module(tmp_path / "mine")
    assert isinstance(mine, Mine)
    with pytest.raises(TypeError, match="nn.Module subclass"):
        register_checkpoint_class(dict)
    with pytest.raises(UntrustedClassError, match="'torch.nn.modules.linear:Linear' is not allowed"):
        resolve_class("torch.nn.modules.linear:Linear")


def mismatched_backbone(tmp_path: Path) -> Path:
    """A backbone folder whose config.json says 8 channels but whose weights have 4."""
    torch.manual_seed(0)
    folder = tmp_path / "pretrain" / "backbone"
    save_module(folder, DualPathBackbone(**BACKBONE), BACKBONE, ACTOR_META.to_meta())
    record = json.loads((folder / CONFIG_FILE).read_text())
    record["config"]["channels"] = 8
    (folder / CONFIG_FILE).write_text(json.dumps(record))
    return folder


@pytest.mark.parametrize("loader", ["load_module", "finetune_pretrained"])
def test_config_that_does_not_match_the_weights_names_the_folder_and_the_fix(tmp_path: Path, loader: str) -> None:
    folder = mismatched_backbone(tmp_path)
    with pytest.raises(RAISES[loader]) as info:
        LOADERS[loader](folder)
    message = str(info.value)
    assert str(folder) in message and f"{CONFIG_FILE} does not match {WEIGHTS_FILE}" in message
    assert "size mismatch" in message and "rerun that stage" in message


def test_finetune_reports_a_mismatched_backbone_as_a_user_error_before_training(tmp_path: Path) -> None:
    folder = mismatched_backbone(tmp_path)
    spec = read_spec(folder.parent)  # the pretrain stage's output folder, as the stage gets it
    with pytest.raises(UserError, match="--backbone: .*config.json does not match model.safetensors"):
        build_encoder(spec, "frozen")
    assert isinstance(build_encoder(spec, "scratch"), DualPathBackbone)  # scratch reads no weights


@pytest.mark.parametrize(
    "damage, expected",
    [
        (lambda f: (f / WEIGHTS_FILE).write_bytes(b"\x00" * 10), "unreadable weights"),
        (lambda f: (f / WEIGHTS_FILE).unlink(), f"no {WEIGHTS_FILE} beside {CONFIG_FILE}"),
        (lambda f: (f / CONFIG_FILE).write_text("{not json"), "not valid JSON"),
        (lambda f: (f / CONFIG_FILE).write_text('{"class": 3}'), 'expected {"class"'),
        (
            lambda f: (f / CONFIG_FILE).write_text(
                json.dumps(
                    {
                        "class": "models.backbone:DualPathBackbone",
                        "config": {"depth": 2, "colour": 1},
                        "meta": ACTOR_META.to_meta(),
                    }
                )
            ),
            "cannot build models.backbone:DualPathBackbone",
        ),
    ],
    ids=["corrupt weights", "no weights", "bad json", "bad record", "unknown kwarg"],
)
def test_damaged_checkpoints_are_checkpoint_errors_and_user_errors_downstream(
    tmp_path: Path, damage: Callable[[Path], None], expected: str
) -> None:
    torch.manual_seed(0)
    folder = tmp_path / "backbone"
    save_module(folder, DualPathBackbone(**BACKBONE), BACKBONE, ACTOR_META.to_meta())
    damage(folder)
    with pytest.raises(CheckpointError, match=expected):
        load_module(folder)
    with pytest.raises(PolicyError, match=expected):
        via_collect_policy(folder)


def test_build_module_builds_an_allowed_class_from_its_config() -> None:
    torch.manual_seed(1)
    built = build_module("models.backbone:DualPathBackbone", BACKBONE)
    assert isinstance(built, DualPathBackbone) and built.channels == 4


def test_actor_meta_is_the_one_declaration_of_what_writer_and_reader_share() -> None:
    meta = ACTOR_META.to_meta(frames=100, camera_note="x")
    assert ActorMeta.from_meta(meta) == ACTOR_META
    assert ActorMeta.missing_keys({"task": "x", "frame_stack": 2}) == ["action_dim", "image_size", "action_repeat"]
    with pytest.raises(CheckpointError, match="lacks action_dim, image_size, action_repeat"):
        ActorMeta.from_meta({"task": "x", "frame_stack": 2})
    with pytest.raises(CheckpointError, match="malformed size"):
        ActorMeta.from_meta({**meta, "image_size": "big"})
    with pytest.raises(ValueError, match="overwrite ActorMeta fields"):
        ACTOR_META.to_meta(task="other")


def test_models_import_nothing_from_pipeline() -> None:
    """The networks are importable into someone else's training code with torch alone."""
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pipeline' or name.startswith('pipeline.'):\n"
        "            raise ImportError('models imported ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        "import models.actor, models.backbone, models.checkpoint, models.critic, models.heads, "
        "models.interaction, models.layers\n"
    )
    subprocess.run([sys.executable, "-c", code], cwd=REPO, check=True)


def test_every_torch_load_in_the_repository_is_weights_only() -> None:
    """torch.load unpickles: every call must pass weights_only=True (no code in a loaded file runs)."""
    offenders = []
    for path in sorted(p for d in ("models", "pipeline", "stages", "bench", "tests") for p in (REPO / d).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and ast.unparse(node.func) == "torch.load":
                flags = {k.arg: k.value for k in node.keywords}
                if not (isinstance(flags.get("weights_only"), ast.Constant) and flags["weights_only"].value is True):
                    offenders.append(f"{path.relative_to(REPO)}:{node.lineno}")
    assert not offenders, f"torch.load without weights_only=True: {offenders}"


def test_a_pretrain_model_from_before_a_head_existed_is_refused_naming_the_version(tmp_path: Path) -> None:
    """A pretrain model/ saved before the clip_motion head lacks only that head's weights: refused
    (never loaded with a random head), and the message says another version may have written it."""
    from safetensors.torch import load_file, save_file

    from models.heads import PretrainModel

    folder = tmp_path / "pretrain" / "model"
    config = {"backbone": BACKBONE, "clip_dim": 8, "head_hidden": 16}
    save_module(folder, PretrainModel(**config), config)
    weights = folder / WEIGHTS_FILE
    save_file({k: v for k, v in load_file(str(weights)).items() if not k.startswith("clip_motion.")}, str(weights))
    with pytest.raises(
        CheckpointError, match=r"Missing key\(s\).*clip_motion.*version of this project.*rerun that stage"
    ):
        load_module(folder)
