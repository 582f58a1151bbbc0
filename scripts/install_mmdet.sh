#!/usr/bin/env bash
# Install the MMDetection extra into a virtual environment: mmcv 2.1.0 compiled from its sdist
# (PyPI has no wheel for it), then mmengine and mmdet 3.3.0. Measured on a 2-core machine:
# about 20 minutes the first time; pip then caches the built wheel.
# pip caches that wheel by the sdist alone: after any change of torch, run with REBUILD=1.
# FORCE_CUDA=1 (the Docker image's devel stage) also compiles mmcv's CUDA ops, for the GPUs
# named by TORCH_CUDA_ARCH_LIST (required then: a build machine may have no GPU to ask), and
# checks that mmcv.ops reports CUDA; the default FORCE_CUDA=0 builds the CPU ops (make test).
# Usage: [FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0+PTX"] scripts/install_mmdet.sh [path/to/python]
set -euo pipefail
PY="${1:-.venv/bin/python}"
here="$(cd "$(dirname "$0")" && pwd)"
force_cuda="${FORCE_CUDA:-0}"
check="import mmdet, mmcv.ops"
cache=()
if [ "${REBUILD:-0}" = "1" ]; then cache=(--no-cache-dir); fi
if [ "$force_cuda" = "1" ]; then
  if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
    echo "FORCE_CUDA=1 needs TORCH_CUDA_ARCH_LIST, the GPU architectures to compile for (e.g. '8.0;8.6;9.0+PTX')" >&2
    exit 2
  fi
  # a CPU-only wheel in pip's cache has the same name: never reuse it for a CUDA build
  cache=(--no-cache-dir)
  check="$check; from mmcv.ops import get_compiling_cuda_version as v; import sys; \
sys.exit(0 if v() not in ('', 'not available') else 'mmcv.ops was compiled without CUDA ops')"
fi
if "$PY" -c "$check" >/dev/null 2>&1; then
  echo "mmdet and mmcv ops already importable"; exit 0
fi
"$PY" -m pip install --quiet "setuptools==80.9.0" ninja wheel
CXX="$here/cxx20.sh" MMCV_WITH_OPS=1 FORCE_CUDA="$force_cuda" MAX_JOBS="${MAX_JOBS:-2}" \
  "$PY" -m pip install "${cache[@]}" --no-build-isolation "mmcv==2.1.0"
"$PY" -m pip install --quiet "mmengine==0.10.7" "mmdet==3.3.0"
if ! "$PY" -c "$check" ; then
  echo "mmcv was built against another torch (or without the ops asked for); rebuilding without pip's cache" >&2
  "$PY" -m pip uninstall -y mmcv
  CXX="$here/cxx20.sh" MMCV_WITH_OPS=1 FORCE_CUDA="$force_cuda" MAX_JOBS="${MAX_JOBS:-2}" \
    "$PY" -m pip install --no-cache-dir --no-build-isolation "mmcv==2.1.0"
  "$PY" -c "$check"
fi
echo "MMDetection installed: $("$PY" -c 'import mmdet, mmcv; print(mmdet.__version__, mmcv.__version__)')"
if [ "$force_cuda" = "1" ]; then
  echo "mmcv.ops compiled with CUDA $("$PY" -c 'from mmcv.ops import get_compiling_cuda_version as v; print(v())')"
fi
