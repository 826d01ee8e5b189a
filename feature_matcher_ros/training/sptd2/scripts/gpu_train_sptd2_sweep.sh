#!/usr/bin/env bash
# Several SPTD2 GPU trainings side by side on one GPU (the networks are far too small to fill it), for
# MINUTES each: the fast variant, the fast variant at d=128 / 4 heads, and the small variant. Each is one
# feature_matcher_ros/training/sptd2/scripts/gpu_train_sptd2.sh run; only the exported weights and records come back (at most 8 files):
#   $OUT/<name>/sptd2_<variant>.pt, .json, and $OUT/train_logs.txt (every run's log).
#   bash feature_matcher_ros/training/sptd2/scripts/gpu_train_sptd2_sweep.sh [MINUTES=5.5]
set -uo pipefail
cd "$(dirname "$0")/../../../.."
MINUTES=${1:-5.5}
OUT=${OUT:-out/gpu_sptd2_sweep}
mkdir -p "$OUT"
declare -A RUNS=([fast]="fast|" [fast_d128]="fast|dim=128 heads=4" [small]="small|")
for name in "${!RUNS[@]}"; do
  IFS='|' read -r variant set <<< "${RUNS[$name]}"
  OUT=/tmp/sptd2_$name VARIANT=$variant SET=$set THREADS=4 bash feature_matcher_ros/training/sptd2/scripts/gpu_train_sptd2.sh "$MINUTES" \
    > "/tmp/sptd2_$name.log" 2>&1 &
done
wait
for name in "${!RUNS[@]}"; do
  IFS='|' read -r variant set <<< "${RUNS[$name]}"
  mkdir -p "$OUT/$name"
  cp "/tmp/sptd2_$name/sptd2_$variant.pt" "/tmp/sptd2_$name/sptd2_$variant.json" "$OUT/$name/" 2>/dev/null
  { echo "===== $name ($variant ${set})"; cat "/tmp/sptd2_$name.log"; } >> "$OUT/train_logs.txt"
  grep SUMMARY "/tmp/sptd2_$name.log" | sed "s/^/$name: /"
done
