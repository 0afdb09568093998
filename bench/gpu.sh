#!/usr/bin/env bash
# Everything to do on a GPU machine, in one call (about 10 minutes on an H100):
#   1. build fusednn with its CUDA kernels in place (MAX_JOBS, TORCH_CUDA_ARCH_LIST honoured);
#   2. run the whole test suite (CUDA cases included);
#   3. run `python -m fusednn check` and `python -m fusednn bench`.
# Logs and the benchmark JSON go to bench/results/<device>/ and, when $OUT is set, to $OUT.
# Usage: bash bench/gpu.sh [--quick] [extra `fusednn bench` arguments]
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || exit 1
  export TORCH_CUDA_ARCH_LIST
fi
LOGS=$(mktemp -d)
status=0
step() {  # step NAME CMD...: run, log, remember a failure, go on
  local name=$1; shift
  echo "=== $name: $*"
  local t0=$SECONDS
  "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  echo "=== $name: exit $rc after $((SECONDS - t0)) s"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
step build $PY -m pip install --no-build-isolation --no-deps --no-index -e . || exit 1
step info $PY -m fusednn info
step tests $PY -m pytest tests -q -p no:cacheprovider
step check $PY -m fusednn check
step bench $PY -m fusednn bench "$@"

json=$(ls -t bench/results/*/*.json 2>/dev/null | head -n 1)
if [ -n "$json" ]; then
  dest=$(dirname "$json")
  for f in "$LOGS"/*.log; do cp "$f" "$dest/$(basename "${json%.json}")-$(basename "$f")"; done
fi
if [ -n "${OUT:-}" ]; then
  [ -n "$json" ] && cp "$json" "$OUT/"
  cp "$LOGS"/tests.log "$LOGS"/bench.log "$LOGS"/check.log "$OUT/" 2>/dev/null || true
fi
exit $status
