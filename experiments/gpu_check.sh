#!/usr/bin/env bash
# The fast path's GPU checks as one prepared script: speed at the protocol's and the mini
# suite's shapes, loss curves of both settings on the mini suite, and the same checkpoint's
# answers from eager and fast generation.
#
#   bash experiments/gpu_check.sh prepare     # here, with network: wheels the GPU image lacks
#   bash experiments/gpu_check.sh run         # on the GPU machine (results under $OUT)
#
# The GPU image has torch, lightning, transformers and peft but not hydra-core, omegaconf,
# webdataset, soundfile, jiwer and a few more: `prepare` downloads them into .whl/ (ignored by
# git, about 15 MB), and `run` installs them into /tmp/site. The hub is unreachable there, so
# the decoder is SmolLM2-135M's architecture with random weights (llm=smollm2_135m_random).
# Each step has its own time limit and a failed step does not stop the others; the limits add
# up to about 12 minutes (MINI=1 adds the mini-suite benchmark, about 3 more).
set -uo pipefail
cd "$(dirname "$0")/.."

prepare() {
  grep -qx "/.whl/" .git/info/exclude 2>/dev/null || echo "/.whl/" >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
    --platform any -d .whl hydra-core==1.3.2 omegaconf==2.3.0 webdataset braceexpand jiwer \
    rapidfuzz soundfile cffi pycparser espeakng-loader
  python3 -m pip wheel --no-deps -w .whl antlr4-python3-runtime==4.9.3
}

run() {
  OUT=${OUT:-outputs/gpu_check}
  mkdir -p "$OUT"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site XARES_DATA_HOME=${XARES_DATA_HOME:-/tmp/xd}
  python3 -c "from xares.suites.mini import ensure_mini_suite; \
ensure_mini_suite('$XARES_DATA_HOME/mini', workers=16, progress=False)"
  nvidia-smi --query-gpu=name,memory.total --format=csv,noheader > "$OUT/gpu.txt"
  local common=(task=mini encoder=dummy encoder.frame_rate=25 encoder.output_dim=768
    llm=smollm2_135m_random trainer=gpu logger=csv trainer.enable_progress_bar=false seed=0)

  # 1. Protocol shapes: 10 s clips, 250 frames, batch 4 (the issue's headline target).
  timeout 300 python3 experiments/bench_speed.py --test-task none --steps 200 \
    --json "$OUT/protocol.json" > "$OUT/protocol.txt" 2>&1
  # 2. Mini-suite shapes, with the real test loop on the mini suite.
  if [ "${MINI:-0}" = 1 ]; then
    timeout 180 python3 experiments/bench_speed.py --seconds 2.25 --new-tokens 16 --steps 100 \
      --json "$OUT/mini.json" > "$OUT/mini.txt" 2>&1
  fi
  # 3. Both settings, same seed, 100 steps: loss curves in each run's metrics.csv.
  for setting in reference fast; do
    timeout 120 python3 train.py "${common[@]}" speed=$setting trainer.max_steps=100 \
      trainer.log_every_n_steps=5 evaluate=false hydra.run.dir="$OUT/train-$setting" \
      > "$OUT/train-$setting.txt" 2>&1
  done
  # 3b. The protocol's numerics (fp32 weights and matmuls, what challenge tasks get by default)
  # against the fast ones (bf16 decoder + TF32, speed=turbo), same seed: loss curves in
  # metrics.csv, scores in scores.tsv, for the side-by-side in docs/speed.md.
  if [ "${NUMERICS:-1}" = 1 ]; then
    for numerics in protocol fast; do
      timeout 150 python3 train.py "${common[@]}" speed.numerics=$numerics trainer.max_steps=100 \
        trainer.log_every_n_steps=5 data.eval_limit=32 generation.max_new_tokens=16 \
        hydra.run.dir="$OUT/numerics-$numerics" > "$OUT/numerics-$numerics.txt" 2>&1
    done
  fi
  # 4. The fast run's checkpoint, answered by eager and by fast generation.
  for mode in eager fast; do
    extra=()
    [ "$mode" = eager ] && extra=(speed.generate_cache=dynamic speed.compile=false)
    timeout 90 python3 -m xares.evaluate ckpt_path="$OUT/train-fast" "${common[@]:0:1}" \
      trainer=gpu logger=csv trainer.enable_progress_bar=false generation.max_new_tokens=16 \
      data.eval_limit=32 \
      "${extra[@]}" hydra.run.dir="$OUT/eval-$mode" > "$OUT/eval-$mode.txt" 2>&1
  done
  for file in "$OUT"/eval-eager/predictions_*.csv; do
    cmp -s "$file" "$OUT/eval-fast/$(basename "$file")" && echo "same: $(basename "$file")" \
      || echo "DIFFERENT: $(basename "$file")"
  done > "$OUT/predictions_compared.txt"
  tail -n 3 "$OUT"/*.txt
}

case "${1:-}" in
  prepare) prepare ;;
  run) run ;;
  *) echo "usage: $0 prepare|run" >&2; exit 2 ;;
esac
