"""Headless MuJoCo rendering, set up in one place.

MuJoCo reads ``MUJOCO_GL`` when it is first imported, so :func:`setup_headless_rendering`
must run before ``mujoco``, ``dm_control`` or gymnasium's MuJoCo environments are
imported; the CLI calls it at start-up. ``egl`` works out of the box on Debian
with Mesa (software rendering on CPU machines, the NVIDIA driver on GPU ones).
"""
from __future__ import annotations

import logging
import os

from pipeline.errors import UserError

log = logging.getLogger(__name__)

#: Debian packages that provide each backend, named in the error when it cannot start.
SYSTEM_PACKAGES = {
    "egl": "libegl1 libgl1-mesa-dri (apt-get install -y libegl1 libgl1-mesa-dri)",
    "osmesa": "libosmesa6 (apt-get install -y libosmesa6)",
    "glfw": "a display server (use MUJOCO_GL=egl for headless machines)",
}


class RenderingUnavailableError(UserError, RuntimeError):
    """MuJoCo could not create an offscreen OpenGL context."""


def setup_headless_rendering() -> str:
    """Default ``MUJOCO_GL`` (and PyOpenGL's platform) to ``egl`` unless the user chose one; return it.

    Also imports ``triton`` (when installed) before any GL context exists: importing it
    after Mesa's EGL context was created segfaults the process (Triton's bundled LLVM
    clashes with the LLVM Mesa's llvmpipe already loaded), and torchvision,
    ``torch._dynamo`` and transformers' generation all import it lazily.
    """
    backend = os.environ.setdefault("MUJOCO_GL", "egl")
    if backend in ("egl", "osmesa"):
        os.environ.setdefault("PYOPENGL_PLATFORM", backend)
    _preload_triton()
    return backend


def _preload_triton() -> None:
    try:
        import triton  # noqa: F401
    except ImportError:  # CPU-only torch builds ship without triton: nothing to clash with
        pass


def check_rendering(size: int = 16) -> None:
    """Render one tiny frame; raise :class:`RenderingUnavailableError` naming the missing package."""
    backend = setup_headless_rendering()
    try:
        import mujoco

        model = mujoco.MjModel.from_xml_string("<mujoco><worldbody><geom size='1'/></worldbody></mujoco>")
        renderer = mujoco.Renderer(model, size, size)
        try:
            data = mujoco.MjData(model)
            mujoco.mj_forward(model, data)
            renderer.update_scene(data)
            renderer.render()
        finally:
            renderer.close()
    except Exception as exc:
        hint = SYSTEM_PACKAGES.get(backend, "an OpenGL backend for MuJoCo (MUJOCO_GL=egl or osmesa)")
        raise RenderingUnavailableError(
            f"MuJoCo cannot render headless with MUJOCO_GL={backend}: {type(exc).__name__}: {exc}.\n"
            f"  Fix: install {hint}, or set MUJOCO_GL to another backend (egl, osmesa)."
        ) from exc
