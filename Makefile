# Everything runs from a project-local virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo
# Test workers: two pay on a 2-core machine (the Triton tests mostly wait on their server).
TEST_WORKERS ?= 2

.PHONY: install demo test lint ffmpeg clean

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

clean:
	rm -rf $(VENV) runs
