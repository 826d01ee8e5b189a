#!/usr/bin/env bash
# One GPU training run of SPTD2 fast, from the repo root of a checkout whose .gpu_carry/sptd2/ was filled by
# feature_matcher_ros/training/sptd2/scripts/prepare_gpu_carry_sptd2.sh. Needs only python3 with torch, numpy and opencv (no venv, no ROS).
#   bash feature_matcher_ros/training/sptd2/scripts/gpu_train_sptd2.sh [MINUTES=6]
# Environment: OUT (default out/gpu_sptd2), DEVICE (cuda), BATCH (64), CROP (256), THREADS (4), PYTHON (python3),
# SET (optional SPTD2Config overrides for fm-train-sptd2 --set, e.g. "dim=128 heads=4"; default none),
# VARIANT (fast, small or full; default fast).
# Writes under $OUT: run/checkpoint.pt (resumable: fm-train-sptd2 --resume --out $OUT/run ...),
# run/weights.pt, run/record.json, sptd2_fast.pt + sptd2_fast.json (exported, shipped format), train.log.
set -euo pipefail
cd "$(dirname "$0")/../../../.."
MINUTES=${1:-6}
OUT=${OUT:-out/gpu_sptd2}
CARRY=.gpu_carry/sptd2
PY=${PYTHON:-python3}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT"
for need in "$CARRY/train" "$CARRY/teacher" "$CARRY/tum_fr3_cabinet_rgbd/depth"; do
  [ -d "$need" ] || { echo "missing $need: run feature_matcher_ros/training/sptd2/scripts/prepare_gpu_carry_sptd2.sh first" >&2; exit 2; }
done
"$PY" -c "import torch, cv2, numpy; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else '')"
# shellcheck disable=SC2086
VARIANT=${VARIANT:-fast}
"$PY" -m feature_matcher_ros.training.sptd2.train --variant "$VARIANT" ${SET:+--set $SET} --device "${DEVICE:-cuda}" \
  --batch "${BATCH:-64}" --crop "${CROP:-256}" --threads "${THREADS:-4}" --time-limit-min "$MINUTES" --steps 1000000 \
  --lr 7e-4 --lr-end 1e-4 --images "$CARRY/train" "$CARRY/tum_fr3_cabinet_rgbd/images" \
  --rgbd "$CARRY/tum_fr3_cabinet_rgbd" --teacher "$CARRY/teacher" --real-fraction 0.25 \
  --out "$OUT/run" --export "$OUT/sptd2_$VARIANT.pt" --save-every 2000 --save-every-min 1.5 --log-every 200 --no-progress \
  2>&1 | tee "$OUT/train.log"
"$PY" - "$OUT" "$VARIANT" <<'PYEOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
rec = json.loads((out / f"sptd2_{sys.argv[2]}.json").read_text())
hist = rec["loss_history"][-100:]
mean = {k: sum(h[k] for h in hist) / len(hist) for k in hist[0] if k != "step"}
print(f"SUMMARY steps {rec['steps_done']} in {rec['train_minutes']} min on {rec['device_name']} "
      f"({rec['steps_done'] / max(rec['train_minutes'], 1e-9) / 60:.1f} steps/s), batch {rec['batch']} x {rec['crop']}px")
print("SUMMARY last-100 mean losses " + " ".join(f"{k}={v:.3f}" for k, v in mean.items()))
for f in sorted(out.rglob("*")):
    if f.is_file():
        print(f"SUMMARY file {f.relative_to(out)} {f.stat().st_size / 1e6:.2f} MB")
PYEOF
