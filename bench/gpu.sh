#!/usr/bin/env bash
# Everything to do on a GPU machine in one call that ends within a budget (default 470 s,
# inside an 8-minute limit), on a machine with no earlier build:
#
#   bash bench/gpu.sh          build with CUDA for this GPU's arch (all cores), the CUDA tests
#                              (the curated grid: every op, every dtype, the 2x rule; all run,
#                              then reported), `check`, and `bench --quick`
#   bash bench/gpu.sh full     build if needed, then the full benchmark (--ops to split it)
#   bash bench/gpu.sh full --ops attention
#
# Each step prints its time; a step whose estimate no longer fits the budget is skipped and
# said so. When $OUT is set, it receives summary.txt, the benchmark JSON and logs.tar.gz
# (every log and plot); commit the JSON under bench/results/<gpu>/.
# Environment: BUDGET_S (seconds), PYTHON (default python3), MAX_JOBS, TORCH_CUDA_ARCH_LIST.
set -uo pipefail
cd "$(dirname "$0")/.."
MODE=quick
if [ "${1:-}" = "full" ]; then MODE=full; shift; fi
BUDGET_S=${BUDGET_S:-470}
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
START=$SECONDS
LOGS=$(mktemp -d)
SUMMARY=$LOGS/summary.txt
status=0

say() { echo "$*" | tee -a "$SUMMARY"; }

# Copy what came out to $OUT and exit with the run's status.
finish() {
  say "total $((SECONDS - START)) s; exit $status"
  if [ -n "${OUT:-}" ]; then
    cp "$SUMMARY" "$OUT/summary.txt"
    [ -n "${json:-}" ] && cp "$json" "$OUT/"
    tar -czf "$OUT/logs.tar.gz" -C "$LOGS" .
  fi
  exit $status
}

# step NAME ESTIMATE_S CMD...: run it if its estimate fits in what is left of the budget;
# log it, time it, remember a failure and go on.
step() {
  local name=$1 estimate=$2; shift 2
  local left=$((BUDGET_S - (SECONDS - START)))
  if [ "$estimate" -gt "$left" ]; then
    say "=== $name: SKIPPED (needs ~${estimate} s, ${left} s of the budget left)"
    status=1
    return 1
  fi
  echo "=== $name: $*"
  local t0=$SECONDS
  timeout "$left" "$@" 2>&1 | tee "$LOGS/$name.log"
  local rc=${PIPESTATUS[0]}
  say "=== $name: exit $rc after $((SECONDS - t0)) s (total $((SECONDS - START)) s of $BUDGET_S)"
  [ "$rc" -eq 0 ] || status=1
  return "$rc"
}

nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>&1 | tee -a "$SUMMARY"
json=
if [ -z "${TORCH_CUDA_ARCH_LIST:-}" ]; then
  TORCH_CUDA_ARCH_LIST=$($PY -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())") || exit 1
  export TORCH_CUDA_ARCH_LIST
fi
say "mode $MODE, budget $BUDGET_S s, arch $TORCH_CUDA_ARCH_LIST, $MAX_JOBS build jobs"

built=$($PY -c "import fusednn; print(fusednn.build_info()['cuda'])" 2>/dev/null)
if [ "$built" != "True" ]; then
  step build 180 $PY -m pip install --no-build-isolation --no-deps --no-index -e . || finish
fi
step info 20 $PY -m fusednn info

# pytest: no plugins but xdist (if present, to compile Triton variants on several cores);
# options given here so that an older pytest on the machine does not trip over pyproject's.
export PYTEST_DISABLE_PLUGIN_AUTOLOAD=1
PYTEST=($PY -m pytest -o "addopts=-ra --durations=20" -p no:cacheprovider -q)
if [ "$MODE" = quick ]; then
  WORKERS=()
  if $PY -c "import xdist" 2>/dev/null; then WORKERS=(-p xdist.plugin -n 8); fi
  TESTS=(tests/test_registry.py tests/ops tests/nn tests/test_compile.py tests/test_runtime.py)
  step tests 180 env FUSEDNN_TEST_GRID=curated "${PYTEST[@]}" "${WORKERS[@]}" "${TESTS[@]}"
  if [ $? -eq 4 ] && [ ${#WORKERS[@]} -gt 0 ]; then  # a usage error from the xdist options: run without
    step tests-serial 180 env FUSEDNN_TEST_GRID=curated "${PYTEST[@]}" "${TESTS[@]}"
  fi
  step check 45 $PY -m fusednn check
  step bench 100 $PY -m fusednn bench --quick "$@"
else
  step bench 300 $PY -m fusednn bench "$@"
fi

json=$(find bench/results -name '*.json' -newer "$SUMMARY" 2>/dev/null | head -n 1)  # this run's
if [ -n "$json" ]; then
  saved=$status
  step plot 20 $PY -m fusednn plot "$json" --out "$LOGS/plots"
  status=$saved  # plots are a convenience (matplotlib may be missing): they do not fail the run
  say "results: $json"
fi
finish
