#!/usr/bin/env bash
# Install the MMDetection extra into a virtual environment: mmcv 2.1.0 compiled from its sdist
# (PyPI has no wheel for it), then mmengine and mmdet 3.3.0. Measured on a 2-core machine:
# about 20 minutes the first time; pip then caches the built wheel.
# pip caches that wheel by the sdist alone: after any change of torch, run with REBUILD=1.
# Usage: scripts/install_mmdet.sh [path/to/python]
set -euo pipefail
PY="${1:-.venv/bin/python}"
here="$(cd "$(dirname "$0")" && pwd)"
if "$PY" -c "import mmdet, mmcv.ops" >/dev/null 2>&1; then
  echo "mmdet and mmcv ops already importable"; exit 0
fi
"$PY" -m pip install --quiet "setuptools==80.9.0" ninja wheel
cache=()
if [ "${REBUILD:-0}" = "1" ]; then cache=(--no-cache-dir); fi
CXX="$here/cxx20.sh" MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" \
  "$PY" -m pip install "${cache[@]}" --no-build-isolation "mmcv==2.1.0"
"$PY" -m pip install --quiet "mmengine==0.10.7" "mmdet==3.3.0"
if ! "$PY" -c "import mmdet, mmcv.ops" ; then
  echo "mmcv was built against another torch; rebuilding without pip's cache" >&2
  "$PY" -m pip uninstall -y mmcv
  CXX="$here/cxx20.sh" MMCV_WITH_OPS=1 FORCE_CUDA=0 MAX_JOBS="${MAX_JOBS:-2}" \
    "$PY" -m pip install --no-cache-dir --no-build-isolation "mmcv==2.1.0"
  "$PY" -c "import mmdet, mmcv.ops"
fi
echo "MMDetection installed: $("$PY" -c 'import mmdet, mmcv; print(mmdet.__version__, mmcv.__version__)')"
