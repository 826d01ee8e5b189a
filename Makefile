# Two commands on a fresh machine: `make demo` and `make test`. Both create or refresh the virtual
# environment from the pinned requirement files first.
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= $(CURDIR)/.venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SHARED ?= $(abspath $(CURDIR)/../shared)
PYTEST_ARGS ?=

# What ROS needs in the environment: the ament index lives in the venv (the wheels install it there),
# discovery never leaves this machine, and Fast DDS is the middleware.
export AMENT_PREFIX_PATH := $(VENV)
export ROS_AUTOMATIC_DISCOVERY_RANGE := LOCALHOST
export RMW_IMPLEMENTATION := rmw_fastrtps_cpp
export PYTHONPATH := $(CURDIR)$(if $(PYTHONPATH),:$(PYTHONPATH))
export FM_SHARED := $(SHARED)
export PYTHONUNBUFFERED := 1

.PHONY: venv demo test test-fast test-repeat lint docs gpu-check clean

venv: $(STAMP)

$(STAMP): requirements.txt requirements-dev.txt requirements-eval.txt requirements-onnx.txt setup.py $(wildcard msg_packages/*/* msg_packages/*/msg/* msg_packages/build.sh)
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check -r requirements-dev.txt 2>&1 | { grep -v "^WARNING: Location" || true; }
	set -o pipefail; $(PY) -m pip install -q --disable-pip-version-check --no-deps --no-build-isolation -e . 2>&1 | { grep -v "^WARNING: Location" || true; }
	msg_packages/build.sh $(VENV) build/msg_packages
	$(PY) -c "import torch, rclpy, cv2, feature_matcher_ros, tf2_msgs.msg"
	touch $(STAMP)

# The node on the bundled TUM frames (per-frame results and a summary), then the live replay of the
# shipped demo bag at the recorded pace (1x: frames the node cannot keep up with are dropped and counted).
demo: $(STAMP)
	$(PY) -m feature_matcher_ros.tools.demo
	$(PY) -m feature_matcher_ros.tools.replay data/demo/tum_fr2_desk --out out/demo_replay

# Each run gets its own ROS_DOMAIN_ID (chosen in test/conftest.py) so parallel runs never meet.
test: $(STAMP)
	$(PY) -m pytest -q --doctest-modules feature_matcher_ros test $(PYTEST_ARGS)

# The core tests and the docstring examples (no DDS, no subprocess, no 640x480 Efficient LoFTR): < 1 minute.
test-fast: $(STAMP)
	$(PY) -m pytest -q --doctest-modules -m "not slow" feature_matcher_ros test $(PYTEST_ARGS)

# ruff with the repository's ruff.toml (test/test_lint.py runs the same in make test).
lint: $(STAMP)
	$(VENV)/bin/ruff check .

# docs/parameters.md from the parameter specs (the same code as matcher_node --help; test/test_docs.py checks it).
docs: $(STAMP)
	$(PY) -m feature_matcher_ros.matcher_node --parameters-markdown > docs/parameters.md

# The DDS test files N times in a row, one core kept busy, and a table of per-file pass counts: a file that
# does not pass every time has a test that depends on chance (test/repeat_dds.py).
N ?= 5
BURN ?= 1
test-repeat: $(STAMP)
	$(PY) test/repeat_dds.py --runs $(N) --burn $(BURN) --log-dir out/test-repeat

# Everything that needs CUDA in one run, one report (feature_matcher_ros/measure/gpu_check.py). Without CUDA
# it says so and runs its CPU dry run. On a machine with its own Python and torch (a lent GPU machine):
#   make gpu-check GPU_CHECK_PY=python3 GPU_CHECK_ARGS="--carry .gpu_carry"
GPU_CHECK_PY ?= $(PY)
GPU_CHECK_ARGS ?=
gpu-check: $(if $(filter $(PY),$(GPU_CHECK_PY)),$(STAMP))
	$(GPU_CHECK_PY) -m feature_matcher_ros.measure.gpu_check $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
