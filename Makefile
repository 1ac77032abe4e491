# Everything runs from a project-local virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
# Test workers: two pay on a 2-core machine (the Triton tests mostly wait on their server).
TEST_WORKERS ?= 2

.PHONY: install demo test lint ffmpeg perf clean

$(BIN)/reidctl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/reidctl

# The main job on built-in defaults: bench the available backends with the default model, recommend for 4 cameras.
demo: install
	PATH="$(abspath $(BIN)):$$PATH" DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

# The multi-camera tests serve real streams with FFmpeg's command-line tool (Debian's package).
ffmpeg:
	@command -v ffmpeg >/dev/null || { apt-get update -qq && apt-get install -y -qq ffmpeg >/dev/null; }

lint: install
	$(BIN)/ruff check .

test: lint ffmpeg
	$(BIN)/pytest -q -n $(TEST_WORKERS) --dist loadgroup

# One measurement suite of docs/PERFORMANCE.md (`scripts/perf.py --help` lists them), e.g.
#   make perf SUITE=pipeline-pytorch OUT=runs/perf/pipeline-pytorch PERF_ARGS="--device cpu --cameras 2"
# The project's environment where there is one; on the GPU machine (scripts/gpu_setup.sh) its own python3.
PERF_PYTHON ?= $(if $(wildcard $(BIN)/python),$(BIN)/python,python3)
OUT ?= runs/perf/$(SUITE)
perf:
	@test -n "$(SUITE)" || { echo "usage: make perf SUITE=NAME [OUT=DIR] [PERF_ARGS=...]"; exit 2; }
	$(PERF_PYTHON) scripts/perf.py $(SUITE) $(OUT) $(PERF_ARGS)

clean:
	rm -rf $(VENV) runs
