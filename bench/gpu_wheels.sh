#!/usr/bin/env bash
# Download the wheels bench/gpu_check.sh installs on the GPU machine (issue 17), into an
# ignored folder that a `device` call carries: bench/wheels/ by default.
#
#   bash bench/gpu_wheels.sh [DEST] [PYTHON_VERSION]     # defaults: bench/wheels 3.12
#
# The GPU machine's image (Python 3.12, x86-64) already has torch, torchvision, transformers,
# lightning, opencv, imageio, einops, safetensors, huggingface_hub, absl-py, etils, cloudpickle,
# pyyaml, requests, regex, tqdm, scipy: those are NOT downloaded, nor dm_control (54 MB; the check
# uses a gymnasium MuJoCo task). What is: the packages it lacks, at the versions of uv.lock, and
# the few of their dependencies that it lacks too (each named, --no-deps: nothing else comes along).
# timm is there too, but ptlflow wants <1.1 and open_clip >=1.0.17: the locked one travels.
# Also the GL loader packages (Debian, amd64) for MuJoCo's EGL rendering there, into DEST/gl/.
# Prints the total size against the 64 MiB a device call may carry (working tree included).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
DEST=${1:-bench/wheels}
PYVER=${2:-3.12}
WHEELS=(
  ptlflow==0.4.2 jsonargparse==4.53.0 loguru==0.7.3 timm==1.0.31
  open_clip_torch==3.3.0 ftfy==6.3.1 wcwidth==0.9.4
  mujoco==3.17.0 glfw==2.11.0 pyopengl==3.1.10
  gymnasium==1.4.0 farama-notifications==0.0.6
  webdataset==1.0.2 braceexpand==0.1.7
  scikit-learn==1.9.1 joblib==1.6.0 threadpoolctl==3.8.0
  pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5 typing-extensions==4.16.0
)
mkdir -p "$DEST"
rm -f "$DEST"/*.whl
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 --platform manylinux_2_24_x86_64 \
  -d "$DEST" "${WHEELS[@]}"
# The GL loaders MuJoCo's EGL rendering needs, as the device README's recipe brings them (amd64
# Debian packages, unpacked there with dpkg -x by bench/gpu_check.sh; the driver's EGL vendor
# library is on the GPU machine already).
mkdir -p "$DEST/gl" /tmp/gpu_wheels_apt/partial
APT=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/gpu_wheels_apt)
rm -f "$DEST"/gl/*.deb
apt-get "${APT[@]}" update -qq
(cd "$DEST/gl" && apt-get "${APT[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)
ls -1 "$DEST"/*.whl | wc -l | xargs echo "wheels:"
ls -1 "$DEST"/gl/*.deb | wc -l | xargs echo "GL packages:"
du -cb "$DEST"/*.whl "$DEST"/gl/*.deb | awk 'END { printf "total: %.1f MiB of the 64 MiB a device call carries (working tree included)\n", $1 / 1048576 }'
