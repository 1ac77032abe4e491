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

# The main job on built-in defaults: bench the available backends with the default model, recommend for 4 cameras.
demo: install
	PATH="$(abspath $(BIN)):$$PATH" DEMO_DIR=$(DEMO_DIR) bash scripts/demo.sh

test: install
	$(BIN)/pytest -q

clean:
	rm -rf $(VENV) runs
