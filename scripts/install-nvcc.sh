# Source this: installs nvcc from PyPI into .venv-cuda (once) and exports NVCC.
# Pinned to CUDA 13.0 so the PTX is never newer than the driver (580) of the
# GPU machines we test on. Needs python3 with venv and pip; no GPU, no root.
_venv="${MINIDIFFUSION_CUDA_VENV:-$(pwd)/.venv-cuda}"
if [ ! -x "$_venv/bin/python" ]; then
    python3 -m venv "$_venv"
fi
_site="$("$_venv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
if [ ! -x "$_site/nvidia/cu13/bin/nvcc" ]; then
    "$_venv/bin/pip" install --quiet --disable-pip-version-check \
        "nvidia-cuda-nvcc==13.0.*" "nvidia-cuda-crt==13.0.*" "nvidia-nvvm==13.0.*" \
        "nvidia-cuda-cccl==13.0.*" "nvidia-cuda-runtime==13.0.*"
fi
export NVCC="$_site/nvidia/cu13/bin/nvcc"
export CUDA_HOME="$_site/nvidia/cu13"
unset _venv _site
