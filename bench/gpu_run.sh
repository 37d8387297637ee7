#!/usr/bin/env bash
# One call on a lent GPU machine (its python3 holds torch, triton, timm, pytest, hypothesis):
# install attncc from this tree without dependencies, then the steps asked for: the Triton
# suite's oracle tests on the GPU (ATTNCC_TEST_DEVICE=cuda), the GPU bench against the peers,
# the plan sweep, tuning. Logs and results go to $OUT (or bench/out/gpu when $OUT is unset).
#
#     bash bench/gpu_run.sh [tests] [bench] [plans] [tune]      (default: tests bench plans)
#     BENCH_ARGS="--only full_d64" PLANS_ARGS="--only causal_d64" bash bench/gpu_run.sh bench plans
#     TESTS_K="matches and linear" bash bench/gpu_run.sh tests      (a pytest -k selection)
#     TUNE_ARGS="--only full_d64 causal_d64 --budget 40" bash bench/gpu_run.sh tune
#
# tune: bench/tune.py --gpu tunes the Triton plans of the GPU bench shapes for this GPU's arch
# (about 30 s a shape; no shape starts after 450 s) and ships the records to
# schedules/gpu-<name>-<arch>.json, which is copied to $OUT with the table (tune_gpu.md).
set -uo pipefail
cd "$(dirname "$0")/.."
steps=" ${*:-tests bench plans} "
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-deps --no-build-isolation --no-index -e . >"$out/install.log" 2>&1 \
    || { cat "$out/install.log"; exit 1; }
python3 - <<'EOF' | tee "$out/versions.txt"
import torch, triton
print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name(),
      "capability", torch.cuda.get_device_capability())
EOF
rc=0
if [[ $steps == *" tests "* ]]; then
    t0=$(date +%s)
    ATTNCC_TEST_DEVICE=cuda python3 -m pytest tests/test_triton.py -k "${TESTS_K:-matches}" -q --maxfail=30 -n 8 -p no:cacheprovider \
        >"$out/tests.log" 2>&1
    rc=$?
    tail -n 25 "$out/tests.log"
    echo "triton suite on the GPU: rc $rc, $(( $(date +%s) - t0 )) s"
fi
if [[ $steps == *" bench "* ]]; then
    # shellcheck disable=SC2086
    python3 bench/gpu_attention.py --out "$out" ${BENCH_ARGS:-} 2>&1 | tee "$out/bench.log" | grep -v "^(first call" \
        || rc=1
fi
if [[ $steps == *" plans "* ]]; then
    # shellcheck disable=SC2086
    python3 bench/gpu_plans.py --out "$out" ${PLANS_ARGS:-} 2>&1 | tee "$out/plans.log" || rc=1
fi
if [[ $steps == *" tune "* ]]; then
    # shellcheck disable=SC2086
    python3 bench/tune.py --gpu --ship schedules --out "$out" ${TUNE_ARGS:-} 2>&1 | tee "$out/tune.log" || rc=1
    shipped=$(ls schedules/gpu-*.json 2>/dev/null)
    if [[ -n $shipped ]]; then
        cp $shipped "$out/" && echo "tune: shipped $(echo $shipped) (copied to $out)"
    else
        echo "tune: no records shipped to schedules/"; rc=1
    fi
fi
exit $rc
