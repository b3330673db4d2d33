#!/usr/bin/env bash
# The GPU test run, in one call on the GPU machine (the `device` tool):
#   builds Ember with the CUDA back end (tools/gpu_build.sh), then runs
#   1. the CUDA conformance suites and fusion tests (ember_engine_tests, Cuda*, FuseEpilogues*,
#      FusePointwise* and PointwiseCodegen*),
#   2. tests/python/test_cuda.py (models in f32/f16 incl. full-size resnet50, bert-base, gpt2;
#      and test_cuda_paths.py: the TorchScript path and torch.compile(backend="ember") on CUDA;
#      CUDA graphs; streams),
#   3. the converter (op) suite (OPS_TESTS narrows it) and the model zoo (with the benchmark's
#      models in tiny versions, f16 and bf16) with EMBER_TEST_DEVICE=cuda,
#   4. bench/bench.py (BENCH_ARGS, e.g. "--compile-modes ''" for Ember against eager only) and
#      bench/kernel_profile.py for PROFILES (default resnet50, gpt2 and bert at batch 32).
# Logs go to a temporary folder, packed at the end into $OUT/gpu_logs.tgz (the device tool brings
# back at most 8 files) beside summary.txt and bench.json; each step's summary line ends with the
# last line of its log. Usage:
#   tools/gpu_check.sh [all|build|cpp|models|ops|zoo|bench|profile|variants|quant|attn_ab|attn_bench|cudnn_attn|fusion_ab|soak|cache|wide]...
#   (default: all)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
dest="${OUT:-$root/gpu_out}"
out="$(mktemp -d)"
mkdir -p "$dest"
steps=("${@:-all}")

start=$(date +%s)
# shellcheck source=/dev/null
source "$root/tools/gpu_build.sh" > "$out/build.log" 2>&1 ||
  { tail -30 "$out/build.log"; cp "$out/build.log" "$dest/"; exit 1; }
set +e +u
echo "[gpu_check] build: $(( $(date +%s) - start )) s"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > "$out/gpu.txt" 2>&1
cd "$root"
workers=$(( $(nproc) > 8 ? 8 : $(nproc) ))

run_step() {  # name, command...
  local name=$1; shift
  local t0=$(date +%s)
  # STEP_TIMEOUT (seconds, default none) stops a step that runs too long, so the steps after it
  # still run inside the call's time limit.
  timeout "${STEP_TIMEOUT:-0}" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  echo "[gpu_check] $name: rc=$rc in $(( $(date +%s) - t0 )) s: $(tail -n 1 "$out/$name.log")" |
    tee -a "$out/summary.txt"
  pack  # after every step, so a run cut short by its time limit still brings back its logs
}

pack() {
  cp "$out/summary.txt" "$dest/" 2>/dev/null
  tar -czf "$dest/gpu_logs.tgz" -C "$out" .
}

step_cpp() {
  # CPP_FILTER narrows the suites (a gtest filter).
  run_step cpp build/gpu/tests/cpp/ember_engine_tests --gtest_brief=1 \
    --gtest_filter="${CPP_FILTER:-Cuda*:FuseEpilogues*:FusePointwise*:PointwiseCodegen*:GatherSlices*:SimplifyAttention*:Attention*:PlanMemory*:Runtime*:Quantiz*:Dequantize*:Fp8*:Plugin*:ChannelsLast*:AbsorbCasts*}"
}
step_models() {
  run_step models python3 -m pytest -q -p no:cacheprovider tests/python/test_cuda.py \
    tests/python/test_cuda_paths.py
}
step_ops() {
  EMBER_TEST_DEVICE=cuda run_step ops python3 -m pytest -q -p no:cacheprovider \
    -n "$workers" ${OPS_TESTS:-tests/python/converters}
}
step_zoo() {
  EMBER_TEST_DEVICE=cuda run_step zoo python3 -m pytest -q -p no:cacheprovider \
    -n 4 tests/python/test_zoo_vision.py tests/python/test_zoo_hf.py tests/python/test_bench_models.py
}
# The benchmark writes its JSON (after every row) and a live copy of its log straight to the
# destination, so a run stopped by its time limit keeps the rows it finished.
step_bench() {
  run_step bench bash -c "python3 bench/bench.py --json '$dest/bench.json' ${BENCH_ARGS:-} 2>&1 |
    tee '$dest/bench_live.log'"
}
step_profile() {  # PROFILES="model:batch ..." (default: the three models at batch 32)
  for mb in ${PROFILES:-resnet50:32 gpt2:32 bert:32}; do
    run_step "profile_${mb/:/_b}" python3 bench/kernel_profile.py --model "${mb%%:*}" \
      --batch "${mb##*:}" --top 14 ${PROFILE_ARGS:-}
  done
}
# bench/variants.py: one model compiled several ways (VARIANT_ROWS, VARIANTS; see its docstring),
# with the layer-by-layer host profile printed at exit.
step_variants() {
  run_step variants bash -c "cd bench && EMBER_LAYER_PROFILE=1 python3 variants.py \
    --rows '${VARIANT_ROWS:-resnet50:1,bert:1,gpt2:1}' \
    --variants '${VARIANTS:-half,graphs_off,autocast_f16,autocast_bf16}' \
    --json '$dest/variants.json' 2>&1 | tee '$dest/variants_live.log'"
}
# INT8/FP8 against f16 (QUANT_ROWS, default ResNet-50 and BERT-base at b32) and the kernel
# profile of INT8 ResNet-50 b32 (QUANT_PROFILE=0 skips it): issue 17's figures in one step.
step_quant() {
  run_step quant bash -c "cd bench && python3 variants.py --rows '${QUANT_ROWS:-resnet50:32,bert:32}' \
    --variants half,int8,fp8 --json '$dest/quant.json' 2>&1 | tee '$dest/quant_live.log'"
  [ "${QUANT_PROFILE:-1}" = 0 ] && return
  run_step profile_resnet50_int8 python3 bench/kernel_profile.py --model resnet50 --batch 32 \
    --top 14 --quantize int8
}
# The attention kernels' A/B (ATTN_AB_VAR=0, then unset: default EMBER_ATTENTION_SPLIT, the
# key-split rule; EMBER_ATTENTION_AHEAD: the 64-query kernel's tiles one ahead) on ATTN_ROWS
# (default GPT-2 and BERT-base at b1), Ember against eager, one process each.
step_attn_ab() {
  local var="${ATTN_AB_VAR:-EMBER_ATTENTION_SPLIT}"
  for s in 0 default; do
    local env=""; [ "$s" = 0 ] && env="$var=0"
    run_step "attn_${var}_$s" bash -c "$env python3 bench/bench.py \
      --rows '${ATTN_ROWS:-gpt2:1,bert:1}' --compile-modes '' --json '$dest/attn_${var}_$s.json'"
  done
}
# Ember's Attention layer against torch's flash, efficient and cuDNN SDPA back ends per shape
# (ATTN_SHAPES, default bench/attention_bench.py's: GPT-2/BERT at b1 and b32, seq 512 and 2048,
# causal and not), with TFLOP/s and the fraction of the tensor peak.
step_attn_bench() {
  run_step attn_bench bash -o pipefail -c "python3 bench/attention_bench.py ${ATTN_SHAPES:+--shapes '$ATTN_SHAPES'} \
    --json '$dest/attn_bench.json' 2>&1 | tee '$dest/attn_bench_live.log'"
}
# cuDNN's fused attention inside Python: the iostreams check after `import torch`,
# attention_bench.py (its ember / ember_timed / ember_cudnn variants) and the transformer rows
# with the default (cuDNN timed against Ember's kernel) against EMBER_CUDNN_ATTENTION=off
# (VARIANT_ROWS, default BERT, GPT-2 and ViT-B/16 at b32).
step_cudnn_attn() {
  run_step iostreams python3 -m pytest -q -p no:cacheprovider tests/python/test_engine.py -k iostreams
  step_attn_bench
  run_step cudnn_variants bash -o pipefail -c "cd bench && python3 variants.py \
    --rows '${VARIANT_ROWS:-bert:32,gpt2:32,vit_b_16:32}' --variants half,half_own_attention \
    --json '$dest/cudnn_variants.json' 2>&1 | tee '$dest/cudnn_variants_live.log'"
}
# The wide suite (issue 18 section 3: every model of bench/models.py at batch 1 and its serving
# batch) against reduce-overhead, one bench process per group of models (WIDE_GROUPS: groups
# separated by spaces, models in a group by commas; default one model a group), each under
# STEP_TIMEOUT, so a crash or a hang costs one group; every row is written as it finishes, and
# after each group all rows so far are gathered in $OUT/wide.json (one file: the device tool
# brings back at most 8). A model's two rows took 30 to 75 s on an H100 (2026-12-06; T5-small and
# ConvNeXt did not finish in 80 s), so the thirteen models need two calls: give each a share
# of WIDE_GROUPS and STEP_TIMEOUT=120. Qwen2-0.5B needs more: its b1 row alone took 87 s
# (Ember's build 38 s, reduce-overhead's 32 s; 2026-12-06), and b32 did not finish in 150 s.
step_wide() {
  local n=0
  for g in ${WIDE_GROUPS:-resnet50 mobilenet_v3_large efficientnet_b0 convnext_tiny vit_b_16 swin_t deeplabv3_resnet50 bert roberta distilbert t5_small gpt2 qwen2_0_5b}; do
    n=$((n + 1))
    run_step "wide_$n" bash -o pipefail -c "python3 bench/bench.py --suite wide --models '$g' \
      --compile-modes reduce-overhead --iters ${WIDE_ITERS:-30} --json '$out/wide_$n.json' 2>&1 |
      grep -v -e FutureWarning -e 'return cls' > '$out/wide_$n.full.log'; rc=\$?
      tail -n 3 '$out/wide_$n.full.log'; exit \$rc"
    python3 - "$out" "$dest/wide.json" <<'PY'
import glob, json, sys
rows = []
for f in sorted(glob.glob(sys.argv[1] + "/wide_*.json"), key=lambda p: int(p.rsplit("_", 1)[1][:-5])):
    try:
        rows += json.load(open(f))
    except (OSError, ValueError):
        pass  # a group stopped before its first row
json.dump(rows, open(sys.argv[2], "w"), indent=1)
PY
  done
}
# The soak at the issue's counts (4 threads x SOAK_CALLS calls, SOAK_CYCLES compile/run/free).
step_soak() {
  EMBER_TEST_DEVICE=cuda run_step soak python3 tests/python/test_soak.py \
    --calls "${SOAK_CALLS:-2000}" --cycles "${SOAK_CYCLES:-1000}"
}
# The decoder rows' generated-kernel fusions (FUSION_ROWS, default T5-small and the Qwen2-0.5B
# shapes at b1 and b32): the default (half: on CUDA the row reductions stay Reduce layers, RMSNorm
# in four kernels), the row reductions in the generated kernels (EMBER_FUSE_ROW_REDUCTIONS=1)
# and no pointwise fusion at all.
step_fusion_ab() {
  run_step fusion_ab bash -c "cd bench && python3 variants.py \
    --rows '${FUSION_ROWS:-t5_small:1,qwen2_0_5b:1,t5_small:32,qwen2_0_5b:32}' \
    --variants half,half_row_reductions,half_unfused --json '$dest/fusion_ab.json' 2>&1 |
    tee '$dest/fusion_ab_live.log'"
}
# The engine cache (issue 15): the same rows twice, each run in a fresh process; the first builds
# and stores the engines (and times torch.compile(backend="ember") against reduce-overhead), the
# second loads them from the cache, so its build times are the cached ones.
step_cache() {
  local dir; dir="$(mktemp -d)"
  run_step cache_cold bash -c "python3 bench/bench.py --rows '${CACHE_ROWS:-resnet50:1,bert:1}' \
    --compile-modes reduce-overhead --ember-torch-compile --engine-cache '$dir' --iters 30 \
    --json '$dest/cache_cold.json' 2>&1 | tee '$dest/cache_cold.log'"
  run_step cache_warm bash -c "python3 bench/bench.py --rows '${CACHE_ROWS:-resnet50:1,bert:1}' \
    --compile-modes '' --ember-torch-compile --engine-cache '$dir' --iters 30 \
    --json '$dest/cache_warm.json' 2>&1 | tee '$dest/cache_warm.log'"
}
# Steps run in the order given; "all" is the tests, then the benchmark and the profiles.
[[ " ${steps[*]} " == *" all "* ]] && steps=(cpp models ops zoo bench profile)
for s in "${steps[@]}"; do
  [ "$s" = build ] && continue
  "step_$s"
done
echo "[gpu_check] total: $(( $(date +%s) - start )) s" | tee -a "$out/summary.txt"
pack
