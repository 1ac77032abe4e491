# Everything runs from a project-local virtual environment.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_DIR ?= runs/demo

.PHONY: install demo test clean

$(BIN)/reidctl: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	@touch $@

install: $(BIN)/reidctl

# The main job on built-in defaults: a generated clip through the default model (YOLOX-X, mot17 layout).
demo: install
	$(BIN)/python scripts/make_clip.py $(DEMO_DIR)/clip.avi --frames 8
	$(BIN)/reidctl detect $(DEMO_DIR)/clip.avi --mot $(DEMO_DIR)/clip.txt --jsonl $(DEMO_DIR)/clip.jsonl --summary-json $(DEMO_DIR)/detect.json

test: install
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs
