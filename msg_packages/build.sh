#!/usr/bin/env bash
# Builds the ROS message packages that are not on PyPI (msg_packages/*: tf2_msgs, its TFMessage only) into a
# virtual environment made from the PyPI ROS wheels, with the ROS message toolchain from PyPI (pinned in
# requirements-dev.txt), CMake and a C compiler. A robot gets these packages from its ROS install instead.
#   msg_packages/build.sh VENV [BUILD_DIR]
set -euo pipefail
VENV=$(cd "$1" && pwd)
BUILD=${2:-build/msg_packages}
HERE=$(cd "$(dirname "$0")" && pwd)
export PATH=$VENV/bin:$PATH AMENT_PREFIX_PATH=$VENV
for pkg in "$HERE"/*/; do
  name=$(basename "$pkg")
  mkdir -p "$BUILD"
  cmake -S "$pkg" -B "$BUILD/$name" -DCMAKE_PREFIX_PATH="$VENV" -DCMAKE_INSTALL_PREFIX="$VENV" \
    -DPython3_EXECUTABLE="$VENV/bin/python" -DBUILD_TESTING=OFF -DCMAKE_BUILD_TYPE=Release > "$BUILD/$name.log" 2>&1 \
    || { cat "$BUILD/$name.log"; exit 1; }
  cmake --build "$BUILD/$name" -j "$(nproc)" >> "$BUILD/$name.log" 2>&1 || { tail -50 "$BUILD/$name.log"; exit 1; }
  cmake --install "$BUILD/$name" >> "$BUILD/$name.log" 2>&1 || { tail -50 "$BUILD/$name.log"; exit 1; }
  echo "built $name into $VENV"
done
