#!/usr/bin/env bash
# GPU acceptance run for the CuPy backend, on a machine with an NVIDIA GPU, cupy, torch and pytest installed and no
# network. Run from the repository root:  bash bench/gpu_check.sh
#
# Steps (each keeps going after a failure; the script exits non-zero if any failed):
#   install    editable install of cnnkit (no dependencies, no build isolation: works offline)
#   device     cupy must see a CUDA device (the GPU tests fail, not skip, without one)
#   gpu-tests  pytest -m gpu over tests/test_ops.py, tests/test_cuda_launchers.py, tests/test_cuda_models.py and
#              tests/test_cuda_graphs.py
#   memcheck   compute-sanitizer --tool memcheck over a short op subset (CuPy's memory pool off, so
#              out-of-bounds accesses hit real allocation ends)
#   racecheck  compute-sanitizer --tool racecheck over the same subset (shared-memory tiles and reductions)
#   bench      python3 bench/compare.py --models lenet5,resnet20 --backends cupy --batch 256 --device gpu
#              --no-compile (PyTorch eager; torch.compile takes minutes: run it on its own when time allows)
#   profile    python3 bench/op_profile.py --backend cupy --batch 256: each op's GPU time in a training step
# Logs and a summary go to ${OUT:-/tmp/gpu_check}. Step time limits add up to under 8 minutes.
set -u

cd "$(dirname "$0")/.."
OUT_DIR="${OUT:-/tmp/gpu_check}"
mkdir -p "$OUT_DIR"
STEPS=()
RESULTS=()
FAILED=0

# run_step NAME SECONDS COMMAND...: run with a time limit, log to $OUT_DIR/NAME.log, record PASS/FAIL.
run_step() {
    local name=$1 limit=$2
    shift 2
    echo "=== [$name] $*"
    local start=$SECONDS
    timeout "$limit" "$@" 2>&1 | tee "$OUT_DIR/$name.log"
    local rc=${PIPESTATUS[0]}
    local status="PASS"
    if [ "$rc" -eq 124 ]; then
        status="FAIL (timed out after ${limit}s)"
    elif [ "$rc" -ne 0 ]; then
        status="FAIL (exit $rc)"
    fi
    [ "$status" = "PASS" ] || FAILED=1
    STEPS+=("$name")
    RESULTS+=("$status, $((SECONDS - start))s")
}

record() {  # record NAME STATUS: a step that did not run a command
    STEPS+=("$1")
    RESULTS+=("$2")
    FAILED=1
}

run_step install 50 python3 -m pip install -q --no-deps --no-build-isolation -e .
# the op cases the CPU simulator's sanitizer step also runs (one list, in cnnkit.backends.cudasim.sanitize)
SANITIZER_SUBSET="$(python3 -c 'from cnnkit.backends.cudasim.sanitize import SANITIZER_SUBSET; print(SANITIZER_SUBSET)')"
nvidia-smi > "$OUT_DIR/nvidia-smi.txt" 2>&1 || echo "nvidia-smi failed (see $OUT_DIR/nvidia-smi.txt)"
run_step device 20 python3 -c "
from cnnkit.backends.cupy import unavailable_reason
reason = unavailable_reason()
if reason is not None:
    raise SystemExit(f'cupy cannot use a GPU: {reason}')
import cnnkit
print('cupy backend on', cnnkit.backend('cupy').device)
"
# with pytest-xdist (the GPU image has it), four workers share the GPU
WORKERS=()
python3 -c "import xdist" 2> /dev/null && WORKERS=(-n 4)
run_step gpu-tests 150 python3 -m pytest -m gpu -q -p no:cacheprovider "${WORKERS[@]}" -rfE \
    --junitxml="$OUT_DIR/gpu-tests.xml" tests/test_ops.py tests/test_cuda_launchers.py tests/test_cuda_models.py tests/test_cuda_graphs.py

if command -v compute-sanitizer > /dev/null 2>&1; then
    for tool in memcheck racecheck; do
        run_step "$tool" 60 env CNNKIT_CUPY_NO_POOL=1 compute-sanitizer --tool "$tool" --error-exitcode 99 \
            python3 -m pytest -m gpu -q -p no:cacheprovider tests/test_ops.py tests/test_cuda_launchers.py \
                -k "$SANITIZER_SUBSET"
    done
else
    echo "compute-sanitizer is missing: memcheck and racecheck did not run"
    record memcheck "FAIL (compute-sanitizer missing)"
    record racecheck "FAIL (compute-sanitizer missing)"
fi

run_step bench 90 python3 bench/compare.py --models lenet5,resnet20 --backends cupy --batch 256 --device gpu \
    --no-compile --out "$OUT_DIR/bench"
run_step profile 40 python3 bench/op_profile.py --backend cupy --batch 256

{
    echo "=== gpu_check summary (logs in $OUT_DIR)"
    for i in "${!STEPS[@]}"; do
        printf '  %-10s %s\n' "${STEPS[$i]}" "${RESULTS[$i]}"
    done
    if [ "$FAILED" -eq 0 ]; then echo "ALL STEPS PASSED"; else echo "SOME STEPS FAILED"; fi
} | tee "$OUT_DIR/summary.txt"
exit "$FAILED"
