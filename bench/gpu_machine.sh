#!/usr/bin/env bash
# One command for a bare GPU machine without network (the project's device machine, or any CUDA box
# whose Python already has torch + triton): install the wheels it lacks, run the GPU tests, then the
# benchmark suite, and print a short table last.
#
#   make gpu-wheels                      # here, with network: download the wheels into .whl/
#   bench/gpu_machine.sh                 # there: tests + issue-5 suite (offline serving latency)
#   bench/gpu_machine.sh tests           # only the GPU tests
#   GPU_TESTS="tests/gpu/test_piecewise_graph.py tests/gpu/test_engine_gpu.py" bench/gpu_machine.sh tests
#                                        # only these test files (the whole directory takes ~6 min)
#   bench/gpu_machine.sh bench latency   # only the named suite parts (see bench/gpu_suite.sh)
#
# Environment: WHEELS (default .whl), SITE (where wheels are installed, default /tmp/rs-site),
# FLASHINFER_WORKSPACE_BASE (FlashInfer's JIT cache, default /tmp/fi: a cache carried in .gpu/fi is
# restored there first, see bench/fi_cache.py; its first build on a fresh machine takes ~2 min, and
# ninja reuses a cache only under the paths it was built with), BENCH_TOKENIZER (default .gpu/tok, a
# directory holding the embedded model's tokenizer files, which the dummy-weight benches and tests need).
set -u -o pipefail
cd "$(dirname "$0")/.."
WHEELS=${WHEELS:-.whl}
SITE=${SITE:-/tmp/rs-site}
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$WHEELS"/*.whl || exit 1
    export PYTHONPATH="$SITE:$PWD${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export FLASHINFER_WORKSPACE_BASE=${FLASHINFER_WORKSPACE_BASE:-/tmp/fi}
python3 -m bench.fi_cache .gpu/fi "$FLASHINFER_WORKSPACE_BASE" "$SITE"
# Triton's kernel cache (keyed by source, compiler and GPU: portable between machines of a kind):
# carried as .gpu/triton.tgz, so a fresh machine does not compile every kernel variant again
export TRITON_CACHE_DIR=${TRITON_CACHE_DIR:-/tmp/triton-cache}
mkdir -p "$TRITON_CACHE_DIR"
[ -f .gpu/triton.tgz ] && tar xzf .gpu/triton.tgz -C "$TRITON_CACHE_DIR"
export FLASHINFER_CUDA_ARCH_LIST=${FLASHINFER_CUDA_ARCH_LIST:-$(python3 -c "import torch; print('%d.%d' % torch.cuda.get_device_capability())")}
export MAX_JOBS=${MAX_JOBS:-$(nproc)} PYTHONUNBUFFERED=1 PY=python3
export BENCH_TOKENIZER=${BENCH_TOKENIZER:-$PWD/.gpu/tok}
export RADIXSERVE_TOKENIZER_PATH=${RADIXSERVE_TOKENIZER_PATH:-$BENCH_TOKENIZER}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

MODE=${1:-all}
[ $# -gt 0 ] && shift
status=0
if [ "$MODE" = all ] || [ "$MODE" = tests ]; then
    # each test's outcome as it runs (a time limit still leaves the list), a stack dump for any test
    # stuck past two minutes, the failures' one-line reasons last
    # shellcheck disable=SC2086  # GPU_TESTS is a list of paths
    python3 -m pytest ${GPU_TESTS:-tests/gpu} -v -p no:cacheprovider -rfs --tb=line -o faulthandler_timeout=120 \
        >"${OUT:-/tmp}/gpu-tests.log" 2>&1 || status=1
    grep -E "FAILED|ERROR|^E |Timeout" "${OUT:-/tmp}/gpu-tests.log" | cut -c1-300 | head -60
    tail -3 "${OUT:-/tmp}/gpu-tests.log"
fi
if [ "$MODE" = all ] || [ "$MODE" = bench ]; then
    bench/gpu_suite.sh "$@" || status=1
    python3 -m bench.summary "${BENCH_RESULTS_DIR:-${OUT:-bench/results}}"
fi
# hand FlashInfer's JIT cache back (a fresh machine rebuilds it in ~2 min): unpack it into .gpu/fi
# next time with `cat fi.tgz.* | tar xzf - -C .gpu` (files back from $OUT are at most 16 MiB each);
# and Triton's: `cat triton.tgz.* > .gpu/triton.tgz`. RETURN_CACHES=0 skips both (what $OUT
# returns is limited in size: leave room for logs when the caches you carried are complete)
if [ "${RETURN_CACHES:-1}" = 0 ]; then exit $status; fi
if [ -n "${OUT:-}" ] && [ -d "$FLASHINFER_WORKSPACE_BASE" ]; then
    tar czf - -C "$(dirname "$FLASHINFER_WORKSPACE_BASE")" "$(basename "$FLASHINFER_WORKSPACE_BASE")" |
        split -b 15M - "$OUT/fi.tgz."
fi
if [ -n "${OUT:-}" ]; then
    tar czf - -C "$TRITON_CACHE_DIR" . | split -b 15M - "$OUT/triton.tgz."
fi
exit $status
