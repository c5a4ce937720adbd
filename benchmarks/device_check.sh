#!/usr/bin/env bash
# The prepared GPU check of tfhalo under JAX (no TensorFlow needed): benchmarks/device_check.py's four
# sections (paper-CNN training samples/s with mixed precision off and on, the device-side sub-box rate,
# the bias-model sampler's gradients/s and ESS/s, the field-level gradient time at 64^3 and 128^3).
# Needs no network: the Python packages the GPU machine lacks travel as wheels in .whl/ (ignored by git).
#
# Usage
#   1. Here (a machine with network), once, in the repository root, fill .whl/ with the wheels for the GPU
#      machine's Python 3.12 (about 12 MB; optree and dm-tree are compiled, the rest pure Python):
#        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#          --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#          --platform manylinux2014_x86_64 -d .whl \
#          keras==3.15.1 namex==0.1.0 optree==0.20.0 tfp-nightly==0.26.0.dev20261027 dm-tree==0.1.10 \
#          decorator==5.3.1 gast==0.7.0 arviz==0.23.4 xarray-einstats==0.9.1 h5netcdf==1.8.2 platformdirs==4.14.9 \
#          colossus==1.4.0
#      (keras needs namex and optree; TFP's JAX substrate decorator and dm-tree; tfhalo.inference's ArviZ
#      xarray-einstats, h5netcdf and platformdirs; tfhalo.sim colossus. jax, numpy, scipy, h5py, xarray,
#      pandas, matplotlib, tqdm and rich are there: KINDS.md of the device tool lists that machine's packages.)
#   2. On the GPU machine, from the repository root (the device tool's `run`):
#        run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=540)
#      Results: stdout, and $OUT/device_check.json + $OUT/device_check.log (rewritten after every section).
#   Anywhere, at tiny sizes (1-2 minutes on a CPU), with whatever Python has jax, keras and tfp-nightly:
#        PYTHON=.venv/bin/python bash benchmarks/device_check.sh --tiny
#   Extra arguments go to device_check.py (--sections, sizes: see `python benchmarks/device_check.py -h`).
#
# Environment: PYTHON (default python3), WHEELS (default .whl), DEVICE_CHECK_TIMEOUT (seconds, default 480:
# the check must end within 8 minutes), OUT (results folder; default runs/device_check),
# TFHALO_BLOCK_TENSORFLOW=1 (make `import tensorflow` fail, to prove the check on a machine that has it).
# Exit status: 0 all sections ran, 1 a section failed or a TensorFlow module was loaded, 124 timed out,
# 3 the wheels did not install.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 3

PYTHON=${PYTHON:-python3}
WHEELS=${WHEELS:-.whl}
OUT=${OUT:-runs/device_check}
mkdir -p "$OUT" && : >"$OUT/device_check.log"

if compgen -G "$WHEELS/*.whl" >/dev/null; then
    site=${TMPDIR:-/tmp}/tfhalo-device-site
    rm -rf "$site"
    # --no-index: nothing is fetched; --target: the machine's own environment is left as it is.
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" \
        "$WHEELS"/*.whl || { echo "device_check.sh: the wheels in $WHEELS did not install" >&2; exit 3; }
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1 TF_CPP_MIN_LOG_LEVEL=2

if command -v nvidia-smi >/dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | tee -a "$OUT/device_check.log"
fi
timeout --signal=INT --kill-after=20 "${DEVICE_CHECK_TIMEOUT:-480}" \
    "$PYTHON" benchmarks/device_check.py --out "$OUT/device_check.json" "$@" 2>&1 | tee -a "$OUT/device_check.log"
status=${PIPESTATUS[0]}
if [ "$status" -eq 124 ]; then
    echo "device_check.sh: stopped after ${DEVICE_CHECK_TIMEOUT:-480} s;" \
        "$OUT/device_check.json holds the sections that finished" >&2
    exit 124
fi
exit "$status"
