# landmark_lit: `make install`, `make test`, `make demo`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
export OMP_NUM_THREADS ?= 2

.PHONY: install test test-fast demo lint clean bench-install

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

# torch first, pinned: the CPU build; an unpinned torch would pull a CUDA build of several GB. Then the
# package with every extra, at the exact versions of constraints.txt.
$(VENV)/.installed: pyproject.toml constraints.txt | $(BIN)/python
	$(BIN)/pip install --quiet -c constraints.txt torch
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# the landmarker package (Payer's SCN) for experiments/bench only, without its declared dependencies:
# they would replace the CPU build of torch by a CUDA one; its model code needs only torch and MONAI
bench-install: install
	$(BIN)/pip install --quiet --no-deps landmarker==0.4.1

# the tests spread over the cores (pytest-xdist), one torch thread per worker (tests/conftest.py);
# `make test TEST_WORKERS=0` runs them in one process
TEST_WORKERS ?= auto
test: install
	$(BIN)/pytest -q -n $(TEST_WORKERS)

test-fast: install
	$(BIN)/pytest -q -n $(TEST_WORKERS) -m "not slow"

# The main job on the built-in default: synthetic 3D data, global + local training, predict, evaluate.
demo: install
	$(BIN)/python -m landmark_lit.demo

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .

clean:
	rm -rf $(VENV) outputs multirun demo_output
