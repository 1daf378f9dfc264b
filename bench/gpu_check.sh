#!/usr/bin/env bash
# The GPU check of issue 17 in one `device` call (at most 8 minutes): installs the carried wheels
# and GL loaders, then runs bench/gpu_check.py, which writes gpu_check.json and gpu_check.md under
# $OUT (plus this log and nvidia-smi's view). Prepare the wheels here first:
#
#   bash bench/gpu_wheels.sh                      # -> bench/wheels/ (ignored; about 39 MiB)
#   run: command "bash bench/gpu_check.sh", carry ["bench/wheels"], timeout_s 540
#
# Arguments are passed on to gpu_check.py (e.g. --sections flow,sac, --budget-s 300).
# Environment: WHEELS (default bench/wheels), PYTHON (default python3), GPU_CHECK_INSTALL: 1 installs
# the wheels and unpacks the GL packages into / (the default where nvidia-smi exists: the GPU
# machine), 0 installs nothing (the default elsewhere: this project's .venv has every package).
set -uo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
OUT=${OUT:-bench/out/gpu_check}
WHEELS=${WHEELS:-bench/wheels}
PYTHON=${PYTHON:-python3}
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_check.log") 2>&1
echo "gpu_check.sh: $(date -u +%FT%TZ) on $(hostname), OUT=$OUT"

if [ -z "${GPU_CHECK_INSTALL:-}" ]; then
  command -v nvidia-smi >/dev/null 2>&1 && GPU_CHECK_INSTALL=1 || GPU_CHECK_INSTALL=0
fi
if [ "$GPU_CHECK_INSTALL" = 1 ]; then
  # MuJoCo renders through EGL: the GL loaders (libglvnd) as the device README's recipe brings them.
  if compgen -G "$WHEELS/gl/*.deb" >/dev/null; then
    for f in "$WHEELS"/gl/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  vendor=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  [ -f "$vendor" ] && export __EGL_VENDOR_LIBRARY_FILENAMES=$vendor
  compgen -G "$WHEELS/*.whl" >/dev/null || { echo "no wheels in $WHEELS: run bash bench/gpu_wheels.sh here and carry $WHEELS"; exit 2; }
  start=$SECONDS
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$WHEELS"/*.whl || exit 2
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  echo "installed $(ls "$WHEELS"/*.whl | wc -l) wheels in $((SECONDS - start)) s"
fi
export MUJOCO_GL=egl PYOPENGL_PLATFORM=egl HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false DVC_NO_ANALYTICS=1 PYTHONUNBUFFERED=1
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || echo "no nvidia-smi" >"$OUT/nvidia-smi.txt"
# 460 s leaves the install and the transfers inside the 8 minutes; the driver's own budget (420 s)
# skips later measurements before that, and it rewrites its JSON after every section.
timeout -k 10 460 "$PYTHON" bench/gpu_check.py --out "$OUT" "$@"
rc=$?
echo "gpu_check.py exited $rc"
exit $rc
