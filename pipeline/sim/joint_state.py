"""The joint state of recorded frames: what a probe predicts from a frame when it reads the dataset's qpos/qvel.

One definition used by every probe whose target comes from recorded physics states (the annotate
stage's text informativeness, :mod:`pipeline.annotate.information`; the pretrain stage's diagnostic
probe, :mod:`pipeline.pretrain.probe`). A frame shows an angle only modulo a turn and shows no
untracked root position, so raw ``qpos`` is not what a frame holds:

* a hinge gives the cos and sin of its angle (a reacher shoulder that has wound to +17 rad looks
  the same as at 17 - 6 pi);
* a slide gives its position, except :data:`UNTRACKED_SLIDES` (the runners' root x: the tracking
  camera moves with it, so no frame shows it);
* a ball joint gives its quaternion, a free joint its height and quaternion (not x and y);
* every velocity is kept as it is.

The evaluate stage's probe reads the live environment instead
(``pipeline.collect.envs.base.PixelEnv.probe_observation``: the task's own observation, with
unbounded hinge angles as cos/sin), which is the same idea on what a state-based agent sees.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: Slide joints whose position no tracking camera shows (dm_control and gymnasium runners' root x).
UNTRACKED_SLIDES = frozenset({"rootx"})


#: qpos and qvel values of each MuJoCo joint type (0 free, 1 ball, 2 slide, 3 hinge).
_QPOS_WIDTH = {0: 7, 1: 4, 2: 1, 3: 1}
_DOF_WIDTH = {0: 6, 1: 3, 2: 1, 3: 1}


@dataclass(frozen=True)
class Joint:
    """One joint of the model: name, MuJoCo type (0 free, 1 ball, 2 slide, 3 hinge), qpos and qvel addresses."""

    name: str
    kind: int
    qpos: int
    dof: int


def model_joints(task: str, suite: str = "") -> list[Joint]:
    """The joints of ``task``'s model (:func:`pipeline.sim.task_physics.load_task_physics`, no renderer)."""
    import mujoco

    from pipeline.sim.task_physics import load_task_physics

    model, _, close = load_task_physics(task, suite)
    try:
        return [
            Joint(
                mujoco.mj_id2name(model, mujoco.mjtObj.mjOBJ_JOINT, j) or f"joint{j}",
                int(model.jnt_type[j]),
                int(model.jnt_qposadr[j]),
                int(model.jnt_dofadr[j]),
            )
            for j in range(model.njnt)
        ]
    finally:
        close()


def state_matrix(joints: list[Joint], qpos: np.ndarray, qvel: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """The probe's target: (N, D) float64 joint state of frames ``qpos`` (N, nq), ``qvel`` (N, nv),
    and each column's kind.

    Hinges give cos and sin of their angle, slides their position (not :data:`UNTRACKED_SLIDES`),
    ball joints their quaternion, free joints their height and quaternion (kind ``position``);
    every velocity (kind ``velocity``).

    Raises:
        ValueError: ``qpos`` / ``qvel`` are not as wide as the joints' nq / nv (frames of another model).
    """
    qpos, qvel = np.atleast_2d(np.asarray(qpos, np.float64)), np.atleast_2d(np.asarray(qvel, np.float64))
    nq = sum(_QPOS_WIDTH[j.kind] for j in joints)
    nv = sum(_DOF_WIDTH[j.kind] for j in joints)
    if qpos.shape[1] != nq or qvel.shape[1] != nv:
        raise ValueError(
            f"frames with {qpos.shape[1]} qpos and {qvel.shape[1]} qvel values; "
            f"the model's joints have nq={nq} and nv={nv}"
        )
    columns: list[np.ndarray] = []
    kinds: list[str] = []
    for joint in joints:
        a = joint.qpos
        if joint.kind == 3:  # hinge
            columns += [np.cos(qpos[:, a]), np.sin(qpos[:, a])]
            kinds += ["position"] * 2
        elif joint.kind == 2 and joint.name not in UNTRACKED_SLIDES:
            columns.append(qpos[:, a])
            kinds.append("position")
        elif joint.kind == 1:  # ball: quaternion
            columns += [qpos[:, a + i] for i in range(4)]
            kinds += ["position"] * 4
        elif joint.kind == 0:  # free: height and quaternion
            columns += [qpos[:, a + i] for i in range(2, 7)]
            kinds += ["position"] * 5
    columns += [qvel[:, i] for i in range(qvel.shape[1])]
    kinds += ["velocity"] * qvel.shape[1]
    return np.stack(columns, axis=1), kinds
